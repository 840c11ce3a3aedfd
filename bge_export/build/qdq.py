"""Static, symmetric QDQ int8 for TensorRT's explicit quantization (engines.md §3.2, §4.4).

Only the weight MatMuls that tolerate int8 are quantized: the attention projections (Q, K, V and output).
Left in float: activation x activation MatMuls (Q.K^T and P.V), the feed-forward MatMuls, and everything after
the last normalization (pooling and heads). NVIDIA's BERT recipe keeps only the FFN down-projection in float
(its input, the activation output, has outliers); on the real all-MiniLM-L6-v2 weights that still gave a mean
cosine of 0.987 to fp32, while leaving the FFN-up projections in float too gave 0.996 (270-passage corpus).
Zero points are all zero (TensorRT supports symmetric quantization only); weights are per output channel;
activations are calibrated with MinMax on representative text padded to one fixed length (the histogram
calibrators crash on ragged batches).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bge_export.build.half import head_nodes, name_nodes, save
from bge_export.build.ort import quiet_quantizer
from bge_export.checkpoint import load_tokenizer
from runtimes._optional import require

CALIBRATION_LENGTH = 128
CALIBRATION_BATCH = 8
CALIBRATION_TEXTS = 128

QDQ_SETTINGS = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ", "activation_type": "QInt8", "weight_type": "QInt8", "per_channel": True,
    "symmetric": True, "calibration": "MinMax", "calibration_length": CALIBRATION_LENGTH,
    "quantized": "attention projections (Q, K, V, output); feed-forward, heads and act x act MatMuls stay float",
}


def select_matmuls(model, intermediate_size: int | None) -> tuple[list[str], dict[str, int]]:
    """(MatMul nodes to quantize, counts of the excluded kinds)."""
    inits = {t.name: t for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output} | set(inits)
    heads = set(head_nodes(model.graph))
    chosen, skipped = [], {"activation_x_activation": 0, "feed_forward": 0, "head": 0}
    for n in model.graph.node:
        if n.op_type != "MatMul":
            continue
        weight = n.input[1] if len(n.input) > 1 else ""
        if weight not in consts:
            skipped["activation_x_activation"] += 1
        elif n.name in heads:
            skipped["head"] += 1
        elif weight in inits and intermediate_size and intermediate_size in inits[weight].dims:
            skipped["feed_forward"] += 1
        else:
            chosen.append(n.name)
    return chosen, skipped


def calibration_feeds(family, texts: list[str], input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Representative token batches at one fixed length: the parity corpus through the checkpoint's tokenizer."""
    tok = load_tokenizer(family.ckpt)
    length = min(CALIBRATION_LENGTH, family.max_sequence_length())
    enc = tok(texts[:CALIBRATION_TEXTS], padding="max_length", truncation=True, max_length=length,
              return_tensors="np")
    base = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64),
            "token_type_ids": np.zeros_like(enc["input_ids"], dtype=np.int64)}
    batches = []
    for start in range(0, len(base["input_ids"]), CALIBRATION_BATCH):
        feeds = {k: v[start:start + CALIBRATION_BATCH] for k, v in base.items()}
        if hasattr(family, "example_feeds"):  # per-row inputs (prompt / query lengths) derived from the mask
            feeds = family.example_feeds(feeds)
        batches.append({k: feeds[k] for k in input_names})
    return batches


def quantize_qdq(family, src: Path, dst: Path, texts: list[str], *, external_data: bool, log=print) -> dict:
    onnx = require("onnx")
    quant = require("onnxruntime.quantization")
    start = time.perf_counter()
    model = onnx.load(str(src))
    name_nodes(model.graph)  # node selection is by name
    named = dst.parent / "_named.onnx"
    save(model, named, external_data)
    chosen, skipped = select_matmuls(model, family.ckpt.config.get("intermediate_size"))
    names = [s.name for s in family.inputs()]
    batches = calibration_feeds(family, texts, names)

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    with quiet_quantizer():
        quant.quantize_static(
            str(named), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
            nodes_to_quantize=chosen, per_channel=True, reduce_range=False, activation_type=quant.QuantType.QInt8,
            weight_type=quant.QuantType.QInt8, calibrate_method=quant.CalibrationMethod.MinMax,
            use_external_data_format=external_data,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}},
        )
    for p in dst.parent.glob("_named.onnx*"):
        p.unlink()
    log(f"QDQ int8: {len(chosen)} MatMuls quantized, kept float: "
        + ", ".join(f"{k} x{v}" for k, v in skipped.items() if v) + f"; calibrated on {len(batches)} batches of "
        f"{CALIBRATION_BATCH} x {batches[0]['input_ids'].shape[1]} tokens in {time.perf_counter() - start:.1f}s")
    return {**QDQ_SETTINGS, "quantized_matmuls": len(chosen), "kept_float": skipped,
            "calibration_batches": len(batches)}
