"""The family registry: each family module registers one Family subclass at its definition site."""
from __future__ import annotations

from bge_export.families.base import (FAMILIES, Family, TensorSpec, family_from_manifest, get_family, recognise,
                                      register_family)

# Importing a family module registers it (in this order: `bge-export families` lists them so). Keep these imports
# light (no torch at module level).
from bge_export.families import encoder as _encoder  # noqa: E402,F401
from bge_export.families import m3 as _m3  # noqa: E402,F401
from bge_export.families import cross_encoder as _cross_encoder  # noqa: E402,F401
from bge_export.families import llm_reranker as _llm_reranker  # noqa: E402,F401
from bge_export.families import layerwise_reranker as _layerwise_reranker  # noqa: E402,F401
from bge_export.families import compressed_reranker as _compressed_reranker  # noqa: E402,F401
from bge_export.families import llm_embedder as _llm_embedder  # noqa: E402,F401
from bge_export.families import qwen_embedder as _qwen_embedder  # noqa: E402,F401

__all__ = ["FAMILIES", "Family", "TensorSpec", "family_from_manifest", "get_family", "recognise", "register_family"]
