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
           "MissingDependencyError", "RUNTIME_APIS", "FlagModel", "FlagReranker", "BGEM3FlagModel", "FlagLLMReranker",
           "LayerWiseFlagLLMReranker", "LightWeightFlagLLMReranker", "FlagLLMModel", "FlagICLModel", "FlagAutoModel",
           "FlagAutoReranker"]

# the FlagEmbedding API a bundle's manifest names -> the class that serves it ("module:Class")
RUNTIME_APIS = {
    "FlagModel": "runtimes.encoder:EncoderModel",
    "FlagReranker": "runtimes.reranker:CrossEncoderModel",
    "BGEM3FlagModel": "runtimes.m3:M3Model",
    "FlagLLMReranker": "runtimes.llm:LLMRerankerModel",
    "LayerWiseFlagLLMReranker": "runtimes.llm:LayerWiseRerankerModel",
    "LightWeightFlagLLMReranker": "runtimes.llm:LightWeightRerankerModel",
    "FlagLLMModel": "runtimes.llm:LLMEmbedderModel",
    "FlagICLModel": "runtimes.llm:ICLEmbedderModel",
}

# FlagEmbedding's class names, served by runtimes.flag_api (``from runtimes import FlagModel``)
DROP_IN = tuple(RUNTIME_APIS) + ("FlagAutoModel", "FlagAutoReranker")


def __getattr__(name: str):
    if name in DROP_IN:  # lazily: the runtime classes load numpy and tokenizers
        from runtimes import flag_api

        return getattr(flag_api, name) if name.startswith("FlagAuto") else flag_api.dropin(name)
    raise AttributeError(f"module 'runtimes' has no attribute '{name}'")


def open_bundle(path, *, verify: bool = True):
    from runtimes.bundle import open_bundle as _open

    return _open(path, verify=verify)


def open_checked(path, *, verify: bool = True):
    """open_bundle, plus a RuntimeWarning when the bundle failed parity at build time."""
    bundle = open_bundle(path, verify=verify)
    import warnings

    from runtimes.cpu import int8_mismatch

    parity = bundle.manifest.parity
    if parity is not None and not parity.get("passed", False):
        failed = [f"{c['metric']}={c['value']:.4g}" for c in parity.get("checks", []) if not c.get("passed", True)]
        warnings.warn(f"bundle {bundle.path} FAILED parity against {parity.get('reference')} at build time "
                      f"({', '.join(failed)}); its outputs may differ from FlagEmbedding", RuntimeWarning, stacklevel=3)
    why = int8_mismatch(bundle.manifest.data.get("build", {}).get("quantization"))
    if why:
        warnings.warn(f"bundle {bundle.path}: {why}", RuntimeWarning, stacklevel=3)
    return bundle


def runtime_class(api: str) -> type:
    """The runtime class serving a FlagEmbedding API name (imported on first use)."""
    module, cls = RUNTIME_APIS[api].split(":")
    return getattr(importlib.import_module(module), cls)


def checked_options(bundle, model_cls: type, options: dict, caller: str, known) -> dict:
    """runtimes.options.split_options, then the options bound to ``model_cls``: an unknown one is an InputError
    that lists ``known``."""
    from runtimes.options import split_options

    options = split_options(bundle, options, caller)
    try:
        inspect.signature(model_cls).bind(bundle, **options)
    except TypeError as exc:
        raise InputError(f"{caller}: {exc} (the options it takes: {', '.join(known)})") from None
    return options


def load(path: str | Path, *, verify: bool = True, **options):
    """Open a bundle and return the model object with its family's FlagEmbedding API.

    ``options`` are the FlagEmbedding constructor arguments (``batch_size``, ``max_length``,
    ``normalize_embeddings``, ``query_instruction_for_retrieval``, ``truncate_dim``, ...). Options a bundle fixed
    when it was built (``use_fp16``, ``devices``, ``pooling_method``, ...) are accepted with a warning where they
    cannot change its result and refused where they contradict it (runtimes.options).
    """
    return load_bundle(open_checked(path, verify=verify), **options)


def load_bundle(bundle, **options):
    """:func:`load` on a bundle already opened (runtimes.open_bundle / open_checked)."""
    api = bundle.manifest.runtime.get("api")
    if api not in RUNTIME_APIS:
        raise IncompatibleBundleError(
            f"bundle API '{api}' (family {bundle.manifest.family}) has no runtime in this version (have: "
            f"{', '.join(sorted(RUNTIME_APIS))}); upgrade bge-export"
        )
    model_cls = runtime_class(api)
    known = list(inspect.signature(model_cls).parameters)[1:]
    return model_cls(bundle, **checked_options(bundle, model_cls, options, f"runtimes.load() of a {api} bundle", known))
