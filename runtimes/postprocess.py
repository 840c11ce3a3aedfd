"""Host-side post-processing shared by every backend: backends only move tensors, the math lives here."""
from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``torch.nn.functional.normalize(x, dim=-1)``: x / max(||x||, eps), computed in float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=-1, keepdims=True)).astype(np.float32)
    return x / np.maximum(norm, eps)


def finish_embeddings(pooled: np.ndarray, *, truncate_dim: int | None, normalize: bool) -> np.ndarray:
    """FlagModel's order: truncate to ``truncate_dim`` first, then L2-normalise."""
    out = np.asarray(pooled, dtype=np.float32)
    if truncate_dim is not None:
        out = out[..., :truncate_dim]
    if normalize:
        out = l2_normalize(out)
    return np.ascontiguousarray(out, dtype=np.float32)
