"""ONNX Runtime backend: CPU, and CUDA with IO binding on device buffers, shape buckets and optional CUDA graphs.

On CUDA (engines.md §6) every call pads its batch to a shape bucket (sequence length rounded up to a power of
two, batch rounded up to a bucket), copies the feeds into device buffers allocated once per bucket, runs with
IO binding into preallocated device outputs, and copies back only the outputs. Buffers at fixed addresses per
bucket are what CUDA graphs need: with ``cuda_graph=True`` each bucket is captured once (``gpu_graph_id``) and
replayed. Padding never changes results: extra tokens are masked (and sliced off sequence outputs), extra rows
are copies of the first row and are dropped.
"""
from __future__ import annotations

import functools

import numpy as np

from runtimes._optional import GPU_INSTALL, require
from runtimes.backends.base import BATCH_BUCKETS, Backend, ParityDevice
from runtimes.errors import IncompatibleBundleError, InputError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# A one-node ONNX model (Identity on a float[1], opset 18, IR 9), serialized: what cuda_usable starts a session on,
# without the onnx package (tests/test_gpu_logic.py rebuilds it with onnx.helper and compares)
PROBE_MODEL = (b'\x08\t:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08'
               b'\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x12')


@functools.lru_cache(maxsize=None)
def cuda_usable() -> bool:
    """Whether ONNX Runtime can run on a GPU here. Listing the CUDA provider is not enough (it is compiled into
    onnxruntime-gpu whether or not a GPU and the CUDA libraries are present): start a one-node session on it."""
    ort = require("onnxruntime")
    if CUDA not in ort.get_available_providers():
        return False
    try:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        sess = ort.InferenceSession(PROBE_MODEL, providers=[CUDA, CPU])
        return sess.get_providers()[0] == CUDA
    except Exception:  # noqa: BLE001 - any failure to start CUDA means: not usable here
        return False


def session_options(ort, *, intra_op_num_threads: int = 0, allow_spinning: bool = True):
    """The one place ONNX Runtime sessions are configured (runtime, build checks and benchmarks)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(intra_op_num_threads)
    so.log_severity_level = 3
    if not allow_spinning:  # idle worker threads block at once instead of spinning on the cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtBackend(Backend):
    """``providers`` overrides the bundle's (e.g. ``["CPUExecutionProvider"]`` to check a GPU bundle on CPU);
    ``io_binding`` (default: on for CUDA) binds fixed per-bucket buffers; ``buckets`` (default: with IO binding)
    pads to shape buckets; ``cuda_graph`` captures one CUDA graph per bucket (CUDA only, needs IO binding)."""

    kind = "onnxruntime"
    threads_option = "intra_op_num_threads"  # the backend option that sets its engine threads (a server sets it)

    @classmethod
    def on_gpu(cls, engine: dict) -> bool:
        return CUDA in engine.get("providers", [])

    @classmethod
    def where(cls, engine: dict) -> str:
        return "an NVIDIA GPU" if cls.on_gpu(engine) else "CPU"

    @classmethod
    def parity_device(cls, engine: dict) -> ParityDevice:
        """A CUDA bundle on a machine without CUDA runs its graph on ONNX Runtime CPU: that checks the graph and its
        precision (fp16 weights, fp32 islands, QDQ), not the CUDA kernels, and the report says so."""
        providers = engine.get("providers", [])
        if CUDA not in providers:
            return ParityDevice({}, (providers or [cls.kind])[0])
        if cuda_usable():
            return ParityDevice({}, CUDA)
        return ParityDevice({"providers": [CPU]}, f"{CPU} (no CUDA here: checks the graph, not the CUDA kernels)")

    @classmethod
    def unrunnable(cls, engine: dict, precision: str) -> str | None:
        on_cpu = CUDA not in engine.get("providers", []) or not cuda_usable()
        if precision == "bf16" and on_cpu:
            return "bf16 graphs do not run on ONNX Runtime CPU (no bf16 kernels); check them on the CUDA machine"
        return None

    @classmethod
    def benchmark_options(cls, engine: dict) -> dict:
        """On a CPU, idle worker threads block at once instead of spinning on the cores the next engine runs on."""
        return {"allow_spinning": False} if engine.get("providers", [CPU])[:1] == [CPU] else {}

    def __init__(self, engine_file, engine, inputs, outputs, *, padding=None, max_length: int | None = None,
                 intra_op_num_threads: int = 0, allow_spinning: bool = True, providers: list[str] | None = None,
                 io_binding: bool | None = None, buckets: bool | None = None, cuda_graph: bool = False,
                 device_id: int = 0, **options):
        if options:
            raise InputError(f"unknown ONNX Runtime backend options {sorted(options)} (supported: "
                             "intra_op_num_threads, allow_spinning, providers, io_binding, buckets, cuda_graph, device_id)")
        super().__init__(engine_file, engine, inputs, outputs, padding=padding, max_length=max_length)
        ort = self.ort = require("onnxruntime")
        wanted = list(providers or engine.get("providers", [CPU]))
        if CUDA in wanted and hasattr(ort, "preload_dlls"):
            try:  # the pip CUDA / cuDNN libraries (or a CUDA torch already imported), before the session
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - libraries on the system path work too; the session check below says
                pass
        have = ort.get_available_providers()
        missing = [p for p in wanted if p not in have]
        if missing:
            raise IncompatibleBundleError(
                f"this bundle needs ONNX Runtime providers {missing}, but this onnxruntime has {have}; "
                f"on a CUDA machine install the GPU build with `{GPU_INSTALL}`, or rebuild the bundle with "
                "--target ort-cpu")
        self.device = "cuda" if wanted[0] == CUDA else "cpu"
        if self.device == "cuda":
            self.batch_tokens = 16384  # text-embeddings-inference's default: a GPU gains from large batches
        self.device_id = int(device_id)
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)
        self.buckets = self.io_binding if buckets is None else bool(buckets)
        self.exclusive = self.io_binding  # bound buffers are shared between calls; plain session.run is thread-safe
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph and not (self.device == "cuda" and self.io_binding and self.buckets):
            raise InputError("cuda_graph=True needs a CUDA bundle with io_binding and buckets on")
        so = session_options(ort, intra_op_num_threads=intra_op_num_threads, allow_spinning=allow_spinning)
        provider_list = []
        for p in wanted:
            if p == CUDA:
                opts = {"device_id": str(self.device_id), "arena_extend_strategy": "kSameAsRequested"}
                if self.cuda_graph:
                    opts["enable_cuda_graph"] = "1"
                provider_list.append((p, opts))
            else:
                provider_list.append(p)
        self.session = ort.InferenceSession(str(self.engine_file), so, providers=provider_list)
        if self.session.get_providers()[0] != wanted[0]:  # ORT falls back to CPU silently when CUDA fails to load
            raise IncompatibleBundleError(
                f"ONNX Runtime could not start {wanted[0]} (running on {self.session.get_providers()}); check the "
                f"CUDA / cuDNN libraries (`{GPU_INSTALL}` installs them) and that a GPU is visible")
        self.input_dtypes = {spec["name"]: np.dtype(spec.get("dtype", "int64")) for spec in inputs}
        self._bound: dict[tuple[int, int], tuple] = {}

    @property
    def bound_buckets(self) -> int:
        """How many shape buckets have their buffers (and, with CUDA graphs, a captured graph)."""
        return len(self._bound)

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.io_binding:
            values = self.session.run(self.output_names, feeds)
            return dict(zip(self.output_names, values))
        n, length = self.batch_and_length(feeds)
        shape = self.bucket_shape(n, length) if self.buckets else (n, length)
        if self.cuda_graph and shape[0] > BATCH_BUCKETS[-1]:
            raise InputError(f"with cuda_graph=True a call runs at most {BATCH_BUCKETS[-1]} rows (one captured graph "
                             f"per bucket); got {n}: lower batch_size")
        padded = self.pad_feeds(feeds, *shape) if shape != (n, length) else feeds
        binding, inputs, outputs, run_options = self._binding(shape, padded)
        for name, value in inputs.items():  # update_inplace checks sizes only: convert to the buffer's dtype
            value.update_inplace(np.ascontiguousarray(padded[name], dtype=self.input_dtypes[name]))
        self.session.run_with_iobinding(binding, run_options)
        result = {}
        for name, value in zip(self.output_names, binding.get_outputs() if outputs is None else outputs):
            result[name] = self.unpad_output(name, value.numpy(), n, length, shape[1])
        return result

    def _binding(self, shape, feeds):
        """The IO binding of one bucket: input and output buffers allocated once, at fixed addresses."""
        key = shape if self.buckets else None
        if key is not None and key in self._bound:
            return self._bound[key]
        ort = self.ort
        binding = self.session.io_binding()
        inputs = {}
        for name, value in feeds.items():
            inputs[name] = ort.OrtValue.ortvalue_from_shape_and_type(value.shape, self.input_dtypes[name],
                                                                     self.device, self.device_id)
            binding.bind_ortvalue_input(name, inputs[name])
        out_shapes = [self.output_shape(i, *shape) for i in range(len(self.output_names))]
        if all(s is not None for s in out_shapes):
            outputs = []
            for spec, s in zip(self.output_specs, out_shapes):
                outputs.append(ort.OrtValue.ortvalue_from_shape_and_type(s, np.dtype(spec["dtype"]), self.device,
                                                                         self.device_id))
                binding.bind_ortvalue_output(spec["name"], outputs[-1])
        else:  # an output whose size only the graph knows: ORT allocates it on the device
            if self.cuda_graph:
                raise IncompatibleBundleError("cuda_graph=True needs outputs of known shapes; this bundle has "
                                              f"{[s['axes'] for s in self.output_specs]}")
            outputs = None
            for name in self.output_names:
                binding.bind_output(name, self.device, self.device_id)
        run_options = ort.RunOptions()
        if self.cuda_graph:
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._bound) + 1))
        entry = (binding, inputs, outputs, run_options)
        if key is not None:
            self._bound[key] = entry
        return entry
