"""The backend interface and the registry of engine kinds."""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from runtimes.errors import IncompatibleBundleError, InputError

# engine kind (manifest "engine.kind") -> "module:Class", imported only when a bundle needs it
_BACKENDS = {
    "onnxruntime": "runtimes.backends.ort:OrtBackend",
}


def get_backend_class(kind: str) -> type["Backend"]:
    if kind not in _BACKENDS:
        raise IncompatibleBundleError(
            f"engine kind '{kind}' is not supported by this runtime (supported: {', '.join(sorted(_BACKENDS))}); "
            "upgrade bge-export or rebuild the bundle for a supported target"
        )
    module, cls = _BACKENDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


class Backend(ABC):
    """Runs one engine file. ``infer`` validates the feeds, then calls ``_infer_impl``."""

    def __init__(self, engine_file: Path, engine: dict, inputs: list[dict], outputs: list[dict]):
        self.engine_file = Path(engine_file)
        self.engine = engine
        self.input_specs = inputs
        self.output_names = [o["name"] for o in outputs]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for spec in self.input_specs:
            if spec["name"] not in feeds:
                raise InputError(f"missing engine input '{spec['name']}' (expected {[s['name'] for s in self.input_specs]})")
        return self._infer_impl({s["name"]: feeds[s["name"]] for s in self.input_specs})

    @abstractmethod
    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
