"""OpenVINO backend: compiles the bundle's IR (model.xml + model.bin) for the device its manifest records ("CPU"
unless it says otherwise) with the precision, thread count and compiled-model cache recorded there, and runs it with
one infer request per calling thread.

The inference precision is always set explicitly: on a CPU with bf16 instructions OpenVINO's own default is bf16,
so an fp32 bundle left at the default would silently run in bf16. The reverse holds too: on a CPU without bf16
OpenVINO quietly runs a bf16 request in fp32, so a bf16 bundle is refused there with what to build instead.

``buckets=True`` pads each call's sequence length up to a power of two (and its batch to a bucket), so that a
stream of ragged requests reuses a few shapes; ``False`` (default) runs every shape as it comes.
"""
from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np

from runtimes._optional import require
from runtimes.backends.base import Backend, ParityDevice
from runtimes.cpu import cpu_name
from runtimes.errors import IncompatibleBundleError, InputError

# manifest "inference_precision" -> OpenVINO's INFERENCE_PRECISION_HINT value
HINTS = {"fp32": "f32", "bf16": "bf16"}


def default_cache_dir() -> Path:
    """Where compiled models are cached between loads (OpenVINO keys each entry on the model and its settings)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bge-export" / "openvino"


def device_supports_bf16(core, device: str = "CPU") -> bool:
    return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")


def engine_device(engine: dict) -> str:
    """The OpenVINO device a bundle's engine compiles for (bundles before the field ran on the CPU)."""
    return engine.get("device", "CPU")


@functools.lru_cache(maxsize=None)
def core():
    """One OpenVINO Core per process, for the questions about this machine (its devices, their capabilities)."""
    return require("openvino").Core()


def openvino_bf16(device: str = "CPU") -> bool:
    """Whether OpenVINO runs bf16 on ``device`` here (it lists BF16 among the device's optimization capabilities)."""
    return device_supports_bf16(core(), device)


def compile_config(engine: dict, num_threads: int | None = None) -> dict:
    """The compile settings of a bundle's engine entry (the runtime, the build's check and the benchmarks)."""
    threads = int(engine.get("num_threads", 0) if num_threads is None else num_threads)
    config = {"INFERENCE_PRECISION_HINT": HINTS[engine.get("inference_precision", "fp32")],
              "PERFORMANCE_HINT": engine.get("performance_hint", "LATENCY")}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    if "dynamic_quantization_group_size" in engine:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = int(engine["dynamic_quantization_group_size"])
    return config


class OpenVinoBackend(Backend):
    """``num_threads`` overrides the manifest's (0: all cores); ``cache_dir`` the compiled-model cache folder
    (None: no cache); ``buckets`` pads to shape buckets (see the module doc)."""

    kind = "openvino"
    engine_format = "an OpenVINO IR"
    threads_option = "num_threads"  # the backend option that sets its engine threads (a server sets it)

    @classmethod
    def on_gpu(cls, engine: dict) -> bool:
        return engine_device(engine).startswith("GPU")  # "GPU", or one of several: "GPU.1"

    @classmethod
    def where(cls, engine: dict) -> str:
        device = engine_device(engine)
        return "CPU" if device == "CPU" else f"the OpenVINO {device} device"

    @classmethod
    def parity_device(cls, engine: dict) -> ParityDevice:
        return ParityDevice({}, f"OpenVINO {engine_device(engine)}, {engine.get('inference_precision', 'fp32')} "
                                "inference precision")

    @classmethod
    def unrunnable(cls, engine: dict, precision: str) -> str | None:
        """A bf16 bundle on a device without bf16 would silently run in fp32; on a device this machine lacks, not
        at all."""
        device = engine_device(engine)
        if device != "CPU" and device not in core().available_devices:
            return (f"OpenVINO has no {device} device here (it has {', '.join(core().available_devices)}); run "
                    "`bge-export parity BUNDLE` on the machine it is deployed to")
        if engine.get("inference_precision") == "bf16" and not openvino_bf16(device):
            what = f"this CPU ({cpu_name()})" if device == "CPU" else f"the OpenVINO {device} device"
            return (f"{what} has no bf16 instructions (AVX512-BF16 or AMX), and OpenVINO would run the bundle in fp32 "
                    "here; run `bge-export parity BUNDLE` on the CPU it is deployed to")
        return None

    @classmethod
    def onnx_graph(cls, engine: dict) -> str | None:
        return engine.get("onnx")  # the IR replaces the ONNX export in the bundle

    @classmethod
    def describe(cls, engine: dict, build: dict) -> list[str]:
        e, device = engine, engine_device(engine)
        on = "" if device == "CPU" else f"device {device}, "
        return [f"openvino   {build.get('openvino', '?')}: {on}inference precision {e['inference_precision']}, "
                f"threads {e['num_threads'] or 'all'}, hint {e['performance_hint']}, compiled-model cache "
                f"{'on' if e.get('cache') else 'off'}, buckets {'on' if e.get('buckets') else 'off'}"
                + (f", dynamic quantization group {e['dynamic_quantization_group_size']}"
                   if "dynamic_quantization_group_size" in e else "")]

    @classmethod
    def peak_kind(cls, manifest: dict) -> str:
        """bf16, static int8 (int8 activations too), or fp32 (also weight-only int8, whose compute is float)."""
        quant = (manifest.get("build") or {}).get("quantization") or {}
        if manifest["engine"].get("inference_precision") == "bf16":
            return "bf16"
        return "int8-ov" if quant.get("method") == "nncf.quantize" else "fp32"

    def __init__(self, engine_file, engine, inputs, outputs, *, padding=None, max_length: int | None = None,
                 num_threads: int | None = None, cache_dir: str | Path | None = "default", buckets: bool | None = None,
                 **options):
        if options:
            raise InputError(f"unknown OpenVINO backend options {sorted(options)} (supported: num_threads, "
                             "cache_dir, buckets)")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 0):
            raise InputError(f"num_threads must be an int >= 0 (0: all cores), got {num_threads!r}")
        if cache_dir not in ("default", None) and not isinstance(cache_dir, (str, Path)):
            raise InputError(f"cache_dir must be a folder path (str or Path) or None for no cache, got {cache_dir!r}")
        super().__init__(engine_file, engine, inputs, outputs, padding=padding, max_length=max_length)
        ov = require("openvino")
        self.core = ov.Core()
        self.device = engine_device(engine)
        if self.on_gpu(engine):
            self.batch_tokens = 16384  # as the CUDA engines: a GPU gains from large batches
        precision = engine.get("inference_precision", "fp32")
        if precision not in HINTS:
            raise IncompatibleBundleError(f"this bundle asks OpenVINO for inference precision {precision!r}, which "
                                          f"this runtime does not know ({', '.join(HINTS)}); upgrade bge-export")
        if self.device != "CPU" and self.device not in self.core.available_devices:
            raise IncompatibleBundleError(
                f"this bundle runs on the OpenVINO {self.device} device, which this machine lacks (OpenVINO has "
                f"{', '.join(self.core.available_devices)}); serve it where that device is, or build --target ov-cpu")
        if precision == "bf16" and not device_supports_bf16(self.core, self.device):
            what = f"this CPU ({cpu_name()})" if self.device == "CPU" else f"the OpenVINO {self.device} device"
            raise IncompatibleBundleError(
                f"this bundle runs in bf16, but {what} has no bf16 instructions (OpenVINO lists "
                f"{self.core.get_property(self.device, 'OPTIMIZATION_CAPABILITIES')}; bf16 needs AVX512-BF16 or AMX); "
                "OpenVINO would silently run it in fp32. Build --target ov-cpu (fp32) or ov-cpu-int8 for this machine")
        self.buckets = bool(engine.get("buckets", False) if buckets is None else buckets)
        config = compile_config(engine, num_threads)
        if cache_dir == "default":
            cache_dir = default_cache_dir() if engine.get("cache", True) else None
        if cache_dir is not None:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(cache_dir)
            except OSError:  # a read-only home: compile every time rather than fail
                pass
        self.cache_dir = config.get("CACHE_DIR")
        try:
            self.compiled = self.core.compile_model(str(self.engine_file), self.device, config)
        except RuntimeError as exc:
            raise IncompatibleBundleError(f"OpenVINO could not compile {self.engine_file}: {str(exc).strip()[:500]}; "
                                          "rebuild the bundle with this bge-export") from None
        self.ports = {p.get_any_name(): p for p in self.compiled.outputs}
        missing = [n for n in self.output_names if n not in self.ports]
        if missing:
            raise IncompatibleBundleError(f"the OpenVINO model has no outputs {missing} (it has {sorted(self.ports)}); "
                                          "the bundle is damaged, rebuild it")
        self.input_dtypes = {spec["name"]: np.dtype(spec.get("dtype", "int64")) for spec in inputs}
        self._local = threading.local()

    def property(self, name: str):
        """A property of the compiled model (e.g. INFERENCE_PRECISION_HINT, NUM_STREAMS)."""
        return self.compiled.get_property(name)

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, length = self.batch_and_length(feeds)
        shape = self.bucket_shape(n, length) if self.buckets else (n, length)
        if shape != (n, length):
            feeds = self.pad_feeds(feeds, *shape)
        feeds = {k: np.ascontiguousarray(v, dtype=self.input_dtypes[k]) for k, v in feeds.items()}
        results = self._request().infer(feeds)
        out = {}
        for name in self.output_names:
            value = results[self.ports[name]]
            # infer() returns copies (share_outputs=False): no further copy unless padding is sliced off
            out[name] = self.unpad_output(name, value, n, length, shape[1]) if shape != (n, length) else value
        return out
