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

# FlagEmbedding constructor arguments that are decided when a bundle is built (precision, device, pooling, the
# checkpoint and its heads): passing one to runtimes.load gets an error that says what the bundle has.
BUILT_INTO_THE_BUNDLE = ("model_name_or_path", "use_fp16", "use_bf16", "devices", "pooling_method",
                         "trust_remote_code", "cache_dir", "peft_path", "colbert_dim")


def open_bundle(path, *, verify: bool = True):
    from runtimes.bundle import open_bundle as _open

    return _open(path, verify=verify)


def load(path: str | Path, *, verify: bool = True, **options):
    """Open a bundle and return the model object with its family's FlagEmbedding API.

    ``options`` are the FlagEmbedding constructor arguments (``batch_size``, ``max_length``,
    ``normalize_embeddings``, ``query_instruction_for_retrieval``, ``truncate_dim``, ...).
    """
    bundle = open_bundle(path, verify=verify)
    api = bundle.manifest.runtime.get("api")
    parity = bundle.manifest.parity
    if parity is not None and not parity.get("passed", False):
        import warnings

        failed = [f"{c['metric']}={c['value']:.4g}" for c in parity.get("checks", []) if not c.get("passed", True)]
        warnings.warn(f"bundle {bundle.path} FAILED parity against {parity.get('reference')} at build time "
                      f"({', '.join(failed)}); its outputs may differ from FlagEmbedding", RuntimeWarning, stacklevel=2)
    if api not in RUNTIME_APIS:
        raise IncompatibleBundleError(
            f"bundle API '{api}' (family {bundle.manifest.family}) has no runtime in this version (have: "
            f"{', '.join(sorted(RUNTIME_APIS))}); upgrade bge-export"
        )
    module, cls = RUNTIME_APIS[api].split(":")
    model_cls = getattr(importlib.import_module(module), cls)
    fixed = [name for name in options if name in BUILT_INTO_THE_BUNDLE]
    if fixed:
        m = bundle.manifest
        has = [f"target {m.target}", f"precision {m.precision}"] + [f"{k} {v}" for k, v in
                                                                   m.data.get("variant", {}).items()]
        raise InputError(
            f"runtimes.load(): {', '.join(fixed)}: FlagEmbedding constructor option(s) that a bundle fixes when it "
            f"is built (this bundle: {', '.join(has)}); drop them here, or build another bundle with the "
            "setting you want (bge-export --help lists the targets and export options)")
    try:
        inspect.signature(model_cls).bind(bundle, **options)
    except TypeError as exc:
        raise InputError(f"runtimes.load(): {exc} (options of a {api} bundle: "
                         f"{', '.join(list(inspect.signature(model_cls).parameters)[1:])})") from None
    return model_cls(bundle, **options)
