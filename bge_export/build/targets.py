"""The target registry: what each --target builds, at which precision, for which engine kind."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bge_export.errors import UnsupportedTargetError


@dataclass(frozen=True)
class Target:
    name: str
    precision: str  # the parity tolerance row: fp32 | fp16 | int8
    engine_kind: str  # runtimes.backends kind
    providers: tuple[str, ...]
    description: str
    builder: str  # "module:function" taking (family, exported, out_dir, log) -> BuildResult

    def build_fn(self) -> Callable:
        import importlib

        module, fn = self.builder.split(":")
        return getattr(importlib.import_module(module), fn)


TARGETS: dict[str, Target] = {}


def register_target(t: Target) -> Target:
    if t.name in TARGETS:
        raise ValueError(f"target {t.name} registered twice")
    TARGETS[t.name] = t
    return t


register_target(Target("onnx", "fp32", "onnxruntime", ("CPUExecutionProvider",),
                       "the exported fp32 ONNX graph, unoptimised (portable)", "bge_export.build.ort:build_onnx"))
register_target(Target("ort-cpu", "fp32", "onnxruntime", ("CPUExecutionProvider",),
                       "fp32 with graph fusions for ONNX Runtime CPU (encoders: Attention, SkipLayerNorm, BiasGelu; decoders: RMSNorm)",
                       "bge_export.build.ort:build_ort_cpu"))
register_target(Target("ort-cpu-int8", "int8", "onnxruntime", ("CPUExecutionProvider",),
                       "dynamic int8 (per-channel weights, VNNI) on the fused graph for ONNX Runtime CPU",
                       "bge_export.build.ort:build_ort_cpu_int8"))

# Targets planned in the design but not built by this version; asking for one gives the reason.
PLANNED = {
    "ort-cuda": "needs the GPU engine work (CUDA provider, IO binding); not available in this version",
    "ort-cuda-fp16": "needs the GPU engine work (fp16 conversion, IO binding); not available in this version",
    "trt-fp16": "needs TensorRT, which this version does not build yet",
    "trt-int8": "needs TensorRT, which this version does not build yet",
}


def get_target(name: str, family=None) -> Target:
    if name not in TARGETS:
        why = f" ({PLANNED[name]})" if name in PLANNED else ""
        raise UnsupportedTargetError(
            f"unknown target '{name}'{why}; available targets: {', '.join(TARGETS)}"
        )
    t = TARGETS[name]
    if family is not None and name not in family.targets:
        raise UnsupportedTargetError(
            f"target {name} cannot serve the {family.name} family; it supports: {', '.join(family.targets)}"
        )
    return t
