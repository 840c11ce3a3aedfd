"""bge-export's runtime: serve an engine bundle with FlagEmbedding's API, without torch.

    import runtimes
    model = runtimes.load("bundles/all-MiniLM-L6-v2-ort-cpu")
    vecs = model.encode(["hello", "world"])          # (2, H) float32, L2-normalised
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from runtimes.errors import BgeError, BundleError, IncompatibleBundleError, InputError, MissingDependencyError

__version__ = "0.1.0"
__all__ = ["load", "open_bundle", "BgeError", "BundleError", "IncompatibleBundleError", "InputError",
           "MissingDependencyError", "RUNTIME_APIS"]

# family -> (FlagEmbedding API it mirrors, "module:Class")
RUNTIME_APIS = {
    "encoder": ("FlagModel", "runtimes.encoder:EncoderModel"),
    "cross-encoder": ("FlagReranker", "runtimes.reranker:CrossEncoderModel"),
    "m3": ("BGEM3FlagModel", "runtimes.m3:M3Model"),
}


def open_bundle(path, *, verify: bool = True):
    from runtimes.bundle import open_bundle as _open

    return _open(path, verify=verify)


def load(path: str | Path, *, verify: bool = True, **options):
    """Open a bundle and return the model object with its family's FlagEmbedding API.

    ``options`` are the FlagEmbedding constructor arguments (``batch_size``, ``max_length``,
    ``normalize_embeddings``, ``query_instruction_for_retrieval``, ``truncate_dim``, ...).
    """
    bundle = open_bundle(path, verify=verify)
    family = bundle.manifest.family
    parity = bundle.manifest.parity
    if parity is not None and not parity.get("passed", False):
        import warnings

        failed = [f"{c['metric']}={c['value']:.4g}" for c in parity.get("checks", []) if not c.get("passed", True)]
        warnings.warn(f"bundle {bundle.path} FAILED parity against {parity.get('reference')} at build time "
                      f"({', '.join(failed)}); its outputs may differ from FlagEmbedding", RuntimeWarning, stacklevel=2)
    if family not in RUNTIME_APIS:
        raise IncompatibleBundleError(
            f"bundle family '{family}' has no runtime in this version (have: {', '.join(sorted(RUNTIME_APIS))}); "
            "upgrade bge-export"
        )
    module, cls = RUNTIME_APIS[family][1].split(":")
    model_cls = getattr(importlib.import_module(module), cls)
    try:
        inspect.signature(model_cls).bind(bundle, **options)
    except TypeError as exc:
        raise InputError(f"runtimes.load(): {exc} (options of a {RUNTIME_APIS[family][0]} bundle: "
                         f"{', '.join(list(inspect.signature(model_cls).parameters)[1:])})") from None
    return model_cls(bundle, **options)
