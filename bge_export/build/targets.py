"""The target registry: what each --target builds, at which precision, for which engine kind, which families it
can build (``Target.supports``) and which builder options it takes (command-line flags generated from them).

Adding a target is one ``register_target`` call here, its builder in ``bge_export/build/`` and, for a new engine
kind, its backend in ``runtimes/backends/`` (CONTRIBUTING.md). What differs per engine kind once a bundle is built
(where it runs, where parity checks it, what inspect prints, the benchmark's peak) is the backend's to say, from the
manifest's engine entry; what differs before (the device it needs, its hardware check) is declared here."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from bge_export.errors import InternalError, UnsupportedTargetError
from bge_export.options import Option, parse_int_list, unique_options
from runtimes._optional import available, require
from runtimes.cpu import capabilities


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
    options: tuple[Option, ...] = ()  # the builder's keyword options, each with its command-line flag
    # True where the target compiles a graph exported in half precision by the family's own implementation
    # (trt-bf16: only families with ``half_export`` can build it)
    needs_half_export: bool = False
    help: str = ""  # its paragraph in `bge-export --help`'s target list ("\n" breaks the line)
    device: str = "cpu"  # where its engine runs: "cpu" or "gpu" (the targets() groups; the tests pick by it)
    # "module:function" called as (target name, family, builder options) before anything is exported: refuses with
    # what works here where the build needs hardware or libraries this machine lacks (TensorRT: the library, a GPU)
    precheck: str | None = None

    def supports(self, family) -> str | None:
        """Why this target cannot build ``family`` (a family class, or a family object for what depends on its
        checkpoint), or None when it can."""
        if self.needs_half_export and not family.half_export:
            return (f"target {self.name} compiles a graph exported in half precision by the family's own "
                    f"implementation, which the {family.name} family does not have; it supports: "
                    f"{', '.join(family.targets)}")
        if self.precision == "fp16" and not isinstance(family, type) and family.half_dtype() == "bf16":
            return (f"target {self.name} builds an fp16 graph, but this {family.name} checkpoint runs half precision "
                    f"in bf16 only: {family.half_dtype_reason()}")
        return None

    def build_fn(self) -> Callable:
        return _resolve(self.builder)

    def check_can_build(self, family, options: dict) -> None:
        """The target's hardware and library check (``precheck``), then the modules it ``requires``."""
        if self.precheck:
            _resolve(self.precheck)(self.name, family, options)
        for dep in self.requires:
            require(dep)


def _resolve(spec: str) -> Callable:
    """A "module:function" declaration, imported on use (builders import the engine libraries)."""
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)


TARGETS: dict[str, Target] = {}

TRT_GROUP = "TensorRT targets (trt-*)"
TRT_OPTIONS = (
    Option("sequence_buckets", "--trt-seq-buckets", "one optimization profile per sequence bucket up to the model's "
           "max length (default 128,512 and the max length)", metavar="L1,L2", group=TRT_GROUP,
           convert=lambda text: parse_int_list(text, "--trt-seq-buckets", error=UnsupportedTargetError)),
    Option("max_batch", "--trt-max-batch", "largest batch of each profile (default 64; buckets over 512 tokens get "
           "64*512/length)", metavar="N", type=int, group=TRT_GROUP),
    Option("opt_batch", "--trt-opt-batch", "the batch TensorRT tunes its kernels for (default: the profile's largest)",
           metavar="N", type=int, group=TRT_GROUP),
    Option("timing_cache", "--timing-cache", "TensorRT timing cache to reuse and update (default "
           "~/.cache/bge-export/tensorrt-*.timing-cache)", metavar="FILE", group=TRT_GROUP),
    Option("optimization_level", "--trt-opt-level", "builder optimization level (default 3)", metavar="0-5",
           type=int, choices=tuple(range(0, 6)), group=TRT_GROUP),
    Option("workspace_gb", "--trt-workspace-gb", "workspace memory limit for the builder (default: TensorRT's, the "
           "GPU's memory)", metavar="GB", type=float, group=TRT_GROUP),
)
OV_INT8_OPTIONS = (
    Option("int8_method", "--ov-int8", "ov-cpu-int8: weights (int8 weights, float compute; default) or static (int8 "
           "weights and activations calibrated on text; less accurate, faster only where int8 is fast)",
           choices=("weights", "static"), group="OpenVINO targets (ov-cpu*)"),
)


def register_target(t: Target) -> Target:
    if t.name in TARGETS:
        raise InternalError(f"target {t.name} registered twice")
    TARGETS[t.name] = t
    return t



CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
register_target(Target("onnx", "fp32", "onnxruntime", ("CPUExecutionProvider",),
                       "the exported fp32 ONNX graph, unoptimised (portable)", "bge_export.build.ort:build_onnx",
                       help="the exported fp32 ONNX graph, unoptimised (portable)"))
register_target(Target("ort-cpu", "fp32", "onnxruntime", ("CPUExecutionProvider",),
                       "fp32 with graph fusions for ONNX Runtime CPU (encoders: Attention, SkipLayerNorm, BiasGelu; decoders: RMSNorm)",
                       "bge_export.build.ort:build_ort_cpu",
                       help="fp32 with graph fusions (transformer attention; RMSNorm for decoders), for ONNX Runtime CPU"))
register_target(Target("ort-cpu-int8", "int8", "onnxruntime", ("CPUExecutionProvider",),
                       "dynamic int8 on the fused graph for ONNX Runtime CPU (per-channel weights: signed on VNNI "
                       "CPUs, unsigned without; FFN down-projections kept fp32)",
                       "bge_export.build.ort:build_ort_cpu_int8",
                       help="dynamic int8 for ONNX Runtime CPU: per-channel weights (signed on VNNI CPUs, unsigned\n"
                       "without), FFN down-projections kept fp32"))
OV_REQUIRES = ("openvino",)
register_target(Target("ov-cpu", "fp32", "openvino", (),
                       "OpenVINO IR for the CPU, fp32 inference precision (converted from the ONNX export)",
                       "bge_export.build.ov:build_ov_cpu", requires=OV_REQUIRES, from_fp32_export=True,
                       help="OpenVINO IR, fp32 inference precision (needs the openvino extra)"))
register_target(Target("ov-cpu-bf16", "bf16", "openvino", (),
                       "OpenVINO IR compiled in bf16 on CPUs with AMX or AVX512-BF16 (norms and softmax sums stay "
                       "fp32); refused on CPUs without bf16", "bge_export.build.ov:build_ov_cpu_bf16",
                       requires=OV_REQUIRES, from_fp32_export=True,
                       help="OpenVINO IR run in bf16 on CPUs with AMX or AVX512-BF16 (Intel Xeon 4th gen+, AMD Zen 4+);\n"
                       "norms and softmax sums stay fp32; refused on CPUs without bf16"))
register_target(Target("ov-cpu-int8", "int8", "openvino", (),
                       "OpenVINO IR quantized with NNCF: int8 weights (or --ov-int8 static: int8 weights and "
                       "activations calibrated on text, FFN down-projections kept float)",
                       "bge_export.build.ov:build_ov_cpu_int8", requires=OV_REQUIRES + ("nncf",),
                       from_fp32_export=True, options=OV_INT8_OPTIONS,
                       help="OpenVINO IR quantized with NNCF: int8 weights (default; the accurate one), or --ov-int8\n"
                       "static for int8 weights and activations calibrated on text"))

register_target(Target("ort-cuda", "fp32", "onnxruntime", CUDA_PROVIDERS,
                       "fp32 fused graph for ONNX Runtime CUDA (IO binding, shape buckets, optional CUDA graphs)",
                       "bge_export.build.ort:build_ort_cpu", device="gpu",
                       help="fp32 fused graph for ONNX Runtime CUDA: IO binding, shape buckets, optional CUDA graphs"))
register_target(Target("ort-cuda-fp16", "half", "onnxruntime", CUDA_PROVIDERS,
                       "fp16 fused graph for ONNX Runtime CUDA, LayerNorm / RMSNorm / softmax and heads in fp32 "
                       "(bf16 for the Gemma families)", "bge_export.build.gpu:build_ort_cuda_half", device="gpu",
                       help="the same in fp16 with LayerNorm / RMSNorm / softmax and heads in fp32 (bf16 for Gemma models)"))
register_target(Target("onnx-fp16", "fp16", "onnxruntime", ("CPUExecutionProvider",),
                       "the standard-op fp16 ONNX that trt-fp16 compiles (fp32 norm / softmax islands); runs on any "
                       "ONNX Runtime", "bge_export.build.gpu:build_onnx_half",
                       help="the standard-op fp16 ONNX that trt-fp16 compiles; parity-checked on ONNX Runtime"))
register_target(Target("onnx-int8", "int8", "onnxruntime", ("CPUExecutionProvider",),
                       "the static symmetric QDQ int8 ONNX that trt-int8 compiles (attention projections in int8, "
                       "the rest fp16; fp32 for decoders); runs on any ONNX Runtime", "bge_export.build.gpu:build_onnx_qdq",
                       help="the symmetric QDQ int8 ONNX that trt-int8 compiles; parity-checked on ONNX Runtime"))
for _name, _precision, _what, _fn, _help in (
        ("trt-fp16", "fp16", "the fp16 ONNX of onnx-fp16", "build_trt_half",
         "TensorRT engine (strongly typed) from onnx-fp16; needs TensorRT and an NVIDIA GPU"),
        ("trt-bf16", "bf16", "a bf16 export (decoder families)", "build_trt_half",
         "TensorRT engine from a bf16 export (decoder families; the Gemma models)"),
        ("trt-int8", "int8", "the QDQ ONNX of onnx-int8", "build_trt_int8",
         "TensorRT engine from onnx-int8 (explicit quantization)")):
    register_target(Target(_name, _precision, "tensorrt", (),
                    f"TensorRT engine, strongly typed, built from {_what}; profiles per sequence bucket",
                    f"bge_export.build.trt:{_fn}", requires=("tensorrt",), options=TRT_OPTIONS,
                    needs_half_export=_precision == "bf16", help=_help, device="gpu",
                    precheck="bge_export.build.trt:check_can_build"))


def targets(*, device: str | None = None, engine_kind: str | None = None) -> tuple[str, ...]:
    """The registered targets (in registry order) that run on ``device`` ("cpu" / "gpu") and build ``engine_kind``
    (a runtimes.backends kind); None: any."""
    return tuple(name for name, t in TARGETS.items()
                 if device in (None, t.device) and engine_kind in (None, t.engine_kind))


def family_targets(family) -> list[str]:
    """The targets that can build ``family`` (a family class or object), in registry order."""
    return [name for name, t in TARGETS.items() if t.supports(family) is None]


def get_target(name: str, family=None) -> Target:
    """The target ``name``; with ``family``, refused with the target's reason when it cannot build that family."""
    if name not in TARGETS:
        raise UnsupportedTargetError(
            f"unknown target '{name}'; available targets: {', '.join(TARGETS)}"
        )
    t = TARGETS[name]
    why = None if family is None else t.supports(family)
    if why:
        raise UnsupportedTargetError(why)
    return t


def build_options() -> list[Option]:
    """Every target's builder options, once each (the CLI's flags)."""
    return unique_options(t.options for t in TARGETS.values())


def check_build_options(t: Target, options: dict) -> None:
    """Refuse builder options the target does not take, naming the flags and the targets that do."""
    taken = {o.dest for o in t.options}
    wrong = [k for k in options if k not in taken]
    if wrong:
        flag_of = {o.dest: o.flag for o in build_options()}
        flags = ", ".join(flag_of.get(k, k) for k in wrong)
        takers = sorted({n for n, x in TARGETS.items() if any(o.dest in wrong for o in x.options)})
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
    cpu = capabilities()
    if not available("openvino"):
        return "ort-cpu", ("OpenVINO is not installed; pip install 'bge-export[openvino]' for the ov-cpu targets, "
                           "which run bf16 on CPUs that have it")
    if cpu["bf16"]:
        return "ov-cpu-bf16", (f"{cpu['cpu']} has {'AMX' if cpu['amx'] else 'AVX512-BF16'}: bf16 runs several times "
                               "faster than fp32, and parity gates it at the half-precision bounds")
    return FP32_CPU_DEFAULT, (f"{cpu['cpu']} has no bf16 instructions (AVX512-BF16 or AMX); {FP32_CPU_DEFAULT} is the "
                              "faster fp32 target on such CPUs (measured, README: Which CPU target)")
