"""The half-precision and QDQ int8 graphs of the GPU targets.

- ort-cuda-fp16: the fused ORT graph in fp16 (encoder-type families, converted) or the decoders' half export
  fused (norms only), for ONNX Runtime CUDA.
- onnx-fp16: the standard-op fp16 graph TensorRT compiles for trt-fp16 (no ORT contrib ops).
- onnx-int8: the static symmetric QDQ graph TensorRT compiles for trt-int8: int8 attention projections, the
  float regions in fp16 for the encoder-type families (TensorRT under strong typing runs float regions in the
  ONNX's own type) and fp32 for the families with ``half_export`` (the decoders: their RoPE and RMSNorm need
  fp32, which the generic converter cannot keep).
Every graph that ONNX Runtime CPU can run is checked here against the export on several shapes; the parity
suite then checks the bundle against FlagEmbedding.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bge_export import parity_run
from bge_export.build.half import convert_fp16
from bge_export.build.ort import MODEL, BuildResult, build_onnx, fuse, model_files
from bge_export.build.qdq import quantize_qdq
from bge_export.errors import InternalError
from bge_export.export.onnx import CHECK_TOLERANCE, compare_graph, ort_runner
from runtimes._optional import require

QDQ_OPSET = 19  # QuantizeLinear / DequantizeLinear take fp16 scales from opset 19


def _convert_checked(family, src: Path, exported, out_dir: Path, log, what: str) -> dict:
    info = convert_fp16(src, out_dir / MODEL, external_data=exported.external_data)
    log(f"fp16 with fp32 islands: {info['fp32_ops']}, {info['fp32_head_nodes']} head node(s) kept fp32, "
        f"{info['casts_added']} casts added")
    check = compare_graph(ort_runner(exported.path, family), out_dir / MODEL, family,
                          tolerance=CHECK_TOLERANCE["fp16"], what=what)
    log(f"checked the fp16 graph against the fp32 export on ONNX Runtime CPU: max relative error "
        f"{check['max_relative_error']:.2g}")
    return {"fp16": info, "check_fp16_vs_fp32": check}


def build_ort_cuda_half(family, exported, out_dir: Path, log=print) -> BuildResult:
    if exported.dtype != "fp32":  # a decoder exported in fp16 / bf16: fuse its norms, nothing to convert
        return fuse(exported, out_dir, family, log)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        fused = fuse(exported, Path(tmp), family, log)
        info = _convert_checked(family, Path(tmp) / MODEL, exported, out_dir, log, "the fused fp16 graph")
    return BuildResult(files=model_files(out_dir), info={**fused.info, **info})


def build_onnx_half(family, exported, out_dir: Path, log=print) -> BuildResult:
    if exported.dtype != "fp32":  # a decoder exported in fp16 / bf16 is already the graph
        return build_onnx(family, exported, out_dir, log)
    info = _convert_checked(family, exported.path, exported, out_dir, log, "the fp16 graph")
    return BuildResult(files=model_files(out_dir), info=info)


def set_opset(path: Path, version: int) -> None:
    """Raise the default-domain opset in place. From 18 to 19 the ops in our graphs only gained types and
    attributes with backward-compatible defaults (Cast, Pad, Reshape, Shape, Q/DQ, ...), so no node changes;
    the proto is edited without loading external data (models above 2 GB)."""
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < version:
            if imp.version != 18:  # only the 18 -> 19 step is known to need no node changes
                raise InternalError(f"set_opset: the graph has opset {imp.version}, expected 18")
            imp.version = version
    onnx.save_model(model, str(path))


def build_onnx_qdq(family, exported, out_dir: Path, log=print) -> BuildResult:
    texts = parity_run.parity_texts()
    corpus = list(texts["corpus"]) + list(texts["queries"])
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        qdq_path = Path(tmp) / MODEL
        info = quantize_qdq(family, exported.path, qdq_path, corpus, external_data=exported.external_data, log=log)
        if family.half_export:  # float regions stay fp32 (module docstring)
            for p in Path(tmp).iterdir():
                shutil.move(str(p), out_dir / p.name)
            return BuildResult(files=model_files(out_dir), info={"qdq": info, "float_regions": "fp32"})
        set_opset(qdq_path, QDQ_OPSET)
        half = convert_fp16(qdq_path, out_dir / MODEL, external_data=exported.external_data)
    log(f"float regions in fp16 around the QDQ nodes ({half['casts_added']} casts added); accuracy is checked by "
        "parity")
    return BuildResult(files=model_files(out_dir), info={"qdq": info, "float_regions": "fp16", "fp16": half,
                                                    "opset": QDQ_OPSET})

