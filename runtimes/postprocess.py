"""Host-side post-processing shared by every backend and family: backends only move tensors, the math lives here.

Each step reproduces what FlagEmbedding does after the model, in its order: embeddings (truncate_dim, then L2),
bge-m3's lexical weights, ColBERT vectors and the scores between them, and the rerankers' sigmoid.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

SCORE_KEYS = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")


# --- embeddings -------------------------------------------------------------------------------------------
def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``torch.nn.functional.normalize(x, dim=-1)``: x / max(||x||, eps), computed in float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=-1, keepdims=True)).astype(np.float32)
    return x / np.maximum(norm, eps)


def finish_embeddings(pooled: np.ndarray, *, truncate_dim: int | None, normalize: bool) -> np.ndarray:
    """FlagModel's (and BGEM3FlagModel's) order: truncate to ``truncate_dim`` first, then L2-normalise (zero
    vectors stay zero)."""
    out = np.asarray(pooled, dtype=np.float32)
    if truncate_dim is not None:
        out = out[..., :truncate_dim]
    if normalize:
        out = l2_normalize(out)
    return np.ascontiguousarray(out, dtype=np.float32)


def maybe_normalize(x: np.ndarray, normalize: bool) -> np.ndarray:
    """L2-normalised, or as it is in float32 (BGEM3FlagModel.compute_score: no truncate_dim there)."""
    return l2_normalize(x) if normalize else np.asarray(x, dtype=np.float32)


# --- bge-m3: lexical weights and ColBERT vectors ------------------------------------------------------------
def lexical_weights(weights: np.ndarray, ids, unused_token_ids) -> dict:
    """One text's lexical weights: ``str(token_id)`` -> the max weight over its repeats, only weights > 0, the
    unused ids (cls / eos / pad / unk) dropped. ``weights`` are the text's own positions."""
    result = defaultdict(int)
    for w, tid in zip(weights.astype(np.float32), ids):
        if tid not in unused_token_ids and w > 0:
            key = str(tid)
            if w > result[key]:
                result[key] = w
    return result


def trim_colbert(vecs: np.ndarray) -> np.ndarray:
    """ColBERT rows without the first (CLS) position: of one text ``(L, D)`` (its own positions) or of a padded
    batch ``(B, L, D)``. A view."""
    return vecs[..., 1:, :]


def colbert_token_counts(attention_mask: np.ndarray) -> np.ndarray:
    """Each padded row's real tokens without CLS (float64): the divisor of compute_score's ColBERT score."""
    return attention_mask[:, 1:].sum(-1).astype(np.float64)


def lexical_matching_score(lexical_weights_1, lexical_weights_2):
    """BGEM3FlagModel.compute_lexical_matching_score: the sparse dot product of two dicts (an int 0 when they
    share no token), or the matrix of it for two lists; None for anything else."""
    def one(a: dict, b: dict):
        score = 0
        for token, weight in a.items():
            if token in b:
                score += weight * b[token]
        return score

    if isinstance(lexical_weights_1, dict) and isinstance(lexical_weights_2, dict):
        return one(lexical_weights_1, lexical_weights_2)
    if isinstance(lexical_weights_1, list) and isinstance(lexical_weights_2, list):
        return np.array([[one(a, b) for b in lexical_weights_2] for a in lexical_weights_1])
    return None


def sparse_dot(a: dict, b: dict) -> float:
    """The sparse score of one pair as BGEM3FlagModel.compute_score sums it (float)."""
    return float(sum(float(w) * float(b[t]) for t, w in a.items() if t in b))


def colbert_score(q: np.ndarray, p: np.ndarray) -> float:
    """(1/n_q) * sum_i max_j <q_i, p_j> of two (n, dim) float32 arrays."""
    return float((q @ p.T).max(axis=1).sum() / q.shape[0])


def padded_colbert_scores(q_vecs: np.ndarray, q_counts: np.ndarray, p_vecs: np.ndarray) -> np.ndarray:
    """BGEM3FlagModel.compute_score's ColBERT scores of pair i = (q_vecs[i], p_vecs[i]) on the padded batches
    (CLS dropped, padded positions zero): a passage padded in its batch lets a query token count max(..., 0);
    the sum is divided by the query's own token count ``q_counts[i]``."""
    return np.array([(q_vecs[i] @ p_vecs[i].T).max(axis=1).sum() / q_counts[i] for i in range(len(q_vecs))])


def m3_scores(dense: np.ndarray, sparse: np.ndarray, colbert: np.ndarray, weights) -> dict[str, list[float]]:
    """The five scores of BGEM3FlagModel.compute_score from the three per-pair scores; ``weights`` are the
    (dense, sparse, colbert) weights of the combinations."""
    w = weights
    return {
        "colbert": colbert.tolist(),
        "sparse": sparse.tolist(),
        "dense": dense.tolist(),
        "sparse+dense": ((sparse * w[1] + dense * w[0]) / (w[1] + w[0])).tolist(),
        "colbert+sparse+dense": ((colbert * w[2] + sparse * w[1] + dense * w[0]) / sum(w)).tolist(),
    }


# --- rerankers ------------------------------------------------------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    """FlagReranker's ``normalize=True``, in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
