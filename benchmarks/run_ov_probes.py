"""OpenVINO probes behind the README's "Which CPU target" remarks, engine only, real all-MiniLM-L6-v2.

    python -m benchmarks.run_ov_probes [--out benchmarks/results/ov-probes-minilm-<cpu>]

1. Compile settings at batch 32 x 128 on one infer request each, interleaved: the ov-cpu IR at fp32 and bf16;
   the weight-only int8 IR with OpenVINO's dynamic activation quantization off (the bundle's setting) and at
   group size 32; the static int8 IR at fp32 and bf16 inference precision.
2. Our ov-cpu IR against optimum-intel's OpenVINO export of the same checkpoint, both compiled at bf16, one infer
   request each, interleaved (where optimum-intel is installed: benchmarks/bench_venv.sh).
3. torch's bf16 and fp32 GEMM (2048^3 and 4096^3), for the bf16:fp32 ratio of the machine.

Median of ``--repeats`` timed calls, each after an untimed one. Writes probes.json and probes.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELLS = ((1, 16), (8, 16), (32, 16), (1, 128), (8, 128), (32, 128))


def _medians(calls: dict, repeats: int) -> dict:
    """name -> median ms, round-robin in rotating order, an untimed call before each timed one."""
    keys = list(calls)
    samples = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            calls[k]()
            t0 = time.perf_counter()
            calls[k]()
            samples[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in samples.items()}


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    import openvino as ov

    import runtimes
    from benchmarks.run_cpu_targets import cpu_kind
    from bge_export.bench.peaks import matmul_gflops
    from bge_export.bench.texts import exact_length_texts
    from bge_export.checkpoint import embedded_default_path
    from bge_export.cli import main
    from bge_export.parity_run import parity_texts
    from runtimes._optional import available
    from runtimes.cpu import cpu_name, has_bf16

    if not has_bf16():
        print("this CPU has no bf16 instructions; the probes compare bf16 settings", file=sys.stderr)
        return 2
    out = Path(args.out or HERE / "results" / f"ov-probes-minilm-{cpu_kind()}")
    work = Path(tempfile.mkdtemp(prefix="bge-probes-"))
    ckpt = embedded_default_path()
    for name, flags in (("ov-cpu", []), ("ov-cpu-int8", []), ("ov-cpu-int8-static", ["--ov-int8", "static"])):
        target = name.removesuffix("-static")
        if main(["--target", target, "--out", str(work / name), "--no-parity", "--quiet", *flags]):
            return 1
    model = runtimes.load(work / "ov-cpu")
    words = " ".join(parity_texts()["corpus"]).split()
    n_tok = lambda text: len(model.tokenizer.encode([text], 100_000)[0].ids)  # noqa: E731

    def feeds(b, s):
        return model.feeds_for(model.tokenizer.encode(exact_length_texts(n_tok, words, b, s), s))

    core = ov.Core()

    def request(xml, precision, **extra):
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", **extra}
        return core.compile_model(str(xml), "CPU", config).create_infer_request()

    rows = []
    f = feeds(32, 128)
    settings = {
        "ov-cpu IR, fp32": request(work / "ov-cpu/model.xml", "f32"),
        "ov-cpu IR, bf16": request(work / "ov-cpu/model.xml", "bf16"),
        "int8 weights, fp32, dynamic quantization off (bundle)": request(
            work / "ov-cpu-int8/model.xml", "f32", DYNAMIC_QUANTIZATION_GROUP_SIZE=0),
        "int8 weights, fp32, dynamic quantization group 32": request(
            work / "ov-cpu-int8/model.xml", "f32", DYNAMIC_QUANTIZATION_GROUP_SIZE=32),
        "static int8, fp32": request(work / "ov-cpu-int8-static/model.xml", "f32"),
        "static int8, bf16": request(work / "ov-cpu-int8-static/model.xml", "bf16"),
    }
    for name, ms in _medians({n: (lambda r=r: r.infer(f)) for n, r in settings.items()}, args.repeats).items():
        rows.append({"probe": "compile settings", "cell": "32 x 128", "variant": name, "median_ms": ms})
    if available("optimum.intel"):
        from optimum.intel import OVModelForFeatureExtraction

        OVModelForFeatureExtraction.from_pretrained(str(ckpt), export=True).save_pretrained(str(work / "oi"))
        ours, theirs = request(work / "ov-cpu/model.xml", "bf16"), request(work / "oi/openvino_model.xml", "bf16")
        names = [i.get_any_name() for i in theirs.model_inputs]
        for b, s in CELLS:
            f = feeds(b, s)
            g = {k: f[k] for k in names}
            times = _medians({"bge-export ov-cpu IR": lambda: ours.infer(f), "optimum-intel IR": lambda: theirs.infer(g)},
                             args.repeats)
            rows += [{"probe": "IR vs optimum-intel (bf16)", "cell": f"{b} x {s}", "variant": n, "median_ms": ms}
                     for n, ms in times.items()]
    import torch

    for dtype in (torch.bfloat16, torch.float32):
        for n in (2048, 4096):
            rows.append({"probe": "torch GEMM", "cell": f"{n}^3", "variant": str(dtype).removeprefix("torch."),
                         "gflops": matmul_gflops(torch.randn(n, n, dtype=dtype), seconds=1.5)})
    env = {"processor": cpu_name(), "openvino": ov.__version__, "torch": torch.__version__}
    lines = [f"Machine: {env['processor']}; openvino {env['openvino']}, torch {env['torch']}.", "",
             "| probe | cell | variant | median ms / GFLOP/s |", "|---|---|---|---:|"]
    lines += [f"| {r['probe']} | {r['cell']} | {r['variant']} | "
              + (f"{r['median_ms']:.1f} ms" if "median_ms" in r else f"{r['gflops']:.0f} GFLOP/s") + " |" for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    (out / "probes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run())
