"""The target registry: what each --target builds, at which precision, for which engine kind."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bge_export.errors import InternalError, UnsupportedTargetError


@dataclass(frozen=True)
class Target:
    name: str
    precision: str  # fp32 | int8 | bf16 | half (fp16, or bf16 for the families whose half_dtype is bf16)
    engine_kind: str  # runtimes.backends kind
    providers: tuple[str, ...]
    description: str
    builder: str  # "module:function" taking (family, exported, out_dir, log) -> BuildResult
    requires: tuple[str, ...] = ()  # modules the build needs beyond the export extra (checked before exporting)
    # True where the engine takes the fp32 export and runs it at its precision itself (OpenVINO's bf16 hint), so
    # the decoder families are not exported in half precision for it
    from_fp32_export: bool = False
    options: tuple[str, ...] = ()  # the builder's keyword options (command-line flags in OPTION_FLAGS)

    def build_fn(self) -> Callable:
        import importlib

        module, fn = self.builder.split(":")
        return getattr(importlib.import_module(module), fn)


TARGETS: dict[str, Target] = {}
# builder option -> the command-line flag that sets it (error messages name the flag)
OPTION_FLAGS = {"sequence_buckets": "--trt-seq-buckets", "max_batch": "--trt-max-batch", "opt_batch": "--trt-opt-batch",
                "timing_cache": "--timing-cache", "optimization_level": "--trt-opt-level",
                "workspace_gb": "--trt-workspace-gb", "int8_method": "--ov-int8"}
TRT_OPTIONS = ("sequence_buckets", "max_batch", "opt_batch", "timing_cache", "optimization_level", "workspace_gb")


def register_target(t: Target) -> Target:
    if t.name in TARGETS:
        raise InternalError(f"target {t.name} registered twice")
    TARGETS[t.name] = t
    return t


CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
register_target(Target("onnx", "fp32", "onnxruntime", ("CPUExecutionProvider",),
                       "the exported fp32 ONNX graph, unoptimised (portable)", "bge_export.build.ort:build_onnx"))
register_target(Target("ort-cpu", "fp32", "onnxruntime", ("CPUExecutionProvider",),
                       "fp32 with graph fusions for ONNX Runtime CPU (encoders: Attention, SkipLayerNorm, BiasGelu; decoders: RMSNorm)",
                       "bge_export.build.ort:build_ort_cpu"))
register_target(Target("ort-cpu-int8", "int8", "onnxruntime", ("CPUExecutionProvider",),
                       "dynamic int8 on the fused graph for ONNX Runtime CPU (per-channel weights: signed on VNNI "
                       "CPUs, unsigned without; FFN down-projections kept fp32)",
                       "bge_export.build.ort:build_ort_cpu_int8"))
OV_REQUIRES = ("openvino",)
register_target(Target("ov-cpu", "fp32", "openvino", (),
                       "OpenVINO IR for the CPU, fp32 inference precision (converted from the ONNX export)",
                       "bge_export.build.ov:build_ov_cpu", requires=OV_REQUIRES, from_fp32_export=True))
register_target(Target("ov-cpu-bf16", "bf16", "openvino", (),
                       "OpenVINO IR compiled in bf16 on CPUs with AMX or AVX512-BF16 (norms and softmax sums stay "
                       "fp32); refused on CPUs without bf16", "bge_export.build.ov:build_ov_cpu_bf16",
                       requires=OV_REQUIRES, from_fp32_export=True))
register_target(Target("ov-cpu-int8", "int8", "openvino", (),
                       "OpenVINO IR quantized with NNCF: int8 weights (or --ov-int8 static: int8 weights and "
                       "activations calibrated on text, FFN down-projections kept float)",
                       "bge_export.build.ov:build_ov_cpu_int8", requires=OV_REQUIRES + ("nncf",),
                       from_fp32_export=True, options=("int8_method",)))

register_target(Target("ort-cuda", "fp32", "onnxruntime", CUDA_PROVIDERS,
                       "fp32 fused graph for ONNX Runtime CUDA (IO binding, shape buckets, optional CUDA graphs)",
                       "bge_export.build.ort:build_ort_cpu"))
register_target(Target("ort-cuda-fp16", "half", "onnxruntime", CUDA_PROVIDERS,
                       "fp16 fused graph for ONNX Runtime CUDA, LayerNorm / RMSNorm / softmax and heads in fp32 "
                       "(bf16 for the Gemma families)", "bge_export.build.gpu:build_ort_cuda_half"))
register_target(Target("onnx-fp16", "fp16", "onnxruntime", ("CPUExecutionProvider",),
                       "the standard-op fp16 ONNX that trt-fp16 compiles (fp32 norm / softmax islands); runs on any "
                       "ONNX Runtime", "bge_export.build.gpu:build_onnx_half"))
register_target(Target("onnx-int8", "int8", "onnxruntime", ("CPUExecutionProvider",),
                       "the static symmetric QDQ int8 ONNX that trt-int8 compiles (attention projections in int8, "
                       "the rest fp16; fp32 for decoders); runs on any ONNX Runtime", "bge_export.build.gpu:build_onnx_qdq"))
for _name, _precision, _what, _fn in (("trt-fp16", "fp16", "the fp16 ONNX of onnx-fp16", "build_trt_half"),
                                      ("trt-bf16", "bf16", "a bf16 export (decoder families)", "build_trt_half"),
                                      ("trt-int8", "int8", "the QDQ ONNX of onnx-int8", "build_trt_int8")):
    register_target(Target(_name, _precision, "tensorrt", (),
                           f"TensorRT engine, strongly typed, built from {_what}; profiles per sequence bucket",
                           f"bge_export.build.trt:{_fn}", requires=("tensorrt",), options=TRT_OPTIONS))

CPU_TARGETS = ("onnx", "ort-cpu", "ort-cpu-int8")
OV_TARGETS = ("ov-cpu", "ov-cpu-bf16", "ov-cpu-int8")
GPU_TARGETS = ("ort-cuda", "ort-cuda-fp16", "onnx-fp16", "onnx-int8", "trt-fp16", "trt-int8")


def get_target(name: str, family=None) -> Target:
    if name not in TARGETS:
        raise UnsupportedTargetError(
            f"unknown target '{name}'; available targets: {', '.join(TARGETS)}"
        )
    t = TARGETS[name]
    if family is not None and name not in family.targets:
        raise UnsupportedTargetError(
            f"target {name} cannot serve the {family.name} family; it supports: {', '.join(family.targets)}"
        )
    if family is not None and t.precision == "fp16" and family.half_dtype() == "bf16":
        raise UnsupportedTargetError(
            f"target {name} builds an fp16 graph, but this {family.name} checkpoint is Gemma-based: Gemma scales its "
            "embeddings by sqrt(hidden) and overflows fp16; use --target trt-bf16 or ort-cuda-fp16 (bf16 for it), or "
            "--target onnx --export-dtype bf16 for the bf16 graph that trt-bf16 compiles")
    return t


def check_build_options(t: Target, options: dict) -> None:
    """Refuse builder options the target does not take, naming the flags and the targets that do."""
    wrong = [k for k in options if k not in t.options]
    if wrong:
        flags = ", ".join(OPTION_FLAGS.get(k, k) for k in wrong)
        takers = sorted({n for n, x in TARGETS.items() if any(k in x.options for k in wrong)})
        raise UnsupportedTargetError(f"{flags} {'applies' if len(wrong) == 1 else 'apply'} to --target "
                                     f"{' / '.join(takers)} only, not to --target {t.name}; drop "
                                     f"{'it' if len(wrong) == 1 else 'them'} or pick one of those targets")


def target_precision(t: Target, half: str) -> str:
    """The precision a target builds for a family whose half type is ``half``."""
    return half if t.precision == "half" else t.precision


# The faster fp32 target on a CPU without bf16, by measurement (README, "Which CPU target",
# `python -m benchmarks.run_cpu_targets`): on the AMD EPYC (Zen 3, AVX2) of issue 12's session, real MiniLM
# engine-only, ov-cpu ran 0.85x to 1.13x ort-cpu, faster in 2 of the 9 batch x length cells.
FP32_CPU_DEFAULT = "ort-cpu"


def default_cpu_target() -> tuple[str, str]:
    """(target, why): the fastest non-int8 CPU target for this CPU, what `bge-export` builds without --target."""
    from runtimes._optional import available
    from runtimes.cpu import capabilities

    cpu = capabilities()
    if not available("openvino"):
        return "ort-cpu", ("OpenVINO is not installed; pip install 'bge-export[openvino]' for the ov-cpu targets, "
                           "which run bf16 on CPUs that have it")
    if cpu["bf16"]:
        return "ov-cpu-bf16", (f"{cpu['cpu']} has {'AMX' if cpu['amx'] else 'AVX512-BF16'}: bf16 runs several times "
                               "faster than fp32, and parity gates it at the half-precision bounds")
    return FP32_CPU_DEFAULT, (f"{cpu['cpu']} has no bf16 instructions (AVX512-BF16 or AMX); {FP32_CPU_DEFAULT} is the "
                              "faster fp32 target on such CPUs (measured, README: Which CPU target)")
