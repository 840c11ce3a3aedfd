"""OpenVINO targets: ov-cpu (fp32), ov-cpu-bf16 (bf16 compute on AMX / AVX512-BF16) and ov-cpu-int8 (NNCF).

Every target converts the fp32 ONNX export to OpenVINO IR (model.xml + model.bin, weights kept fp32), so loading
never re-reads ONNX. ov-cpu and ov-cpu-bf16 hold the same IR: the precision is a compile setting recorded in the
manifest (OpenVINO's CPU plugin keeps the numerically sensitive parts of a bf16 run, normalisations and softmax
accumulation, in fp32). ov-cpu-int8 quantizes the IR with NNCF: by default the weights only (int8 storage, per
output channel; OpenVINO's CPU plugin may quantize activations on the fly where the CPU has fast int8), or with
``int8_method="static"`` post-training quantization of weights and activations calibrated on representative
text, with the feed-forward down-projections and embedding tables kept in float (engines.md §3).
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path


from bge_export import parity_run
from bge_export.build.ort import BuildResult
from bge_export.build.qdq import CALIBRATION_BATCH, calibration_feeds
from bge_export.errors import UnsupportedTargetError
from bge_export.export.onnx import CHECK_TOLERANCE, compare_graph, ort_runner
from runtimes._optional import require
from runtimes.backends.openvino import compile_config

XML = "model.xml"
BIN = "model.bin"
INT8_METHODS = ("weights", "static")
# Picked by accuracy first (issue 12), measured on the parity suite with NNCF 3.4 / OpenVINO 2026.4: static int8
# (activations too, per-tensor scales from calibration) failed the int8 gates on the random-weight XLM-R encoder
# (cosine mean 0.923), cross-encoder (Spearman 0.748), m3 (dense cosine 0.943) and Gemma reranker (Spearman 0.947)
# and ran slower than fp32 on an AMD EPYC without VNNI (0.68-0.84x ort-cpu engine-only, benchmarks/results/
# cpu-targets-minilm-avx2); on the real MiniLM it
# passed with 0.6 points of recall@10 lost. Weight-only int8 passed everywhere (Spearman >= 0.992, cosine mean
# >= 0.999) at fp32 speed or better. So "weights" is the default and --ov-int8 static stays available.
DEFAULT_INT8_METHOD = "weights"


def engine_entry(precision: str, device: str = "CPU", **extra) -> dict:
    """The manifest's engine fields: what the runtime compiles the IR with, on which OpenVINO device (the backend
    reads "device"). num_threads 0 = every core; the compiled model is cached (OpenVINO keys it on the IR and these
    settings) under the user's cache folder."""
    return {"file": XML, "device": device, "inference_precision": precision, "num_threads": 0,
            "performance_hint": "LATENCY", "cache": True, "buckets": False, **extra}


def convert(exported):
    """The ONNX export as an OpenVINO model (in memory)."""
    ov = require("openvino")
    return ov.convert_model(str(exported.path))


def save(model, out_dir: Path) -> list[str]:
    ov = require("openvino")
    ov.save_model(model, str(out_dir / XML), compress_to_fp16=False)  # fp32 weights: fp16 storage would round them
    return [XML, BIN]


def ov_runner(model_or_path, family, precision: str = "fp32", device: str = "CPU"):
    """feeds -> outputs in the family's output order, compiled for the OpenVINO ``device`` at ``precision``."""
    ov = require("openvino")
    core = ov.Core()
    model = model_or_path if not isinstance(model_or_path, Path) else str(model_or_path)
    compiled = core.compile_model(model, device, compile_config({"inference_precision": precision}))
    ports = {p.get_any_name(): p for p in compiled.outputs}
    names = [o.name for o in family.outputs()]
    request = compiled.create_infer_request()

    def run(feeds):
        res = request.infer(feeds)
        return [res[ports[n]] for n in names]

    return run


def _build_float(family, exported, out_dir: Path, log, precision: str, device: str = "CPU") -> BuildResult:
    start = time.perf_counter()
    model = convert(exported)
    files = save(model, out_dir)
    size = sum((out_dir / f).stat().st_size for f in files) / 1e6
    log(f"converted to OpenVINO IR in {time.perf_counter() - start:.1f}s ({size:.1f} MB, fp32 weights; compiled "
        f"with inference precision {precision} at load)")
    # the IR against the export it came from, both in fp32, on the engine's device (bf16 accuracy is parity's job,
    # on a CPU that has it)
    engine = engine_entry(precision, device)
    check = compare_graph(ort_runner(exported.path, family), ov_runner(out_dir / XML, family, device=engine["device"]),
                          family, tolerance=CHECK_TOLERANCE["fp32"], what="the OpenVINO IR")
    return BuildResult(files=files, engine=engine,
                       info={"graph": "OpenVINO IR converted from the fp32 ONNX export",
                             "openvino": _version(), "check_vs_exported": check})


def build_ov_cpu(family, exported, out_dir: Path, log=print) -> BuildResult:
    return _build_float(family, exported, out_dir, log, "fp32")


def build_ov_cpu_bf16(family, exported, out_dir: Path, log=print) -> BuildResult:
    return _build_float(family, exported, out_dir, log, "bf16")


def feed_forward_down(model, model_info: dict) -> list[str]:
    """The MatMuls whose constant weight multiplies an input of the intermediate size: the FFN down-projections
    (OpenVINO stores weights (out, in) with transpose_b, or (in, out) without)."""
    inter, hidden = int(model_info["intermediate_size"]), int(model_info["hidden_size"])
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        shape = op.input_value(1).get_partial_shape()
        if shape.is_dynamic or len(shape) != 2:
            continue
        dims = [d.get_length() for d in shape]
        k, n = (dims[1], dims[0]) if op.get_attributes().get("transpose_b") else (dims[0], dims[1])
        if (k, n) == (inter, hidden):
            names.append(op.get_friendly_name())
    return names


@contextlib.contextmanager
def quiet_nncf():
    """NNCF logs each step and draws progress bars on stdout; the build prints its own one-line summary."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def build_ov_cpu_int8(family, exported, out_dir: Path, log=print, int8_method: str | None = None) -> BuildResult:
    int8_method = int8_method or DEFAULT_INT8_METHOD
    if int8_method not in INT8_METHODS:
        raise UnsupportedTargetError(f"--ov-int8 {int8_method!r} is not a method; choose one of {', '.join(INT8_METHODS)}")
    nncf = require("nncf")

    start = time.perf_counter()
    model = convert(exported)
    if int8_method == "weights":
        with quiet_nncf():
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        settings = {"method": "nncf.compress_weights", "mode": "INT8_ASYM",
                    "what": "weights stored int8 (per output channel, asymmetric), compute in float"}
    else:
        # embedding tables (Gather) stay float: NNCF would store them int8, and OpenVINO 2026.4 then fails to
        # compile XLM-R's constant token-type lookup (constant folding of the int8 -> f32 Convert)
        texts = parity_run.parity_texts()
        corpus = list(texts["corpus"]) + list(texts["queries"])
        batches = calibration_feeds(family, corpus, [s.name for s in family.inputs()])
        kept = feed_forward_down(model, family.model_info())
        with quiet_nncf():
            model = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(batches), ignored_scope=nncf.IgnoredScope(names=kept, types=["Gather"]))
        settings = {"method": "nncf.quantize", "model_type": "TRANSFORMER", "preset": "PERFORMANCE",
                    "calibration": f"{len(batches)} batches of {CALIBRATION_BATCH} x "
                                   f"{batches[0]['input_ids'].shape[1]} tokens of the parity corpus",
                    "kept_float": "feed_forward_down and the embedding tables", "kept_float_nodes": len(kept)}
    files = save(model, out_dir)
    size = sum((out_dir / f).stat().st_size for f in files) / 1e6
    log(f"quantized with NNCF ({settings['method']}) in {time.perf_counter() - start:.1f}s ({size:.1f} MB"
        + (f", {settings['kept_float_nodes']} feed-forward down-projections kept float" if int8_method == "static"
           else "") + "); accuracy is checked by parity")
    # OpenVINO quantizes the activations of int8-weight MatMuls on the fly (groups of 32) on CPUs with fast int8,
    # and not on others: off, so that the accuracy parity measured is the accuracy on every CPU
    return BuildResult(files=files, engine=engine_entry("fp32", dynamic_quantization_group_size=0),
                       info={"graph": "OpenVINO IR converted from the fp32 ONNX export, quantized with NNCF",
                             "openvino": _version(), "nncf": _version("nncf"), "quantization": settings})


def _version(dist: str = "openvino") -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"

