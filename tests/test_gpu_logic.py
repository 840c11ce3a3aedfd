"""The GPU engines' host-side logic, which runs anywhere: TensorRT profile planning and engine compatibility,
shape buckets and the padding / unpadding around them."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bge_export.build.trt import parse_int_list, plan_profiles
from bge_export.errors import UnsupportedTargetError
from runtimes.backends.base import Backend
from runtimes.backends.base import BATCH_BUCKETS, bucket, sequence_bucket
from runtimes.backends.trt import compatibility_problems, pick_profile
from runtimes.errors import InputError

TOKENS = [{"name": "input_ids", "axes": ["batch", "sequence"]}, {"name": "attention_mask", "axes": ["batch", "sequence"]}]


def test_profiles_cover_every_length_once():
    profiles = plan_profiles(TOKENS, 8192)
    assert [p["sequence"] for p in profiles] == [[1, 128], [129, 512], [513, 8192]]
    assert [p["max_batch"] for p in profiles] == [64, 64, 4]  # 64 x 512 tokens at most per profile
    s = profiles[2]["shapes"]["input_ids"]
    assert s == {"min": [1, 513], "opt": [4, 8192], "max": [4, 8192]}
    for length in (1, 128, 129, 512, 513, 8192):
        lo, hi = profiles[pick_profile(profiles, length)]["sequence"]
        assert lo <= length <= hi
    with pytest.raises(InputError, match="outside the engine's profiles"):
        pick_profile(profiles, 8193)


def test_profiles_from_the_command_line_and_batch_only_inputs():
    inputs = TOKENS + [{"name": "query_lengths", "axes": ["batch"]}]
    profiles = plan_profiles(inputs, 512, max_batch=16, sequence_buckets=(64, 256), opt_batch=4)
    assert [p["sequence"] for p in profiles] == [[1, 64], [65, 256], [257, 512]]
    assert profiles[1]["shapes"]["query_lengths"] == {"min": [1], "opt": [4], "max": [16]}
    assert profiles[1]["shapes"]["attention_mask"]["opt"] == [4, 256]
    with pytest.raises(UnsupportedTargetError, match="at most 512 tokens"):
        plan_profiles(TOKENS, 512, sequence_buckets=(128, 1024))
    with pytest.raises(UnsupportedTargetError, match="must be >= 1"):
        plan_profiles(TOKENS, 512, max_batch=0)
    assert parse_int_list("128, 512", "--x") == (128, 512) and parse_int_list(None, "--x") is None
    for bad in ("", "a,b", "0,128", "-3"):
        with pytest.raises(UnsupportedTargetError, match="positive integers"):
            parse_int_list(bad, "--trt-seq-buckets")


def test_engine_compatibility_names_each_mismatch():
    engine = {"tensorrt_version": "10.13.0.35", "compute_capability": "9.0", "gpu": "NVIDIA H100 80GB HBM3"}
    assert compatibility_problems(engine, "10.13.0.35", "9.0") == []
    problems = compatibility_problems(engine, "11.1.0.106", "8.9")
    assert len(problems) == 2
    assert "TensorRT 10.13.0.35" in problems[0] and "TensorRT 11.1.0.106" in problems[0]
    assert "9.0 (NVIDIA H100 80GB HBM3)" in problems[1] and "has 8.9" in problems[1]


def test_buckets():
    assert [bucket(n, BATCH_BUCKETS) for n in (1, 3, 8, 9, 128, 300)] == [1, 4, 8, 16, 128, 300]
    assert [sequence_bucket(n, 512) for n in (1, 16, 17, 100, 300, 512)] == [16, 16, 32, 128, 512, 512]
    assert sequence_bucket(600, 514) == 600 and sequence_bucket(300, 400) == 400 and sequence_bucket(5, None) == 16


class _Plain(Backend):
    def _infer_impl(self, feeds):
        return feeds


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_round_trip(side):
    outputs = [{"name": "pooled", "dtype": "float32", "axes": ["batch", 4]},
               {"name": "token_weights", "dtype": "float32", "axes": ["batch", "sequence"]},
               {"name": "scores", "dtype": "float32", "axes": ["batch", "cutoffs"]}]
    inputs = TOKENS + [{"name": "query_lengths", "axes": ["batch"]}]
    b = _Plain("x", {}, inputs, outputs, padding=SimpleNamespace(padding_side=side, pad_token_id=7))
    ids = np.array([[5, 6, 9], [5, 6, 9]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "query_lengths": np.array([2, 3])}
    assert b.batch_and_length(feeds) == (2, 3)
    padded = b.pad_feeds(feeds, 4, 5)
    assert padded["input_ids"].shape == (4, 5) and padded["query_lengths"].tolist() == [2, 3, 2, 2]
    pads = padded["input_ids"][0, 3:] if side == "right" else padded["input_ids"][0, :2]
    assert pads.tolist() == [7, 7]
    assert padded["attention_mask"].sum() == 4 * 3  # pad tokens are masked; extra rows copy row 0
    assert b.output_shape(0, 4, 5) == (4, 4) and b.output_shape(1, 4, 5) == (4, 5) and b.output_shape(2, 4, 5) is None
    weights = np.arange(20, dtype=np.float32).reshape(4, 5)
    back = b.unpad_output("token_weights", weights, 2, 3, 5)
    assert back.tolist() == (weights[:2, :3] if side == "right" else weights[:2, 2:]).tolist()
    assert not np.shares_memory(back, weights)


# --- what differs per engine kind: the backends' class methods on a manifest's engine entry ---------------------

ORT_CPU = {"kind": "onnxruntime", "file": "model.onnx", "providers": ["CPUExecutionProvider"]}
ORT_CUDA = {"kind": "onnxruntime", "file": "model.onnx", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
OV_CPU = {"kind": "openvino", "file": "model.xml", "device": "CPU", "inference_precision": "bf16", "num_threads": 0,
          "performance_hint": "LATENCY", "cache": True, "buckets": False}
TRT = {"kind": "tensorrt", "file": "model.plan", "onnx": "model.onnx", "tensorrt_version": "10.13.0.35", "gpu": "H100",
       "compute_capability": "9.0", "profiles": [{"sequence": [1, 128], "max_batch": 64}]}


def _backend(engine):
    from runtimes.backends import get_backend_class

    return get_backend_class(engine["kind"])


def test_where_a_bundle_runs_is_its_backends_answer():
    assert [_backend(e).on_gpu(e) for e in (ORT_CPU, ORT_CUDA, OV_CPU, TRT)] == [False, True, False, True]
    assert _backend(OV_CPU).on_gpu({**OV_CPU, "device": "GPU"}) and not _backend(OV_CPU).on_gpu({"kind": "openvino"})
    assert _backend(ORT_CUDA).where(ORT_CUDA) == "an NVIDIA GPU" and _backend(ORT_CPU).where(ORT_CPU) == "CPU"
    assert _backend(ORT_CPU).benchmark_options(ORT_CPU) == {"allow_spinning": False}
    assert _backend(ORT_CUDA).benchmark_options(ORT_CUDA) == {} == _backend(OV_CPU).benchmark_options(OV_CPU)


def test_parity_device_and_the_graph_lint_reads():
    from runtimes.backends.ort import cuda_usable

    assert _backend(ORT_CPU).parity_device(ORT_CPU) == ({}, "CPUExecutionProvider")
    if not cuda_usable():  # the CUDA bundle's graph runs on ONNX Runtime CPU, and the report says so
        device = _backend(ORT_CUDA).parity_device(ORT_CUDA)
        assert device.backend_options == {"providers": ["CPUExecutionProvider"]} and "no CUDA here" in device.name
        assert "no bf16 kernels" in _backend(ORT_CUDA).unrunnable(ORT_CUDA, "bf16")
    assert _backend(ORT_CPU).unrunnable(ORT_CPU, "fp32") is None
    assert _backend(OV_CPU).parity_device(OV_CPU).name == "OpenVINO CPU, bf16 inference precision"
    assert _backend(TRT).parity_device(TRT).name == "tensorrt"
    assert _backend(ORT_CPU).onnx_graph(ORT_CPU) == "model.onnx" and _backend(TRT).onnx_graph(TRT) == "model.onnx"
    assert _backend(OV_CPU).onnx_graph(OV_CPU) is None and _backend(OV_CPU).engine_format == "an OpenVINO IR"


def test_inspect_lines_and_benchmark_peaks_per_engine():
    assert _backend(ORT_CPU).describe(ORT_CPU, {}) == []
    (line,) = _backend(OV_CPU).describe(OV_CPU, {"openvino": "2026.4"})
    assert line.startswith("openvino   2026.4: inference precision bf16, threads all") and "device" not in line
    assert "device GPU, " in _backend(OV_CPU).describe({**OV_CPU, "device": "GPU"}, {})[0]
    assert _backend(TRT).describe(TRT, {}) == ["tensorrt   10.13.0.35 for H100 (sm 9.0); profiles 1-128 tokens x <= 64"]
    peak = {"precision": "int8", "engine": ORT_CPU, "build": {"quantization": {"weight_type": "QUInt8"}}}
    assert _backend(ORT_CPU).peak_kind(peak) == "int8-QUInt8"
    assert _backend(ORT_CPU).peak_kind({**peak, "build": {}}) == "int8-QInt8"
    assert _backend(ORT_CPU).peak_kind({**peak, "precision": "fp32"}) == "fp32"
    assert _backend(OV_CPU).peak_kind({"precision": "bf16", "engine": OV_CPU}) == "bf16"
    ov_int8 = {"precision": "int8", "engine": {**OV_CPU, "inference_precision": "fp32"}}
    assert _backend(OV_CPU).peak_kind({**ov_int8, "build": {"quantization": {"method": "nncf.quantize"}}}) == "int8-ov"
    assert _backend(OV_CPU).peak_kind({**ov_int8, "build": {"quantization": {"method": "nncf.compress_weights"}}}) \
        == "fp32"


def test_cuda_probe_model_is_the_one_node_identity_graph():
    """runtimes/backends/ort.py carries the probe serialized (the runtime does not need onnx): the same bytes."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    from runtimes.backends.ort import PROBE_MODEL

    tp = onnx.TensorProto
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", tp.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", tp.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    assert model.SerializeToString() == PROBE_MODEL
