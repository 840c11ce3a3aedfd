"""TensorRT backend: a serialized engine run with ``execute_async_v3`` on torch CUDA tensors (engines.md §4.3).

A plan is tied to the TensorRT version and the GPU's compute capability it was built with; loading checks
both against the manifest and names the mismatch. Each optimization profile covers a range of sequence
lengths up to a largest batch; a call runs on the profile whose range holds its length (one execution context
per profile, created on first use) and is split into chunks of at most that batch. The contexts share one
activation buffer, so calls from several threads run one at a time.
"""
from __future__ import annotations

import numpy as np

from runtimes._optional import available, require
from runtimes.backends.base import Backend, ParityDevice
from runtimes.errors import IncompatibleBundleError, InputError, MissingDependencyError


def compatibility_problems(engine: dict, tensorrt_version: str, compute_capability: str) -> list[str]:
    """Why a plan recorded in ``engine`` cannot run here (empty when it can)."""
    problems = []
    if engine.get("tensorrt_version") != tensorrt_version:
        problems.append(f"it was built with TensorRT {engine.get('tensorrt_version')} and this machine has "
                        f"TensorRT {tensorrt_version} (plans only load on the version that built them)")
    if engine.get("compute_capability") != compute_capability:
        problems.append(f"it was built for a GPU of compute capability {engine.get('compute_capability')} "
                        f"({engine.get('gpu', 'unknown GPU')}) and this GPU has {compute_capability}")
    return problems


def pick_profile(profiles: list[dict], length: int) -> int:
    """Index of the profile whose sequence range holds ``length``."""
    for i, p in enumerate(profiles):
        low, high = p["sequence"]
        if low <= length <= high:
            return i
    ranges = ", ".join(f"{p['sequence'][0]}-{p['sequence'][1]}" for p in profiles)
    raise InputError(f"sequence length {length} is outside the engine's profiles ({ranges}); rebuild with "
                     "--trt-seq-buckets that cover it")


class TrtBackend(Backend):
    batch_tokens = 16384  # text-embeddings-inference's default: a GPU gains from large batches
    kind = "tensorrt"
    engine_format = "a TensorRT plan"
    exclusive = True  # one stream, one shared activation buffer

    @classmethod
    def on_gpu(cls, engine: dict) -> bool:
        return True

    @classmethod
    def where(cls, engine: dict) -> str:
        return "an NVIDIA GPU"

    @classmethod
    def parity_device(cls, engine: dict) -> ParityDevice:
        return ParityDevice({}, cls.kind)  # the plan runs on the GPU it was built on (the build checked for one)

    @classmethod
    def describe(cls, engine: dict, build: dict) -> list[str]:
        e = engine
        profiles = ", ".join(f"{p['sequence'][0]}-{p['sequence'][1]} tokens x <= {p['max_batch']}"
                             for p in e["profiles"])
        return [f"tensorrt   {e['tensorrt_version']} for {e['gpu']} (sm {e['compute_capability']}); "
                f"profiles {profiles}"]

    def __init__(self, engine_file, engine, inputs, outputs, *, padding=None, max_length: int | None = None,
                 device_id: int = 0, **options):
        if options:
            raise InputError(f"unknown TensorRT backend options {sorted(options)} (supported: device_id)")
        super().__init__(engine_file, engine, inputs, outputs, padding=padding, max_length=max_length)
        trt = self.trt = require("tensorrt")
        if not available("torch"):
            raise MissingDependencyError("TensorRT bundles run on torch CUDA tensors, and torch is not installed; "
                                         "install it with: pip install 'bge-export[trt]'")
        torch = self.torch = require("torch")
        if not torch.cuda.is_available():
            raise IncompatibleBundleError("this is a TensorRT bundle and no NVIDIA GPU is visible here; serve it on "
                                          "a GPU machine, or build an ort-cpu bundle for this one")
        self.device = torch.device("cuda", int(device_id))
        major, minor = torch.cuda.get_device_capability(self.device)
        problems = compatibility_problems(engine, trt.__version__, f"{major}.{minor}")
        if problems:
            raise IncompatibleBundleError(f"cannot load {self.engine_file.name}: {'; '.join(problems)}; rebuild the "
                                          "bundle on this machine with the same bge-export command")
        self.profiles = engine["profiles"]
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.engine_obj = trt.Runtime(self.logger).deserialize_cuda_engine(self.engine_file.read_bytes())
        if self.engine_obj is None:
            raise IncompatibleBundleError(f"TensorRT could not deserialize {self.engine_file} (see its log above); "
                                          "rebuild the bundle on this machine")
        self.contexts: dict[int, object] = {}
        self.scratch = None  # activation memory shared by the contexts
        self.stream = torch.cuda.Stream(device=self.device)
        self.dtypes = {}
        for i in range(self.engine_obj.num_io_tensors):
            name = self.engine_obj.get_tensor_name(i)
            self.dtypes[name] = self._torch_dtype(self.engine_obj.get_tensor_dtype(name))

    def _torch_dtype(self, dt):
        trt, torch = self.trt, self.torch
        return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
                trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool,
                trt.DataType.INT8: torch.int8}[dt]

    def _context(self, k: int):
        """The context of profile k. All contexts run one at a time on one stream, so they share one block of
        activation memory (USER_MANAGED) instead of each reserving the largest profile's (the STATIC default)."""
        trt, torch = self.trt, self.torch
        if k not in self.contexts:
            with torch.cuda.device(self.device):
                ctx = self.engine_obj.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
                if self.scratch is None:
                    self.scratch = torch.empty(self.engine_obj.device_memory_size_v2, dtype=torch.uint8,
                                               device=self.device)
                ctx.set_device_memory(self.scratch.data_ptr(), self.scratch.numel())
                if k:
                    ctx.set_optimization_profile_async(k, self.stream.cuda_stream)
            self.contexts[k] = ctx
        return self.contexts[k]

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, length = self.batch_and_length(feeds)
        k = pick_profile(self.profiles, length)
        step = self.profiles[k]["max_batch"]
        chunks = [self._run(k, {name: v[s:s + step] for name, v in feeds.items()}) for s in range(0, n, step)]
        return {name: np.concatenate([c[name] for c in chunks]) for name in self.output_names}

    def _run(self, k: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        ctx = self._context(k)
        with torch.cuda.stream(self.stream):
            held = []  # device tensors stay referenced until the stream is synchronised
            for name, value in feeds.items():
                t = torch.from_numpy(np.ascontiguousarray(value)).to(self.device, self.dtypes[name], non_blocking=False)
                held.append(t)
                if not ctx.set_input_shape(name, tuple(t.shape)):
                    raise InputError(f"TensorRT rejected shape {tuple(t.shape)} of {name} in profile {k} "
                                     f"({self.profiles[k]['shapes'].get(name)})")
                if not ctx.set_tensor_address(name, t.data_ptr()):
                    raise IncompatibleBundleError(f"TensorRT rejected the buffer of {name}")
            outputs = {}
            for name in self.output_names:
                shape = tuple(ctx.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                if not ctx.set_tensor_address(name, outputs[name].data_ptr()):
                    raise IncompatibleBundleError(f"TensorRT rejected the buffer of {name}")
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise IncompatibleBundleError("TensorRT failed to run the engine (see its log above)")
            self.stream.synchronize()
        return {name: t.float().cpu().numpy() for name, t in outputs.items()}
