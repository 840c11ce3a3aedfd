"""runtimes.postprocess (the math after the engine) and the runtime classes' declared FlagEmbedding methods."""
import numpy as np

from runtimes import RUNTIME_APIS, runtime_class
from runtimes.postprocess import (colbert_score, colbert_token_counts, finish_embeddings, lexical_matching_score,
                                  lexical_weights, m3_scores, padded_colbert_scores, sigmoid, sparse_dot, trim_colbert)
from runtimes.service import method_apis


def test_lexical_weights_keep_the_max_of_repeats_and_drop_unused_ids():
    got = lexical_weights(np.array([0.5, 0.2, 0.9, -1.0, 0.3], dtype=np.float32), [0, 7, 7, 8, 2], {0, 2})
    assert dict(got) == {"7": np.float32(0.9)}
    assert lexical_matching_score({"7": 2.0, "9": 1.0}, {"7": 0.5}) == 1.0
    assert lexical_matching_score({}, {"5": 1.0}) == 0 and lexical_matching_score({}, [1]) is None
    assert lexical_matching_score([{"1": 1.0}], [{"1": 2.0}, {}]).tolist() == [[2.0, 0]]
    assert sparse_dot({"1": 2.0, "3": 1.0}, {"1": 0.25}) == 0.5


def test_embeddings_truncate_then_normalise():
    out = finish_embeddings(np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 5.0]]), truncate_dim=2, normalize=True)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_colbert_scores():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    p = np.array([[-1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    assert colbert_score(q, p) == 0.0  # each query token's best: 0 from the other axis
    assert trim_colbert(np.arange(6).reshape(3, 2)).tolist() == [[2, 3], [4, 5]]
    assert trim_colbert(np.zeros((4, 3, 2))).shape == (4, 2, 2)
    # a padded passage row (zeros) lets a query token count max(..., 0), as FlagEmbedding's compute_score does
    p_padded = np.array([[[-1.0, -1.0], [0.0, 0.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 1, 0]])
    assert colbert_token_counts(mask).tolist() == [2.0]
    assert padded_colbert_scores(q[None], colbert_token_counts(mask[:, :3]), p_padded).tolist() == [0.0]


def test_m3_combinations_and_sigmoid():
    s = m3_scores(np.array([0.5]), np.array([0.25]), np.array([1.0]), [1.0, 1.0, 2.0])
    assert s == {"colbert": [1.0], "sparse": [0.25], "dense": [0.5], "sparse+dense": [0.375],
                 "colbert+sparse+dense": [0.6875]}
    assert sigmoid(np.array([0.0])).tolist() == [0.5] and sigmoid([0.0]).dtype == np.float64


def test_method_table_is_derived_from_the_runtime_classes():
    assert method_apis() == {
        "encode": "FlagModel", "encode_queries": "FlagModel", "encode_corpus": "FlagModel",
        "compute_score": "FlagReranker", "compute_lexical_matching_score": "BGEM3FlagModel",
        "colbert_score": "BGEM3FlagModel", "convert_id_to_token": "BGEM3FlagModel", "set_examples": "FlagICLModel",
    }
    for api in RUNTIME_APIS:
        cls = runtime_class(api)
        assert cls.api_methods and all(callable(getattr(cls, m, None)) for m in cls.api_methods), api
