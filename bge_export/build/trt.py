"""TensorRT targets: a strongly typed engine built from the typed ONNX of onnx-fp16 / onnx-int8 (engines.md §4).

TensorRT 11 is strongly typed only (no FP16 / INT8 builder flags, no calibrators), and 10.12+ deprecates the
weak-typing path, so there is one build path for 10.12+ and 11.x: the precision lives in the ONNX (fp16 or bf16
weights with fp32 norm / softmax islands; explicit symmetric Q/DQ for int8) and the network is created
strongly typed. Shape profiles come from sequence buckets up to the model's max length; a timing cache is
reused across builds. Everything TensorRT-free (profile planning, the typed ONNX, its parity in ONNX Runtime,
the lint) runs anywhere; the engine build itself needs TensorRT and an NVIDIA GPU.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from bge_export.build.gpu import build_onnx_half, build_onnx_qdq
from bge_export.build.ort import MODEL, BuildResult
from bge_export.errors import BuildError, MissingDependencyError, UnsupportedTargetError
from bge_export.options import parse_int_list as parse
from runtimes._optional import available, require

PLAN = "model.plan"
DEFAULT_MAX_BATCH = 64
DEFAULT_SEQUENCE_BUCKETS = (128, 512)  # plus the model's max length
TOKENS_PER_PROFILE = DEFAULT_MAX_BATCH * 512  # long buckets get smaller max batches (activation memory)


def parse_int_list(text, what: str) -> tuple[int, ...] | None:
    """A TensorRT option's integer list (--trt-seq-buckets): bge_export.options.parse_int_list."""
    return parse(text, what, error=UnsupportedTargetError)


def plan_profiles(inputs: list[dict], max_length: int, *, max_batch: int = DEFAULT_MAX_BATCH,
                  sequence_buckets: tuple[int, ...] | None = None, opt_batch: int | None = None) -> list[dict]:
    """One optimization profile per sequence bucket: lengths (previous bucket, bucket], batch 1..max, the
    optimum at the bucket's length. Buckets longer than 512 get a max batch that keeps batch x length at
    TOKENS_PER_PROFILE, so a bge-m3 8192 profile does not reserve 64 x 8192 activations."""
    if max_batch < 1 or (opt_batch is not None and opt_batch < 1):
        raise UnsupportedTargetError(f"--trt-max-batch and --trt-opt-batch must be >= 1, got {max_batch} and {opt_batch}")
    edges = sorted({b for b in (sequence_buckets or DEFAULT_SEQUENCE_BUCKETS) if b < max_length} | {max_length})
    if sequence_buckets and any(b > max_length for b in sequence_buckets):
        raise UnsupportedTargetError(f"--trt-seq-buckets {','.join(map(str, sequence_buckets))}: the model takes at "
                                     f"most {max_length} tokens; use buckets up to {max_length}")
    profiles, low = [], 1
    for edge in edges:
        batch = max(1, min(max_batch, TOKENS_PER_PROFILE // edge)) if edge > 512 else max_batch
        opt = min(batch, batch if opt_batch is None else opt_batch)
        shapes = {}
        for spec in inputs:
            def dims(b, s):
                return [b if a == "batch" else s for a in spec["axes"]]
            shapes[spec["name"]] = {"min": dims(1, low), "opt": dims(opt, edge), "max": dims(batch, edge)}
        profiles.append({"sequence": [low, edge], "max_batch": batch, "shapes": shapes})
        low = edge + 1
    return profiles


def default_timing_cache(trt_version: str, compute_capability: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bge-export"
    return root / f"tensorrt-{trt_version}-sm{compute_capability.replace('.', '')}.timing-cache"


ONNX_OF_TRT = {"trt-fp16": "--target onnx-fp16", "trt-int8": "--target onnx-int8",
               "trt-bf16": "--target onnx --export-dtype bf16"}


def check_can_build(target: str, family, options: dict) -> None:
    """Valid profile options, TensorRT and a visible GPU, before anything is exported; without TensorRT the
    error names the TensorRT-free target that builds the same ONNX."""
    profiles_for(family, options)
    if not available("tensorrt"):
        raise MissingDependencyError(
            f"--target {target} needs TensorRT, which is not installed; on an NVIDIA GPU machine install it with "
            f"pip install 'bge-export[trt]'. Without TensorRT, {ONNX_OF_TRT[target]} builds the ONNX graph that "
            "this target compiles")
    gpu_identity()


def profiles_for(family, options: dict) -> list[dict]:
    """The profiles of ``family`` from the build options (``max_batch``, ``sequence_buckets``, ``opt_batch``)."""
    inputs = [{"name": s.name, "axes": list(s.axes)} for s in family.inputs()]
    max_batch = options.get("max_batch")
    return plan_profiles(inputs, family.max_sequence_length(),
                         max_batch=DEFAULT_MAX_BATCH if max_batch is None else max_batch,
                         sequence_buckets=options.get("sequence_buckets"), opt_batch=options.get("opt_batch"))


def gpu_identity() -> dict:
    """The GPU the engine is built for (TensorRT plans are tied to its compute capability)."""
    torch = require("torch")
    if not torch.cuda.is_available():
        raise BuildError("TensorRT targets need an NVIDIA GPU, and none is visible here (torch.cuda.is_available() "
                         "is False); build on the GPU machine that will serve the bundle, or use --target onnx-fp16 "
                         "/ onnx-int8 here and build the engine there")
    major, minor = torch.cuda.get_device_capability()
    return {"compute_capability": f"{major}.{minor}", "gpu": torch.cuda.get_device_name()}


def build_engine(onnx_path: Path, plan_path: Path, profiles: list[dict], *, timing_cache: Path | None = None,
                 optimization_level: int = 3, workspace_gb: float | None = None, log=print) -> dict:
    """Parse ``onnx_path`` into a strongly typed network and write the serialized engine to ``plan_path``."""
    trt = require("tensorrt")
    ident = gpu_identity()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # 10.x: opt in; 11.x: always, flag ignored
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path: external weights are found next to the model
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}; run `bge-export lint "
                         f"{onnx_path.parent} --target trt` for the operators and shapes TensorRT does not support")
    config = builder.create_builder_config()
    config.builder_optimization_level = int(optimization_level)
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, s in p["shapes"].items():
            prof.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
        config.add_optimization_profile(prof)
    cache_path = timing_cache or default_timing_cache(trt.__version__, ident["compute_capability"])
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(cache_bytes), False):  # e.g. from another GPU
        log(f"the timing cache {cache_path} does not match this GPU; starting a fresh one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    start = time.perf_counter()
    log(f"building the TensorRT {trt.__version__} engine for {ident['gpu']} (sm {ident['compute_capability']}), "
        f"{len(profiles)} profile(s), optimization level {optimization_level}; this takes minutes")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError("TensorRT could not build the engine (see its messages above); try fewer or smaller "
                         "profiles (--trt-max-batch, --trt-seq-buckets) or a larger --trt-workspace-gb")
    plan_path.write_bytes(memoryview(plan))
    cache = config.get_timing_cache()
    if cache is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(memoryview(cache.serialize()))
    seconds = time.perf_counter() - start
    log(f"engine built in {seconds:.0f}s ({plan_path.stat().st_size / 1e6:.1f} MB); timing cache {cache_path}")
    return {"tensorrt_version": trt.__version__, **ident, "strongly_typed": True,
            "optimization_level": int(optimization_level), "timing_cache": str(cache_path),
            "build_seconds": round(seconds, 1)}


def _build(stage, family, exported, out_dir: Path, log, *, timing_cache=None, optimization_level=3,
           workspace_gb=None, **profile_options) -> BuildResult:
    typed = stage(family, exported, out_dir, log)
    profiles = profiles_for(family, profile_options)
    record = build_engine(out_dir / MODEL, out_dir / PLAN, profiles,
                          timing_cache=Path(timing_cache) if timing_cache else None,
                          optimization_level=optimization_level, workspace_gb=workspace_gb, log=log)
    engine = {"file": PLAN, "onnx": MODEL, "providers": [], "profiles": profiles, **record}
    return BuildResult(files=typed.files + [PLAN], info={**typed.info, "tensorrt": record}, engine=engine)


def build_trt_half(family, exported, out_dir: Path, log=print, **options) -> BuildResult:
    return _build(build_onnx_half, family, exported, out_dir, log, **options)


def build_trt_int8(family, exported, out_dir: Path, log=print, **options) -> BuildResult:
    return _build(build_onnx_qdq, family, exported, out_dir, log, **options)
