"""The backend interface and the registry of engine kinds."""
from __future__ import annotations

import functools
import importlib
import pkgutil
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtimes.errors import IncompatibleBundleError, InputError

# shape buckets (backends that pad ragged calls to a few shapes)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MIN_SEQUENCE_BUCKET = 16


def bucket(n: int, buckets) -> int:
    """The smallest bucket >= n (n itself above the largest)."""
    return next((b for b in buckets if b >= n), n)


def sequence_bucket(length: int, limit: int | None) -> int:
    """Powers of two from MIN_SEQUENCE_BUCKET, capped at the model's position limit."""
    b = MIN_SEQUENCE_BUCKET
    while b < length:
        b *= 2
    return max(length, min(b, limit)) if limit else b


@functools.lru_cache(maxsize=None)
def backend_classes() -> dict[str, type["Backend"]]:
    """engine kind (manifest "engine.kind") -> backend class: every module of runtimes/backends/ that defines a
    Backend subclass with a ``kind`` (a backend is one module; its engine library is imported only when it runs).
    The package is scanned by its folder, this module's own: runtimes.backends imports this module."""
    found: dict[str, type[Backend]] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        try:
            module = importlib.import_module(f"{__package__}.{info.name}")
        except ImportError as exc:  # one broken backend module must not stop the others
            BROKEN[info.name] = str(exc)
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Backend) and value.__dict__.get("kind"):
                found[value.kind] = value
    return found


BROKEN: dict[str, str] = {}  # backend modules that failed to import -> why


def get_backend_class(kind: str) -> type["Backend"]:
    classes = backend_classes()
    if kind not in classes:
        broken = "".join(f"; runtimes.backends.{m} failed to import: {why}" for m, why in BROKEN.items())
        raise IncompatibleBundleError(
            f"engine kind '{kind}' is not supported by this runtime (supported: {', '.join(sorted(classes))}); "
            f"upgrade bge-export or rebuild the bundle for a supported target{broken}"
        )
    return classes[kind]


class ParityDevice(NamedTuple):
    """Where parity runs a bundle's engine on this machine."""
    backend_options: dict  # for runtimes.load
    name: str  # for the report


class Backend(ABC):
    """Runs one engine file. ``infer`` validates the feeds, then calls ``_infer_impl``.

    ``padding`` says how to pad feeds further when a backend runs fixed shape buckets: the runtime's tokenizer
    (its current ``padding_side`` and ``pad_token_id``, read at each call, so a side changed by the user or a
    family applies), or None for right padding with zeros. ``max_length``: the model's position limit.

    A backend that reuses fixed buffers between calls sets ``exclusive``: its calls then run one at a time, so a
    model object stays safe to share between threads."""

    exclusive = False
    kind: str = ""  # the manifest's engine.kind this backend runs (set by each backend module's class)
    engine_format = "an ONNX graph"  # what its engine file is, for messages
    threads_option: str | None = None  # the backend option that sets the engine's CPU threads, if it has one
    # padded tokens per engine batch that a server batches up to by default: on a CPU every padded token costs about
    # as much in any batch, and batches beyond ~2k tokens run slower per token (cache), so CPU engines batch small
    # (benchmarks/results/server-minilm-avx2: 2048 served 1.34x / 1.23x the requests of 16384 at 32 / 64 clients of
    # mixed traffic); GPU engines say more
    batch_tokens: int = 2048

    # --- what differs between engine kinds, answered from a manifest's ``engine`` entry: class methods, which
    # import no engine library, so the loader, parity, `bge-export inspect` and the benchmark ask them before (or
    # instead of) running an engine, and none of them compares engine kinds itself ---------------------------------
    @classmethod
    def on_gpu(cls, engine: dict) -> bool:
        """Whether a bundle of this engine runs on a GPU (the loader's device checks, the server's batch size)."""
        return False

    @classmethod
    def where(cls, engine: dict) -> str:
        """Where it runs, for messages: "CPU", "an NVIDIA GPU"."""
        return "a GPU" if cls.on_gpu(engine) else "CPU"

    @classmethod
    def parity_device(cls, engine: dict) -> ParityDevice:
        """Where `bge-export` checks the engine on this machine, and the report's name for it."""
        return ParityDevice({}, cls.kind)

    @classmethod
    def unrunnable(cls, engine: dict, precision: str) -> str | None:
        """Why parity cannot check a bundle of this engine at ``precision`` on this machine, or None."""
        return None

    @classmethod
    def onnx_graph(cls, engine: dict) -> str | None:
        """The bundle's ONNX graph file (what `bge-export lint` reads), None where the bundle holds none."""
        return engine.get("onnx", engine["file"])

    @classmethod
    def describe(cls, engine: dict, build: dict) -> list[str]:
        """The lines `bge-export inspect` prints about this engine beyond its kind, target and files."""
        return []

    @classmethod
    def peak_kind(cls, manifest: dict) -> str:
        """The benchmark's peak (bge_export.bench.peaks.PEAKS) a bundle's GFLOP/s are divided by: the precision its
        matmuls run in. int8 by its weight type (older bundles: signed), else fp32."""
        if manifest["precision"] != "int8":
            return "fp32"
        quant = (manifest.get("build") or {}).get("quantization") or {}
        return "int8-" + quant.get("weight_type", "QInt8")

    @classmethod
    def benchmark_options(cls, engine: dict) -> dict:
        """Backend options for timing several engines in turns in one process (`bge-export bench`)."""
        return {}

    def __init__(self, engine_file: Path, engine: dict, inputs: list[dict], outputs: list[dict],
                 padding=None, max_length: int | None = None):
        self.engine_file = Path(engine_file)
        self.engine = engine
        self.input_specs = inputs
        self.output_specs = outputs
        self.output_names = [o["name"] for o in outputs]
        self.padding = padding
        self.max_length = max_length
        self._lock = threading.Lock()

    @property
    def padding_side(self) -> str:
        return getattr(self.padding, "padding_side", "right")

    def pad_value(self, name: str) -> int:
        return int(getattr(self.padding, "pad_token_id", 0)) if name == "input_ids" else 0

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec in self.input_specs:
            if spec["name"] not in feeds:
                raise InputError(f"missing engine input '{spec['name']}' (expected {[s['name'] for s in self.input_specs]})")
        feeds = {s["name"]: feeds[s["name"]] for s in self.input_specs}
        if not self.exclusive:
            return self._infer_impl(feeds)
        with self._lock:
            return self._infer_impl(feeds)

    @abstractmethod
    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    # --- shape buckets: padding feeds up and slicing outputs back --------------------------------------
    def batch_and_length(self, feeds: dict[str, np.ndarray]) -> tuple[int, int]:
        """(batch, sequence length) of a feed dict; length 0 when no input has a sequence axis."""
        n, length = 0, 0
        for spec in self.input_specs:
            axes, value = spec["axes"], feeds[spec["name"]]
            n = value.shape[0]
            if "sequence" in axes:
                length = value.shape[axes.index("sequence")]
        return n, length

    def pad_feeds(self, feeds: dict[str, np.ndarray], batch: int, length: int) -> dict[str, np.ndarray]:
        """Pad to (batch, length): masked pad tokens on the tokenizer's side, copies of row 0 as extra rows."""
        out = {}
        for spec in self.input_specs:
            name, axes = spec["name"], spec["axes"]
            value = feeds[name]
            if "sequence" in axes:
                ax = axes.index("sequence")
                extra = length - value.shape[ax]
                if extra:
                    widths = [(0, 0)] * value.ndim
                    widths[ax] = (extra, 0) if self.padding_side == "left" else (0, extra)
                    value = np.pad(value, widths, constant_values=self.pad_value(name))
            if batch > value.shape[0]:
                value = np.concatenate([value, np.repeat(value[:1], batch - value.shape[0], axis=0)])
            out[name] = np.ascontiguousarray(value)
        return out

    def bucket_shape(self, n: int, length: int) -> tuple[int, int]:
        """The shape bucket of a (batch, sequence length) call: batch rounded up to BATCH_BUCKETS, length to a
        power of two (sequence_bucket); a call without a sequence axis keeps its length."""
        return bucket(n, BATCH_BUCKETS), sequence_bucket(length, self.max_length) if length else length

    def output_shape(self, index: int, batch: int, length: int) -> tuple[int, ...] | None:
        """An output's shape at (batch, length), or None when an axis is only known to the graph."""
        dims = []
        for a in self.output_specs[index]["axes"]:
            if a == "batch":
                dims.append(batch)
            elif a == "sequence":
                dims.append(length)
            elif isinstance(a, int):
                dims.append(a)
            else:
                return None
        return tuple(dims)

    def unpad_output(self, name: str, value: np.ndarray, batch: int, length: int, padded_length: int) -> np.ndarray:
        """Drop the extra rows, and the extra positions of sequence outputs; always a fresh array."""
        spec = self.output_specs[self.output_names.index(name)]
        value = value[:batch]
        if "sequence" in spec["axes"] and padded_length != length:
            ax = spec["axes"].index("sequence")
            sl = [slice(None)] * value.ndim
            sl[ax] = slice(padded_length - length, None) if self.padding_side == "left" else slice(0, length)
            value = value[tuple(sl)]
        return np.array(value, copy=True)
