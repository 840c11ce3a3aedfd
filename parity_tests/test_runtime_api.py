"""runtimes.load(bundle) behaves like FlagEmbedding's FlagModel: options, shapes, order, instructions."""
from __future__ import annotations

import numpy as np
import pytest

import runtimes
from bge_export.parity_run import parity_texts, quiet_stderr

TEXTS = ["short", "a somewhat longer sentence about volcanoes and lava", "", "我喜欢喝茶 🍵", "x " * 600]


@pytest.fixture(scope="module")
def tiny(bundle):
    return bundle("tiny-bert", "ort-cpu")


def _flag(tiny, **kw):
    from FlagEmbedding import FlagModel

    return FlagModel(tiny.manifest.data["source"]["checkpoint"], use_fp16=False, devices="cpu", **kw)


def _close(a, b):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [
    {},
    {"truncate_dim": 8},
    {"normalize_embeddings": False},
    {"normalize_embeddings": False, "truncate_dim": 5},
])
def test_options_match_flagmodel(tiny, options):
    ref = _flag(tiny, **options)
    model = runtimes.load(tiny.bundle, **options)
    with quiet_stderr():
        want = ref.encode(TEXTS)
    got = model.encode(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    _close(got, want)


def test_query_instruction_and_format_match_flagmodel(tiny):
    opts = {"query_instruction_for_retrieval": "Search:", "query_instruction_format": "<i>{}\\n<q>{}"}
    ref, model = _flag(tiny, **opts), runtimes.load(tiny.bundle, **opts)
    queries = parity_texts()["queries"][:7]
    with quiet_stderr():
        want_q, want_c = ref.encode_queries(queries), ref.encode_corpus(queries)
    _close(model.encode_queries(queries), want_q)
    _close(model.encode_corpus(queries), want_c)
    assert np.abs(want_q - want_c).max() > 1e-3  # the instruction really changes the query side


def test_max_length_matches_flagmodel(tiny):
    ref, model = _flag(tiny), runtimes.load(tiny.bundle)
    with quiet_stderr():
        want = ref.encode(TEXTS, max_length=8)
    _close(model.encode(TEXTS, max_length=8), want)
    model.max_length = 8
    _close(model.encode(TEXTS), want)


def test_single_string_gives_a_vector(tiny):
    model = runtimes.load(tiny.bundle)
    v = model.encode("hello world")
    assert v.shape == (model.hidden_size,) and v.dtype == np.float32
    _close(v, model.encode(["hello world"])[0])


def test_input_order_kept_and_batch_invariant(tiny):
    """Length-sorted batching must hand results back in input order, equal to one-at-a-time encoding."""
    model = runtimes.load(tiny.bundle)
    texts = parity_texts()["edge_cases"] + parity_texts()["queries"][:10]
    one_by_one = np.stack([model.encode(t) for t in texts])
    for bs in (1, 3, 256):
        _close(model.encode(texts, batch_size=bs), one_by_one)


def test_xlmr_bundle_has_no_token_type_ids(bundle):
    res = bundle("tiny-xlmr", "ort-cpu")
    assert [i["name"] for i in res.manifest.io["inputs"]] == ["input_ids", "attention_mask"]


def test_position_limit_is_the_default_cap(bundle):
    """A checkpoint with 128 positions defaults to max_length 128 and refuses more."""
    model = runtimes.load(bundle("bert-48h3-l3-pos128", "ort-cpu").bundle)
    assert model.max_length == 128
    with pytest.raises(runtimes.InputError, match=r"2\.\.128"):
        model.encode("x", max_length=512)
