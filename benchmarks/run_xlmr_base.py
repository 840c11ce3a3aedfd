"""Reproduce the README's m3 and cross-encoder numbers: random weights in a base-sized XLM-R shape (12 layers,
hidden 768, 12 heads, FFN 3072, vocab 250002), one bundle per CPU target (ov-cpu-bf16 where the CPU has bf16),
timed against FlagEmbedding's BGEM3FlagModel (all three heads) and FlagReranker, and their models cast to bf16 in
plain torch, in one `bge-export bench` run per family, into benchmarks/results/<family>-xlmr-base-<cpu kind>.

Parity of these families is proven on tiny checkpoints by the test suite; timing needs only the shapes, so the
bundles here are built with --no-parity.

    .venv/bin/python -m benchmarks.run_xlmr_base [--family m3 cross-encoder] [--bench-args "--repeats 2"]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bge_export.cli import main
from parity_tests import checkpoints as ck

HERE = Path(__file__).resolve().parent
BASE = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "vocab_size": 250002,
        "initializer_range": 0.02}
BUILDERS = {
    "m3": lambda d: ck.tiny_m3(d / "bge-m3", max_positions=8194, **BASE),
    "cross-encoder": lambda d: ck.tiny_xlmr_reranker(d / "bge-reranker-v2-m3", **BASE),
}


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    p.add_argument("--targets", nargs="+", default=None, help="default: every CPU target this CPU runs")
    p.add_argument("--bench-args", default="--repeats 2 --warmup 1")
    args = p.parse_args()
    from benchmarks.run_cpu_targets import cpu_kind
    from benchmarks.run_cpu_targets import targets as cpu_targets

    targets = args.targets or [t for t, flags in cpu_targets() if not flags]  # the default int8 method only
    for family in args.family:
        with tempfile.TemporaryDirectory(prefix=f"bge-bench-{family}-") as work:
            ckpt = BUILDERS[family](Path(work))
            bundles = []
            for target in targets:
                out = Path(work) / target
                if main(["--model", str(ckpt), "--target", target, "--out", str(out), "--no-parity", "--quiet"]):
                    return 1
                bundles.append(str(out))
            rc = main(["bench", *bundles, "--out", str(HERE / "results" / f"{family}-xlmr-base-{cpu_kind()}"),
                       *args.bench_args.split()])
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(run())
