"""ONNX Runtime targets: onnx (as exported), ort-cpu (fused fp32), ort-cpu-int8 (dynamic int8)."""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from bge_export.export.onnx import CHECK_TOLERANCE, compare_graph, ort_runner
from runtimes._optional import require
from runtimes.cpu import cpu_name, has_vnni, int8_weight_type

MODEL = "model.onnx"
DATA = "model.onnx.data"
# Fusions onnxscript reports that matter on ONNX Runtime CPU (the rest are intermediate rewrite steps).
REPORTED_FUSIONS = ("attention", "skip_layer_normalization", "bias_gelu", "erf_gelu", "gelu", "rms_normalization",
                    "skip_rms_normalization")


class _PreprocessHintFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def quiet_quantizer():
    """ONNX Runtime's quantizers log a root-logger hint to run their pre-processing (shape inference and graph
    optimization) first. Our graphs are already fused and shape-inferred, so it is noise in the build output."""
    root, hint_filter = logging.getLogger(), _PreprocessHintFilter()
    root.addFilter(hint_filter)
    try:
        yield
    finally:
        root.removeFilter(hint_filter)


def decoder_fusions(model, half: bool = False):
    """Norm and activation fusions only, for the decoder graphs: onnxscript's attention fusions turn decoder
    attention into GroupQueryAttention, which ignores padding masks, sliding windows and soft-caps (engines.md
    §2.2), so attention stays MatMul + Softmax. ``half``: the graph's weights are fp16 / bf16."""
    ir = require("onnx_ir")
    core = require("onnxscript.rewriter.ort_fusions._core")
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    model = core._pre_optimize(model)
    counts = {"rms_normalization": fuse_rms_normalization(model), "gelu": fuse_gelu(model)}
    if not half:  # in fp16 / bf16 graphs the residual is half and the norm input fp32: the fused op needs one type
        counts["skip_rms_normalization"] = fuse_skip_rms_normalization(model)
    optimize(model)
    rewrite(model, core.ORT_PATTERN_REWRITE_RULES)
    ir.passes.Sequential(ir.passes.common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
                         ir.passes.common.RemoveInitializersFromInputsPass(),
                         ir.passes.common.ShapeInferencePass())(model)
    return model, counts


@dataclass
class BuildResult:
    files: list[str]
    info: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)  # manifest "engine" entries beyond kind / file / providers


def _save(model_ir, out_dir: Path, external: bool) -> list[str]:
    ir = require("onnx_ir")
    path = out_dir / MODEL
    if external:
        ir.save(model_ir, str(path), external_data=DATA)
        return [MODEL, DATA]
    ir.save(model_ir, str(path))
    return [MODEL]


def model_files(out_dir: Path) -> list[str]:
    """The model file and its external data, as a builder left them in ``out_dir``."""
    return sorted(p.name for p in out_dir.iterdir() if p.name == MODEL or p.name.startswith(MODEL + "."))


def build_onnx(family, exported, out_dir: Path, log=print) -> BuildResult:
    for name in exported.files:
        shutil.copyfile(exported.path.parent / name, out_dir / name)
    return BuildResult(files=list(exported.files), info={"graph": f"as exported (dynamo, opset 18, {exported.dtype})"})


def fuse(exported, out_dir: Path, family, log=print) -> BuildResult:
    """onnxscript's ORT fusions; the fused graph is checked against the exported one."""
    ir = require("onnx_ir")
    fusions = require("onnxscript.rewriter.ort_fusions")
    start = time.perf_counter()
    model = ir.load(str(exported.path))
    if getattr(family, "ort_fusions", "transformer") == "decoder":
        model, counts = decoder_fusions(model, half=exported.dtype != "fp32")
    else:
        model, counts = fusions.optimize_for_ort(model)
    files = _save(model, out_dir, exported.external_data)
    fired = {k: int(v) for k, v in counts.items() if v and k in REPORTED_FUSIONS}
    log(f"fused for ONNX Runtime in {time.perf_counter() - start:.1f}s: "
        + (", ".join(f"{k} x{v}" for k, v in fired.items()) or "no fusion fired"))
    dtype = exported.dtype
    if dtype == "bf16":  # no bf16 kernels on ONNX Runtime CPU; the GPU parity tests check these graphs
        check = {"skipped": "bf16 graphs do not run on ONNX Runtime CPU"}
    else:
        check = compare_graph(ort_runner(exported.path, family), out_dir / MODEL, family,
                              tolerance=CHECK_TOLERANCE[dtype], what="the fused ORT graph")
    return BuildResult(files=files, info={"fusions": fired, "all_fusion_counts": {k: int(v) for k, v in counts.items()},
                                          "check_vs_exported": check})


def build_ort_cpu(family, exported, out_dir: Path, log=print) -> BuildResult:
    return fuse(exported, out_dir, family, log)


INT8_SETTINGS = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "per_channel": True,
    "reduce_range": False,  # 7-bit weights lose accuracy for nothing with either weight type below
    "op_types_to_quantize": ["MatMul", "Attention"],  # embeddings and LayerNorm stay fp32
    # the feed-forward down-projections stay fp32: their input is the activation (GELU / SwiGLU) output, whose
    # outliers per-tensor dynamic activation quantization handles worst. On the real MiniLM that cut the recall@10
    # loss on a 400-query version of the labelled retrieval set from 1.25 points to 0 at batch 256 (MRR loss
    # 0.7-0.8 points either way) for ~8% of the int8 engine time, on an AMD EPYC without VNNI
    "keep_float": "feed_forward_down",
}


def feed_forward_down(proto, model_info: dict) -> list[str]:
    """The MatMul nodes whose constant weight is (intermediate, hidden): the FFN down-projections."""
    shape = [int(model_info["intermediate_size"]), int(model_info["hidden_size"])]
    weights = {t.name for t in proto.graph.initializer if list(t.dims) == shape}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights]


def int8_settings() -> dict:
    """INT8_SETTINGS plus the weight type for the CPU that builds (runtimes.cpu.int8_weight_type: signed with
    VNNI, unsigned without, where the signed kernel saturates); the runtime warns when a bundle with signed
    weights runs on a CPU without VNNI."""
    return {**INT8_SETTINGS, "weight_type": int8_weight_type(), "built_on": cpu_name(), "built_on_vnni": has_vnni()}


def build_ort_cpu_int8(family, exported, out_dir: Path, log=print) -> BuildResult:
    onnx = require("onnx")
    quant = require("onnxruntime.quantization")
    fused_dir = out_dir / "_fused"
    fused_dir.mkdir()
    fused = fuse(exported, fused_dir, family, log)
    # The quantizer re-runs ONNX shape inference; shapes the fusion pass recorded for intermediate values can
    # conflict with it (seen on reranker heads: (batch, 1) vs (batch, 32)). They are hints only: drop them.
    proto = onnx.load(str(fused_dir / MODEL), load_external_data=False)
    del proto.graph.value_info[:]
    onnx.save(proto, str(fused_dir / MODEL))
    kept = feed_forward_down(proto, family.model_info())
    start = time.perf_counter()
    settings = int8_settings()
    with quiet_quantizer():
        quant.quantize_dynamic(
            str(fused_dir / MODEL), str(out_dir / MODEL),
            per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
            weight_type=getattr(quant.QuantType, settings["weight_type"]),
            op_types_to_quantize=settings["op_types_to_quantize"], nodes_to_exclude=kept,
            use_external_data_format=exported.external_data,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    shutil.rmtree(fused_dir)
    files = model_files(out_dir)
    size = sum((out_dir / f).stat().st_size for f in files) / 1e6
    log(f"quantized to int8 in {time.perf_counter() - start:.1f}s ({size:.1f} MB, {settings['weight_type']} weights "
        f"for a CPU {'with' if settings['built_on_vnni'] else 'without'} VNNI, {len(kept)} feed-forward "
        "down-projections kept fp32); accuracy is checked by parity")
    return BuildResult(files=files, info={**fused.info, "quantization": {**settings, "kept_float_nodes": len(kept)}})
