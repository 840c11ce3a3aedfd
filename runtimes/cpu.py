"""What this CPU can do for the CPU engines: its name and the instruction sets the int8 / bf16 kernels use."""
from __future__ import annotations

import functools
import platform
from pathlib import Path

# int8 dot products without 16-bit saturation (AVX512-VNNI, AVX-VNNI) or with tiles (AMX)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# bf16 matrix instructions: AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and later) and AMX tiles (Intel
# Sapphire Rapids and later). Without them OpenVINO silently runs a bf16 request in fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return name or platform.processor() or "unknown CPU", flags


def cpu_name() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The kernel's CPU flags (Linux); empty where /proc/cpuinfo is not available."""
    return _cpuinfo()[1]


def has_vnni() -> bool:
    return any(f in cpu_flags() for f in VNNI_FLAGS)


def has_bf16() -> bool:
    return any(f in cpu_flags() for f in BF16_FLAGS)


def has_amx() -> bool:
    return "amx_tile" in cpu_flags()


def capabilities() -> dict:
    """What `bge-export families` shows and benchmarks record: the CPU and the matrix instruction sets it has."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "avx2": "avx2" in flags, "avx512": "avx512f" in flags, "vnni": has_vnni(),
            "bf16": has_bf16(), "amx": has_amx(),
            "matrix_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")) or f == "avx2")}


def int8_weight_type() -> str:
    """The dynamic-int8 weight type for ONNX Runtime on this CPU. With VNNI, signed int8 weights (U8S8) run exactly
    and fastest. Without it, ONNX Runtime's AVX2 U8S8 kernel multiplies with VPMADDUBSW, whose 16-bit sums saturate
    (a tiny XLM-R's cosine fell to 0.75 on an AMD EPYC without VNNI); unsigned weights (U8U8) take an exact path."""
    return "QInt8" if has_vnni() else "QUInt8"


def int8_mismatch(quantization: dict | None) -> str | None:
    """Why a dynamic-int8 bundle may lose accuracy on this CPU, or None."""
    if not quantization or quantization.get("method") != "onnxruntime.quantization.quantize_dynamic":
        return None
    if quantization.get("weight_type") == "QInt8" and not has_vnni() and cpu_flags():
        return (f"its int8 weights are signed (built for a CPU with VNNI), and this CPU ({cpu_name()}) has no VNNI: "
                "ONNX Runtime's AVX2 int8 kernel may saturate there and lose accuracy; rebuild --target ort-cpu-int8 "
                "on this machine (it picks unsigned weights without VNNI)")
    return None
