"""Shapes and fusions, measured (issue 12, deliverable 3), engine only, on the embedded real all-MiniLM-L6-v2.

    .venv/bin/python -m benchmarks.run_shapes [--model PATH] [--out benchmarks/results/shapes-minilm-<cpu>]

1. Fusions: ONNX Runtime (fp32, CPU, the bundles' session settings) on the plain export (ORT's own load-time graph
   optimisations only), on the fully fused `ort-cpu` graph, and on the fused graph with each fusion that fires
   left out in turn. A fusion is worth keeping where leaving it out is slower.
2. Shape buckets: OpenVINO `ov-cpu` (fp32) and, where the CPU has bf16, `ov-cpu-bf16`, with dynamic shapes
   against padding each call to the runtime's length buckets (`buckets=True`), on lengths that are not bucket
   sizes (a bucketed call pays for the padding) and on a stream of mixed lengths (where dynamic shapes may
   re-plan per shape).

Every variant runs interleaved (round-robin, rotating order), the median of ``--repeats`` timed runs after a
warm-up. Writes shapes.json and shapes.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FUSION_CELLS = ((1, 128), (32, 16), (32, 128), (8, 512))
BUCKET_CELLS = ((1, 40), (8, 100), (32, 200), (8, 300))  # lengths between buckets: 64, 128, 256, 512
MIXED = (1, [23, 57, 91, 130, 177, 250, 333, 420])  # batch 1, one call per length, timed as one stream


def _interleaved(calls: dict, repeats: int) -> dict:
    """name -> median seconds of calls[name]() timed round-robin in rotating order after one warm-up each."""
    for f in calls.values():
        f()
    samples = {k: [] for k in calls}
    keys = list(calls)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            calls[k]()  # switch-in: the previous contender's pool may still spin
            t0 = time.perf_counter()
            calls[k]()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def fusion_variants(exported, work: Path) -> dict[str, Path]:
    """name -> ONNX graph: the plain export, all fusions, and all but each fusion that fires."""
    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions
    from onnxscript.rewriter.ort_fusions import _core

    from bge_export.build.ort import REPORTED_FUSIONS

    out = {"plain export (ORT load-time optimisations only)": exported.path}
    model, counts = ort_fusions.optimize_for_ort(ir.load(str(exported.path)))
    ir.save(model, str(work / "fused.onnx"))
    out["all fusions (ort-cpu)"] = work / "fused.onnx"
    fired = [k for k in REPORTED_FUSIONS if counts.get(k)]
    for name in fired:
        fuser = {"skip_layer_normalization": "fuse_skip_layer_normalization", "bias_gelu": "fuse_bias_gelu",
                 "erf_gelu": "fuse_erfgelu", "gelu": "fuse_gelu", "attention": "fuse_attention",
                 "rms_normalization": "fuse_rms_normalization",
                 "skip_rms_normalization": "fuse_skip_rms_normalization"}[name]
        original = getattr(_core, fuser)
        setattr(_core, fuser, lambda model, **kw: 0)
        try:
            model, _ = ort_fusions.optimize_for_ort(ir.load(str(exported.path)))
        finally:
            setattr(_core, fuser, original)
        path = work / f"without-{name}.onnx"
        ir.save(model, str(path))
        out[f"all but {name} (x{counts[name]})"] = path
    return out


def run_fusions(exported, model, texts, work: Path, repeats: int, log) -> list[dict]:
    import onnxruntime as ort

    from runtimes.backends.ort import session_options

    sessions = {name: ort.InferenceSession(str(p), session_options(ort, allow_spinning=False),
                                           providers=["CPUExecutionProvider"])
                for name, p in fusion_variants(exported, work).items()}
    names = [i.name for i in next(iter(sessions.values())).get_inputs()]
    rows = []
    for b, s in FUSION_CELLS:
        feeds = model.feeds_for(model.tokenizer.encode(texts(b, s), s))
        feeds = {k: v for k, v in feeds.items() if k in names}
        times = _interleaved({n: (lambda sess=sess: sess.run(None, feeds)) for n, sess in sessions.items()}, repeats)
        base = times["all fusions (ort-cpu)"]
        for n, t in times.items():
            rows.append({"study": "fusions", "batch": b, "seq": s, "variant": n, "median_ms": 1e3 * t,
                         "x_all_fusions": base / t})
        log(f"fusions {b} x {s}: " + ", ".join(f"{n} {1e3 * t:.1f} ms" for n, t in times.items()))
    return rows


def run_buckets(bundles: dict[str, Path], texts, repeats: int, log) -> list[dict]:
    import runtimes

    models = {f"{target} {'buckets' if buckets else 'dynamic'}": runtimes.load(path, backend_options={"buckets": buckets})
              for target, path in bundles.items() for buckets in (False, True)}
    rows = []
    for b, s in BUCKET_CELLS:
        batch = texts(b, s)
        times = _interleaved({n: (lambda m=m: m.encode(batch, max_length=512)) for n, m in models.items()}, repeats)
        rows += [{"study": "buckets", "batch": b, "seq": s, "variant": n, "median_ms": 1e3 * t} for n, t in times.items()]
        log(f"buckets {b} x {s}: " + ", ".join(f"{n} {1e3 * t:.1f} ms" for n, t in times.items()))
    b, lengths = MIXED
    stream = [texts(b, s) for s in lengths]
    times = _interleaved({n: (lambda m=m: [m.encode(t, max_length=512) for t in stream]) for n, m in models.items()},
                         repeats)
    rows += [{"study": "buckets", "batch": b, "seq": "mixed " + "/".join(map(str, lengths)), "variant": n,
              "median_ms": 1e3 * t} for n, t in times.items()]
    log("buckets mixed stream: " + ", ".join(f"{n} {1e3 * t:.1f} ms" for n, t in times.items()))
    return rows


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"Machine: {env['processor']}, {env['cpus']} cores; onnxruntime {env['onnxruntime']}, openvino "
             f"{env['openvino']}. Engine-only medians (ms).", "", "### Fusions (ONNX Runtime fp32)", "",
             "| batch x seq | variant | median ms | x all fusions |", "|---|---|---:|---:|"]
    for r in (r for r in rows if r["study"] == "fusions"):
        lines.append(f"| {r['batch']} x {r['seq']} | {r['variant']} | {r['median_ms']:.1f} | {r['x_all_fusions']:.2f} |")
    lines += ["", "### OpenVINO: dynamic shapes against length buckets (encode, real lengths)", "",
              "| batch x seq | variant | median ms |", "|---|---|---:|"]
    lines += [f"| {r['batch']} x {r['seq']} | {r['variant']} | {r['median_ms']:.1f} |"
              for r in rows if r["study"] == "buckets"]
    return "\n".join(lines) + "\n"


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results/shapes-minilm-<cpu>)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    import onnxruntime
    import openvino

    from benchmarks.run_cpu_targets import cpu_kind
    from bge_export.bench.texts import exact_length_texts
    from bge_export.checkpoint import embedded_default_path
    from bge_export.cli import main
    from bge_export.compile import prepare
    from bge_export.export.onnx import export_onnx
    from bge_export.parity_run import parity_texts
    from runtimes.cpu import cpu_name, has_bf16

    out = Path(args.out or HERE / "results" / f"shapes-minilm-{cpu_kind()}")
    ckpt = Path(args.model) if args.model else embedded_default_path()
    work = Path(tempfile.mkdtemp(prefix="bge-shapes-"))
    bundles = {}
    for target in ["ov-cpu"] + (["ov-cpu-bf16"] if has_bf16() else []):
        bundles[target] = work / target
        if main(["--model", str(ckpt), "--target", target, "--out", str(bundles[target]), "--no-parity", "--quiet"]):
            return 1
    import runtimes

    model = runtimes.load(bundles["ov-cpu"])
    words = " ".join(parity_texts()["corpus"]).split()
    n_tok = lambda text: len(model.tokenizer.encode([text], 100_000)[0].ids)  # noqa: E731
    texts = lambda n, seq: exact_length_texts(n_tok, words, n, seq)  # noqa: E731
    family, _ = prepare(ckpt, "onnx")
    exported = export_onnx(family, work / "export", log=lambda m: None)
    rows = run_fusions(exported, model, texts, work, args.repeats, print)
    rows += run_buckets(bundles, texts, args.repeats, print)
    env = {"processor": cpu_name(), "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
           "openvino": openvino.__version__, "checkpoint": str(ckpt)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "shapes.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    (out / "shapes.md").write_text(markdown(rows, env))
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(run())
