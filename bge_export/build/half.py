"""Half precision for the GPU targets: fp16 graphs with fp32 islands where fp16 overflows or loses accuracy.

Encoder-type graphs (BERT / XLM-R exported from transformers) are converted after export with ONNX Runtime's
float16 converter: every op runs in fp16 except LayerNormalization (plain and fused), RMSNorm, Softmax, and
everything after the last normalization (pooling, the m3 sparse / colbert heads, the reranker classifier).
Inputs and outputs keep their types (int64 ids in, fp32 out). engines.md §2.3 and §4.5.

The decoder families are exported from our own implementation directly in fp16 or bf16 (bf16 for the Gemma
families, whose embedding scaling overflows fp16: engines.md §1.4); that implementation already keeps norms,
RoPE and softmax in fp32, so their half graphs need no conversion here.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from runtimes._optional import require

# Ops whose math stays fp32. The fused ORT forms accumulate in fp32 inside their CUDA kernels too, but keeping
# their inputs and outputs fp32 also keeps the residual stream fp32, which is what protects against overflow.
NORM_OPS = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
            "SkipSimplifiedLayerNormalization", "RMSNormalization", "EmbedLayerNormalization")
FP32_OPS = NORM_OPS + ("Softmax",)


def name_nodes(graph) -> None:
    """Give nameless nodes a unique name: the converter and the quantizer select nodes by name."""
    for i, n in enumerate(graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"


def save(model, path: Path, external_data: bool) -> None:
    """Save with the weights in ``<name>.data`` next to the model when they must be external (> 2 GB)."""
    require("onnx").save_model(model, str(path), save_as_external_data=external_data, all_tensors_to_one_file=True,
                               location=path.name + ".data", size_threshold=1024)


def head_nodes(graph) -> list[str]:
    """Names of the nodes after the last normalization: pooling, heads and score layers stay fp32."""
    last = max((i for i, n in enumerate(graph.node) if n.op_type in NORM_OPS), default=None)
    if last is None:
        return []
    return [n.name for n in graph.node[last + 1:] if n.name]


def convert_fp16(src: Path, dst: Path, *, external_data: bool) -> dict:
    """Write an fp16 copy of ``src`` (fp32 ONNX) to ``dst`` with fp32 islands; returns what was kept fp32."""
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    model = onnx.load(str(src))
    name_nodes(model.graph)
    kept = Counter(n.op_type for n in model.graph.node if n.op_type in FP32_OPS)
    casts_before = sum(n.op_type == "Cast" for n in model.graph.node)  # the converter may work in place
    heads = head_nodes(model.graph)
    model16 = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS),
                                               node_block_list=heads, disable_shape_infer=external_data)
    # the converter leaves some intermediate value_info entries at their old type; they are hints only, and
    # stale ones make ONNX shape inference (and the TensorRT lint) fail: drop them
    del model16.graph.value_info[:]
    _drop_repeated_casts(model16.graph)
    save(model16, dst, external_data)
    return {"converter": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True,
            "fp32_ops": dict(kept), "fp32_head_nodes": len(heads),
            "casts_added": sum(n.op_type == "Cast" for n in model16.graph.node) - casts_before}


def _drop_repeated_casts(graph) -> None:
    """The converter inserts one Cast per (initializer, blocked consumer), all with the same name and output when
    an fp16 initializer feeds several fp32 nodes: an invalid graph (two nodes write one tensor). Keep the first
    of each identical node; it precedes every consumer, because the converter places each copy before its own."""
    seen, keep = set(), []
    for n in graph.node:
        key = (n.op_type, n.domain, tuple(n.input), tuple(n.output), n.SerializeToString())
        if key not in seen:
            seen.add(key)
            keep.append(n)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)

