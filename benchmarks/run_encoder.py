"""Reproduce the README's encoder numbers: build ort-cpu and ort-cpu-int8 bundles of a checkpoint (default: the
embedded real all-MiniLM-L6-v2), then time them against FlagEmbedding and optimum in one `bge-export bench` run.

    .venv/bin/python -m benchmarks.run_encoder [--model PATH] [--out benchmarks/results/encoder-minilm-cpu]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bge_export.cli import main

HERE = Path(__file__).resolve().parent


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--out", default=str(HERE / "results" / "encoder-minilm-cpu"))
    p.add_argument("--bench-args", default="", help="extra arguments for bge-export bench, e.g. '--repeats 3'")
    p.add_argument("--no-parity", action="store_true", help="build the bundles without their parity run (faster; "
                   "the bench still checks every cell's outputs against FlagEmbedding)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bge-bench-bundles-"))
    bundles = []
    for target in ("ort-cpu", "ort-cpu-int8"):
        out = work / target
        model = ["--model", args.model] if args.model else []
        flags = ["--quiet"] + (["--no-parity"] if args.no_parity else [])
        rc = main(model + ["--target", target, "--out", str(out), *flags])
        if rc:
            return rc
        bundles.append(str(out))
    return main(["bench", *bundles, "--out", args.out, *args.bench_args.split()])


if __name__ == "__main__":
    sys.exit(run())
