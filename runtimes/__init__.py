"""bge-export's runtime: serve an engine bundle with FlagEmbedding's API, without torch.

    import runtimes
    model = runtimes.load("bundles/all-MiniLM-L6-v2-ort-cpu")
    vecs = model.encode(["hello", "world"])          # (2, H) float32, L2-normalised
"""
from __future__ import annotations

from runtimes import flag_api
from runtimes.bundle import open_bundle
from runtimes.errors import BgeError, BundleError, IncompatibleBundleError, InputError, MissingDependencyError
from runtimes.loader import checked_options, load, load_bundle, open_checked
from runtimes.registry import DROP_IN, RUNTIME_APIS, runtime_class

# The package re-exports only: the registry is runtimes.registry and the loading steps runtimes.loader, which the
# modules below import (never this package), so the import graph has no cycle through it.
__version__ = "0.1.0"
__all__ = ["load", "load_bundle", "open_bundle", "open_checked", "checked_options", "runtime_class", "BgeError",
           "BundleError", "IncompatibleBundleError", "InputError", "MissingDependencyError", "RUNTIME_APIS", "DROP_IN",
           "FlagModel", "FlagReranker", "BGEM3FlagModel", "FlagLLMReranker", "LayerWiseFlagLLMReranker",
           "LightWeightFlagLLMReranker", "FlagLLMModel", "FlagICLModel", "FlagAutoModel", "FlagAutoReranker"]


def __getattr__(name: str):
    if name in DROP_IN:  # built on first use: a drop-in class imports its runtime class (the tokenizer, the batcher)
        return getattr(flag_api, name) if name.startswith("FlagAuto") else flag_api.dropin(name)
    raise AttributeError(f"module 'runtimes' has no attribute '{name}'")
