"""Reproduce the README's encoder numbers: build ort-cpu and ort-cpu-int8 bundles of a checkpoint (default: the
embedded real all-MiniLM-L6-v2), then time them against FlagEmbedding and optimum in one `bge-export bench` run.

    .venv/bin/python -m benchmarks.run_encoder [--model PATH] [--out benchmarks/results/encoder-minilm-cpu]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import build_and_bench

HERE = Path(__file__).resolve().parent


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--out", default=str(HERE / "results" / "encoder-minilm-cpu"))
    p.add_argument("--bench-args", default="", help="extra arguments for bge-export bench, e.g. '--repeats 3'")
    p.add_argument("--no-parity", action="store_true", help="build the bundles without their parity run (faster; "
                   "the bench still checks every cell's outputs against FlagEmbedding)")
    args = p.parse_args()
    return build_and_bench(args.model, [("ort-cpu", []), ("ort-cpu-int8", [])], args.out, args.bench_args,
                           parity=not args.no_parity)


if __name__ == "__main__":
    sys.exit(run())
