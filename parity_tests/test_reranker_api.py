"""runtimes.load(reranker bundle) behaves like FlagEmbedding's FlagReranker."""
from __future__ import annotations

import numpy as np
import pytest

import runtimes
from bge_export.parity_run import parity_texts, quiet_stderr

T = parity_texts()
PAIRS = [[q, T["corpus"][i * 9]] for i, q in enumerate(T["queries"][:6])] + [["", "empty query"], ["emoji 🙂", ""],
                                                                           [T["edge_cases"][10], T["edge_cases"][11]]]


@pytest.fixture(scope="module")
def rr(bundle):
    return bundle("tiny-reranker-xlmr", "ort-cpu")


def _flag(rr, **kw):
    from FlagEmbedding import FlagReranker

    return FlagReranker(rr.manifest.data["source"]["checkpoint"], use_fp16=False, devices="cpu", **kw)


@pytest.mark.parametrize("options, call", [
    ({}, {}),
    ({"normalize": True}, {}),
    ({}, {"normalize": True}),
    ({}, {"max_length": 24}),
    ({"query_max_length": 6}, {}),
    ({}, {"max_length": 40, "query_max_length": 10}),
    ({"query_instruction_for_rerank": "Q: ", "passage_instruction_for_rerank": "P: "}, {}),
    ({"passage_instruction_for_rerank": "P: ", "passage_instruction_format": "{}\\n{}"}, {}),
])
def test_compute_score_matches_flagreranker(rr, options, call):
    ref, model = _flag(rr, **options), runtimes.load(rr.bundle, **options)
    with quiet_stderr():
        want = ref.compute_score(PAIRS, **call)
    got = model.compute_score(PAIRS, **call)
    assert isinstance(got, list) and all(isinstance(x, float) for x in got) and len(got) == len(PAIRS)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_single_pair_gives_a_list_of_one(rr):
    ref, model = _flag(rr), runtimes.load(rr.bundle)
    with quiet_stderr():
        want = ref.compute_score(("what is a volcano", "A volcano is an opening in the crust."))
    got = model.compute_score(("what is a volcano", "A volcano is an opening in the crust."))
    assert isinstance(got, list) and len(got) == 1 and len(want) == 1
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("bad, needle", [
    ("just a string", "pair"),
    ([], "is empty"),
    (None, "pair"),
    ([["a", "b", "c"]], "sentences_pairs[0]".replace("sentences", "sentence")),
    ([["a", 3]], "both query and passage must be str"),
    ([("a", "b"), "c"], "sentence_pairs[1]"),
])
def test_bad_pairs(rr, bad, needle):
    model = runtimes.load(rr.bundle)
    with pytest.raises(runtimes.InputError) as e:
        model.compute_score(bad)
    assert needle in str(e.value)


def test_wrong_api_says_what_the_bundle_is(rr, bundle):
    reranker = runtimes.load(rr.bundle)
    with pytest.raises(runtimes.IncompatibleBundleError, match="cross-encoder bundle with the FlagReranker API"):
        reranker.encode(["hello"])
    embedder = runtimes.load(bundle("tiny-bert", "onnx").bundle)
    with pytest.raises(runtimes.IncompatibleBundleError, match="belongs to FlagEmbedding's FlagReranker API"):
        embedder.compute_score([["q", "p"]])
    with pytest.raises(AttributeError):
        reranker.no_such_method()
