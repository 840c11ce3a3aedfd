"""The peaks that "% of peak" divides by: GEMM timers per precision (CPU: the engine that runs that precision;
GPU: torch fp16), and the precision a bundle's matmuls run in (``contender_peak``, from its backend)."""
from __future__ import annotations

import time

import numpy as np

from runtimes._optional import require
from runtimes.backends import get_backend_class
from runtimes.backends.openvino import device_supports_bf16
from runtimes.backends.ort import session_options


def timed_gflops(call, flops: float, sync=lambda: None, seconds: float = 1.0) -> float:
    """GFLOP/s of ``call`` (``flops`` each) repeated for about ``seconds`` after one warm-up (``sync`` waits for
    the device)."""
    call()
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        n += 1
    sync()
    return n * flops / (time.perf_counter() - start) / 1e9


def matmul_gflops(a, sync=lambda: None, seconds: float = 1.0) -> float:
    """GFLOP/s of repeated square matmuls ``a @ a``."""
    return timed_gflops(lambda: a @ a, 2 * a.shape[0] ** 3, sync, seconds)


# The CPU peaks that "% of peak" divides by, each measured with the engine that runs that precision: ONNX
# Runtime's own MatMul (fp32) and MatMulInteger (int8, uint8 activations x the bundle's weight type) on a large
# square GEMM, with the session settings the bundles get here (all cores, no spinning). A BLAS or torch GEMM
# can take another path than ONNX Runtime's (on an AMD EPYC a torch GEMM was slower), which put fp32 rows
# above 100%.
PEAKS = {"fp32": "ONNX Runtime MatMul, fp32", "int8-QInt8": "ONNX Runtime MatMulInteger, u8 x s8",
         "int8-QUInt8": "ONNX Runtime MatMulInteger, u8 x u8",
         "bf16": "OpenVINO chain of 8 MatMuls, bf16 inference precision",
         "int8-ov": "OpenVINO chain of 8 MatMuls between FakeQuantize (u8 x i8)"}
PEAK_N = 2048


PEAK_SIZES = (512, 1024, PEAK_N)


def peak_gflops(kind: str, sizes=PEAK_SIZES, seconds: float = 0.7, tries: int = 2) -> float | None:
    """The measured peak of one PEAKS kind: the best timing over square GEMM sizes and ``tries`` (a peak is a
    maximum: on the 2-core AMD EPYC of issue 12 ONNX Runtime's fp32 MatMul ran 141 GFLOP/s at 512^3 and 122-128 at
    2048^3, and one 1.5 s timing at 2048^3 ranged from 110 to 145 between runs). None where this CPU cannot run it
    (bf16 without bf16 instructions)."""
    measure = ov_matmul_peak_gflops if kind in ("bf16", "int8-ov") else ort_matmul_peak_gflops
    values = [measure(kind, n, seconds) for n in sizes for _ in range(tries)]
    return None if values[0] is None else max(values)


PEAK_CHAIN = 8  # OpenVINO peaks: MatMuls in a chain, so the fp32 <-> bf16 / int8 reorders at the ends amortize


def ov_matmul_peak_gflops(kind: str, n: int = PEAK_N, seconds: float = 1.5, depth: int = PEAK_CHAIN) -> float | None:
    """GFLOP/s (int8: GOP/s) of OpenVINO's CPU MatMuls: ``depth`` n x n x n MatMuls in a chain, fp32 weights
    compiled at bf16 inference precision, or int8 between FakeQuantize nodes (OpenVINO's low-precision path, as
    NNCF emits it). A chain, as in a model: one MatMul alone pays the conversion of its fp32 input and output each
    call and undercounted on the AMX Xeon of issue 12 (a base-sized cross-encoder's bf16 rows reached 138% of
    that single-MatMul "peak")."""
    ov = require("openvino")
    from openvino import opset13 as ops

    core = ov.Core()
    if kind == "bf16" and not device_supports_bf16(core):
        return None
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    param = ops.parameter([n, n], ov.Type.f32, name="a")
    lo, hi = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
    x = param
    for _ in range(depth):
        weight = ops.constant(rng.standard_normal((n, n), dtype=np.float32) / np.float32(np.sqrt(n)))  # values O(1)
        if kind == "int8-ov":
            x = ops.matmul(ops.fake_quantize(x, lo, hi, lo, hi, 256), ops.fake_quantize(weight, lo, hi, lo, hi, 255),
                           False, False)
        else:
            x = ops.matmul(x, weight, False, False)
    model = ov.Model([x], [param], "peak")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if kind == "bf16" else "f32",
                                                 "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return timed_gflops(lambda: request.infer({0: a}), depth * 2 * n ** 3, seconds=seconds)


def ort_matmul_peak_gflops(kind: str = "fp32", n: int = PEAK_N, seconds: float = 1.5) -> float:
    """GFLOP/s (int8: GOP/s) of ONNX Runtime's MatMul / MatMulInteger on an n x n x n GEMM (see PEAKS)."""
    require("onnx")
    ort = require("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        node, a_type, out_type = helper.make_node("MatMul", ["a", "b"], ["y"]), TensorProto.FLOAT, TensorProto.FLOAT
    else:
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        b = rng.integers(-128, 128, (n, n), dtype=np.int8) if kind == "int8-QInt8" else \
            rng.integers(0, 256, (n, n), dtype=np.uint8)
        node, a_type, out_type = helper.make_node("MatMulInteger", ["a", "b"], ["y"]), TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("y", out_type, [n, n])],
                              initializer=[numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), session_options(ort, allow_spinning=False),
                                providers=["CPUExecutionProvider"])
    return timed_gflops(lambda: sess.run(None, {"a": a}), 2 * n ** 3, seconds=seconds)


def gpu_peak_gflops() -> float:
    """The GPU's practical fp16 peak: torch 8192^3 fp16 matmuls."""
    torch = require("torch")
    return matmul_gflops(torch.randn(8192, 8192, dtype=torch.float16, device="cuda:0"), torch.cuda.synchronize)


def contender_peak(manifest: dict) -> str:
    """The PEAKS kind of a bundle (manifest data): the precision its matmuls run in, as its backend says."""
    return get_backend_class(manifest["engine"]["kind"]).peak_kind(manifest)
