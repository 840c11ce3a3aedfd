"""Which CPU target: every CPU target of this version on one checkpoint (default: the embedded real
all-MiniLM-L6-v2), timed against FlagEmbedding and optimum in one `bge-export bench` run on this machine.

    .venv/bin/python -m benchmarks.run_cpu_targets [--model PATH] [--out benchmarks/results/cpu-targets-minilm-<cpu>]

Builds ort-cpu, ort-cpu-int8, ov-cpu, ov-cpu-int8 (weight-only, the default) and ov-cpu-int8 with --ov-int8
static, plus ov-cpu-bf16 where the CPU has bf16 (AVX512-BF16 or AMX). Each row is divided by the peak of the
precision it computes in, measured in the same run with the engine that runs it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import build_and_bench

HERE = Path(__file__).resolve().parent


def cpu_kind() -> str:
    """The results folder's CPU suffix: amx, bf16 (AVX512-BF16), avx512 or avx2."""
    from runtimes.cpu import capabilities

    cpu = capabilities()
    return "amx" if cpu["amx"] else "bf16" if cpu["bf16"] else "avx512" if cpu["avx512"] else "avx2"


def targets() -> list[tuple[str, list[str]]]:
    from runtimes.cpu import has_bf16

    out = [("ort-cpu", []), ("ort-cpu-int8", []), ("ov-cpu", []), ("ov-cpu-int8", []),
           ("ov-cpu-int8", ["--ov-int8", "static"])]
    return out + ([("ov-cpu-bf16", [])] if has_bf16() else [])


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results/cpu-targets-minilm-<cpu>)")
    p.add_argument("--bench-args", default="", help="extra arguments for bge-export bench, e.g. '--repeats 3'")
    p.add_argument("--head-to-head", action="store_true",
                   help="the goals run: ort-cpu and the default CPU target only, against torch bf16 and optimum-intel, "
                        "7 timed runs per cell (fewer contenders: less cache churn between calls)")
    args = p.parse_args()
    if args.head_to_head:
        from bge_export.build.targets import default_cpu_target

        builds = [(t, []) for t in dict.fromkeys(("ort-cpu", default_cpu_target()[0]))]
        bench_args = "--no-flagmodel --no-optimum --repeats 7 " + args.bench_args
    else:
        builds, bench_args = targets(), args.bench_args
    if args.out is None:
        args.out = str(HERE / "results" / f"cpu-targets-minilm-{cpu_kind()}{'-head-to-head' if args.head_to_head else ''}")
    return build_and_bench(args.model, builds, args.out, bench_args)


if __name__ == "__main__":
    sys.exit(run())
