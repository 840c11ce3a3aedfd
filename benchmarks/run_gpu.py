"""The GPU benchmark of issue 16: ort-cuda-fp16 and ort-cuda (and trt-fp16 where TensorRT is installed) against
PyTorch fp16 eager (FlagEmbedding with use_fp16=True on the same GPU), at batch 1/8/64 x 128/512 tokens, on random
weights in the bge-base shape (BERT, 12 layers, hidden 768) and the bge-m3 shape (XLM-R large, 24 layers, hidden
1024, vocab 250002, 8194 positions). Writes <out>/gpu-<shape>/bench.{jsonl,md,png}; the markdown names the GPU and
its measured fp16 GEMM peak. benchmarks/gpu_check.sh runs it on the GPU machine.

Needs an NVIDIA GPU with onnxruntime-gpu (and optionally TensorRT). NOT RUN YET on a GPU: no GPU was available to
the versions that wrote it. ``--dry-run`` rehearses the same steps on CPU (tiny shapes, ort-cpu, the reference on
CPU) so the script that carries it to the GPU machine is tested.

    python -m benchmarks.run_gpu [--shape base m3] [--bench-args "--repeats 10"] [--out DIR] [--dry-run]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bge_export.cli import main
from parity_tests import checkpoints as ck
from runtimes._optional import available

HERE = Path(__file__).resolve().parent
SHAPES = {
    "base": lambda d: ck.tiny_bert(d / "bge-base-en-v1.5", hidden=768, layers=12, heads=12, intermediate=3072,
                                   max_positions=512, initializer_range=0.02),
    "m3": lambda d: ck.tiny_m3(d / "bge-m3", hidden=1024, layers=24, heads=16, intermediate=4096, vocab_size=250002,
                               max_positions=8194, initializer_range=0.02),
}
DRY_SHAPES = {
    "base": lambda d: ck.tiny_bert(d / "bge-base-en-v1.5"),
    "m3": lambda d: ck.tiny_m3(d / "bge-m3"),
}


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--bench-args", default="--batch-sizes 1,8,64 --seq-lens 128,512 --repeats 10 --warmup 2")
    p.add_argument("--out", type=Path, default=HERE / "results", help="results go to OUT/gpu-<shape>/")
    p.add_argument("--dry-run", action="store_true", help="CPU rehearsal: tiny shapes, ort-cpu, reference on CPU")
    args = p.parse_args()
    targets = ["ort-cuda-fp16", "ort-cuda"] + (["trt-fp16"] if available("tensorrt") else [])
    device = "cuda"
    if args.dry_run:
        targets, device = ["ort-cpu"], "cpu"
        args.bench_args = "--batch-sizes 1,8 --seq-lens 32 --repeats 2 --warmup 1 --no-torch-bf16 --no-optimum-intel"
    for shape in args.shape:
        with tempfile.TemporaryDirectory(prefix=f"bge-gpu-bench-{shape}-") as work:
            ckpt = (DRY_SHAPES if args.dry_run else SHAPES)[shape](Path(work))
            bundles = []
            for target in targets:
                out = Path(work) / target
                if main(["--model", str(ckpt), "--target", target, "--out", str(out), "--no-parity", "--quiet"]):
                    return 1
                bundles.append(str(out))
            rc = main(["bench", *bundles, "--reference-device", device, "--no-optimum",
                       "--out", str(args.out / f"gpu-{shape}"), *args.bench_args.split()])
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(run())
