"""FlagEmbedding's classes as the fp32 CPU reference: construction, and pinning a loaded model's attention.

The classes are constructed directly, so the checkpoint folder's basename does not matter here (only
``FlagAutoModel`` / ``FlagAutoReranker`` dispatch on it). Fixes a family's class needs on transformers 4.57
(reference-semantics §0.5, §0.6) live in that family's ``reference`` hook and touch the returned INSTANCE only;
FlagEmbedding and transformers modules are never patched. Heavy imports happen inside the functions.
"""
from __future__ import annotations

from typing import Any

from bge_export.errors import BgeExportError
from runtimes._optional import require


def _flag():
    return require("FlagEmbedding")


def flag(api: str, path, **kwargs: Any):
    """FlagEmbedding's class ``api`` on the checkpoint at ``path`` as shipped, fp32 on CPU. Families whose class
    needs a compatibility fix build their reference in their own ``Family.reference`` (e.g. families/layerwise_reranker.py)."""
    return flag_class(api)(str(path), **cpu_fp32(kwargs))


def flag_class(api: str):
    """FlagEmbedding's class ``api`` (imports FlagEmbedding)."""
    return getattr(_flag(), api)


def cpu_fp32(kwargs: dict) -> dict:
    """FlagEmbedding constructor options for the fp32 CPU reference, ``kwargs`` on top."""
    return {"use_fp16": False, "devices": "cpu", **kwargs}


def pin_attention(model, attn_implementation: str) -> None:
    """Set the loaded model's attention implementation and check that it took effect."""
    if hasattr(model, "set_attn_implementation"):  # transformers >= 4.56
        model.set_attn_implementation(attn_implementation)
    else:
        model.config._attn_implementation = attn_implementation
    got = model.config._attn_implementation
    if got != attn_implementation:
        raise BgeExportError(f"could not set attn_implementation={attn_implementation!r} on "
                             f"{type(model).__name__} (it stays {got!r}): the reference needs transformers 4.57.x, "
                             "as pinned by the [export] extra; reinstall it with pip install -e '.[export]'")
