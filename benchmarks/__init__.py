"""The scripts that reproduce the README's measured numbers (python -m benchmarks.run_*)."""
from __future__ import annotations

import tempfile
from pathlib import Path


def build_and_bench(model: str | None, builds: list[tuple[str, list[str]]], out: str, bench_args: str = "",
                    parity: bool = False) -> int:
    """Build one bundle per (target, extra flags) of ``model`` (None: the embedded default) into a temporary
    folder, then time them together with `bge-export bench` into ``out``; the first non-zero exit code wins."""
    from bge_export.cli import main

    work = Path(tempfile.mkdtemp(prefix="bge-bench-bundles-"))
    bundles = []
    for target, flags in builds:
        bundle = work / "-".join([target] + [f.lstrip("-") for f in flags[1::2]])  # flag values: ov-cpu-int8-static
        argv = (["--model", model] if model else []) + ["--target", target, "--out", str(bundle), "--quiet"]
        rc = main(argv + ([] if parity else ["--no-parity"]) + list(flags))
        if rc:
            return rc
        bundles.append(str(bundle))
    return main(["bench", *bundles, "--out", out, *bench_args.split()])
