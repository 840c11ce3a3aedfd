"""runtimes.load(decoder bundle) behaves like FlagEmbedding's decoder classes: FlagLLMReranker,
LayerWiseFlagLLMReranker, LightWeightFlagLLMReranker, FlagLLMModel, FlagICLModel (return shapes, options,
cutoff / compression variants, and clear errors for what a bundle was not built for)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import runtimes
from bge_export import reference
from bge_export.families import compressed_reranker, layerwise_reranker, llm_embedder
from bge_export.parity_run import parity_texts, quiet_stderr
from runtimes.errors import IncompatibleBundleError, InputError

T = parity_texts()
PAIRS = [[q, T["corpus"][i * 9]] for i, q in enumerate(T["queries"][:6])] + [["", "empty query"], ["emoji 🙂", ""],
                                                                           [T["edge_cases"][10], T["edge_cases"][11]]]
TEXTS = T["queries"][:5] + ["", "emoji 🙂 and 中文", T["edge_cases"][11]]


def _path(res):
    return res.manifest.data["source"]["checkpoint"]


def _close(got, want, rel=1e-4):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    spread = max(float(want.max() - want.min()), 1e-6)
    assert np.abs(got - want).max() <= rel * spread + 1e-6, (np.abs(got - want).max(), spread)


# --- FlagLLMReranker ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, call", [
    ({}, {}),
    ({"normalize": True}, {}),
    ({}, {"max_length": 24}),
    ({}, {"prompt": "Is B relevant to A? Answer Yes or No."}),
    ({"query_max_length": 6}, {}),
    ({"query_instruction_for_rerank": "Q: ", "passage_instruction_for_rerank": None}, {}),
])
def test_llm_reranker_matches_flagllmreranker(bundle, options, call):
    res = bundle("tiny-llm-reranker", "ort-cpu")
    ref, model = reference.flag("FlagLLMReranker", _path(res), **options), runtimes.load(res.bundle, **options)
    with quiet_stderr():
        want = ref.compute_score(PAIRS, **call)
    got = model.compute_score(PAIRS, **call)
    assert isinstance(got, list) and all(isinstance(x, float) for x in got)
    _close(got, want)


def test_llm_reranker_single_pair_is_a_list_of_one(bundle):
    model = runtimes.load(bundle("tiny-llm-reranker", "ort-cpu").bundle)
    got = model.compute_score(("what is a volcano", "A volcano is an opening in the crust."))
    assert isinstance(got, list) and len(got) == 1


def test_llm_reranker_graph_has_no_vocabulary_output(bundle):
    """The graph dots one row of the LM head: no (B, L, V) logits anywhere in its outputs or value shapes."""
    res = bundle("tiny-llm-reranker", "onnx")
    assert [o["name"] for o in res.manifest.io["outputs"]] == ["score"]
    import onnx

    g = onnx.load(str(res.bundle / "model.onnx")).graph
    vocab = res.manifest.data["model"]["vocab_size"]
    assert sum(1 for i in g.initializer if vocab in i.dims) == 1  # the embedding table, no separate LM head
    shapes = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(g.output) + list(g.value_info)]
    assert not any(s and s[-1] == vocab for s in shapes)


# --- LayerWiseFlagLLMReranker -------------------------------------------------------------------------------

def test_layerwise_scores_per_cutoff_and_subsets(bundle):
    res = bundle("tiny-layerwise", "ort-cpu")
    ref, model = layerwise_reranker.layerwise_reference(_path(res)), runtimes.load(res.bundle)
    with quiet_stderr():
        want_all = ref.compute_score(PAIRS, cutoff_layers=[2, 3, 4])
        want_one = ref.compute_score(PAIRS, cutoff_layers=[3])
    got_all = model.compute_score(PAIRS)  # the bundle's cutoffs
    assert isinstance(got_all, list) and len(got_all) == 3 and len(got_all[0]) == len(PAIRS)
    _close(got_all, want_all)
    got_one = model.compute_score(PAIRS, cutoff_layers=[3])  # a subset: one flat list, as FlagEmbedding
    assert isinstance(got_one[0], float)
    _close(got_one, want_one)
    _close(model.compute_score(PAIRS, cutoff_layers=[2, 4]), [want_all[0], want_all[2]])


def test_layerwise_refuses_what_the_bundle_was_not_built_for(bundle):
    model = runtimes.load(bundle("tiny-layerwise", "ort-cpu").bundle)
    with pytest.raises(IncompatibleBundleError, match=r"built for cutoff layers \[2, 3, 4\].*--cutoff-layers"):
        model.compute_score(PAIRS, cutoff_layers=[1])
    with pytest.raises(InputError, match="ascending order"):
        model.compute_score(PAIRS, cutoff_layers=[4, 2])
    with pytest.raises(InputError, match="cutoff_layers must be"):
        model.compute_score(PAIRS, cutoff_layers="2")


# --- LightWeightFlagLLMReranker -----------------------------------------------------------------------------

def test_lightweight_matches_with_the_bundles_compression(bundle):
    res = bundle("tiny-lightweight", "ort-cpu")
    ref, model = compressed_reranker.lightweight_reference(_path(res)), runtimes.load(res.bundle)
    settings = {"cutoff_layers": [2, 4], "compress_ratio": 2, "compress_layers": [2, 3]}
    with quiet_stderr():
        want = ref.compute_score(PAIRS, **settings)
        want_first = ref.compute_score(PAIRS, cutoff_layers=[2], compress_ratio=2, compress_layers=[2, 3])
    _close(model.compute_score(PAIRS), want)  # None = the bundle's settings
    _close(model.compute_score(PAIRS, **settings), want)
    _close(model.compute_score(PAIRS, cutoff_layers=[2]), want_first)  # a leading subset keeps the heads
    assert model.tokenizer.padding_side == "right"


def test_lightweight_refuses_other_compression_and_left_padding(bundle):
    model = runtimes.load(bundle("tiny-lightweight", "ort-cpu").bundle)
    with pytest.raises(IncompatibleBundleError, match="compress_ratio=2.*--compress-ratio 3"):
        model.compute_score(PAIRS, compress_ratio=3)
    with pytest.raises(IncompatibleBundleError, match="compression before layers"):
        model.compute_score(PAIRS, compress_layers=[1])
    with pytest.raises(IncompatibleBundleError, match="leading part"):
        model.compute_score(PAIRS, cutoff_layers=[4])  # FlagEmbedding would score layer 4 with head 0
    model.tokenizer.padding_side = "left"
    with pytest.raises(InputError, match="right padding"):
        model.compute_score(PAIRS)


def test_reranker_prompt_too_long_for_the_position_limit(bundle):
    res = bundle("tiny-layerwise", "ort-cpu")
    model = runtimes.load(res.bundle)
    limit = res.manifest.data["profiles"]["sequence"]["max"]
    with pytest.raises(InputError, match="position limit"):
        model.compute_score(PAIRS[:2], prompt="Yes or No? " * limit, max_length=limit)


# --- FlagLLMModel / FlagICLModel ----------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"query_instruction_for_retrieval": "Find passages."},
                                     {"query_instruction_for_retrieval": "Find.", "query_instruction_format": "{}: {}"},
                                     {"truncate_dim": 16}, {"normalize_embeddings": False}])
def test_llm_embedder_matches_flagllmmodel(bundle, options):
    res = bundle("tiny-gemma2-embedder", "ort-cpu")
    ref = llm_embedder.llm_embedder_reference(_path(res), **options)
    model = runtimes.load(res.bundle, **options)
    with quiet_stderr():
        q, c = ref.encode_queries(TEXTS), ref.encode_corpus(TEXTS)
    gq, gc = model.encode_queries(TEXTS), model.encode_corpus(TEXTS)
    assert gq.dtype == np.float32 and gq.shape == q.shape
    np.testing.assert_allclose(gq, q, atol=1e-4)
    np.testing.assert_allclose(gc, c, atol=1e-4)
    assert model.encode("one string").shape == (q.shape[1],)


def test_icl_embedder_examples_and_round_trip(bundle):
    res = bundle("tiny-icl", "ort-cpu")
    examples = [{"instruct": "Retrieve answers.", "query": "what is a volcano", "response": "An opening in the crust."}]
    opts = {"query_instruction_for_retrieval": "Retrieve answers.", "examples_for_task": examples}
    ref, model = llm_embedder.icl_embedder_reference(_path(res), **opts), runtimes.load(res.bundle, **opts)
    with quiet_stderr():
        want = ref.encode_queries(TEXTS, max_length=24)  # short: the truncation + decode round trip matters
        want_c = ref.encode_corpus(TEXTS)
    np.testing.assert_allclose(model.encode_queries(TEXTS, max_length=24), want, atol=1e-4)
    np.testing.assert_allclose(model.encode_corpus(TEXTS), want_c, atol=1e-4)
    model.set_examples(None)  # keeps the examples, as FlagICLModel
    np.testing.assert_allclose(model.encode_queries(TEXTS, max_length=24), want, atol=1e-4)


def test_icl_examples_too_long_for_the_position_limit(bundle):
    res = bundle("tiny-icl", "ort-cpu")
    limit = res.manifest.data["profiles"]["sequence"]["max"]
    model = runtimes.load(res.bundle)
    model.set_examples([{"instruct": "x", "query": "long " * limit, "response": "y"}])
    with pytest.raises(InputError, match="in-context examples take"):
        model.encode_queries(["q"])
    with pytest.raises(InputError, match="examples_for_task"):
        model.set_examples("not a list")


def test_llm_embedder_is_not_a_reranker(bundle):
    model = runtimes.load(bundle("tiny-gemma2-embedder", "ort-cpu").bundle)
    with pytest.raises(IncompatibleBundleError, match="FlagLLMModel"):
        model.compute_score(PAIRS)
    with pytest.raises(IncompatibleBundleError, match="FlagICLModel"):
        model.set_examples([])


# --- export-time bad input ----------------------------------------------------------------------------------

def test_bad_decoder_variants_are_clear_errors(checkpoint_dir, tmp_path, capsys):
    from bge_export.cli import main

    lw = str(checkpoint_dir("tiny-layerwise"))
    cases = [
        (["--model", lw, "--cutoff-layers", "1,9"], "outside this model's scoring layers 2..4"),
        (["--model", lw, "--cutoff-layers", "a,b"], "separated by commas (e.g. 28,40)"),
        (["--model", lw, "--compress-ratio", "2"], "has no option(s) ['compress_ratio']"),
        (["--model", str(checkpoint_dir("tiny-lightweight")), "--compress-ratio", "0"], "positive int"),
        (["--model", str(checkpoint_dir("tiny-lightweight")), "--cutoff-layers", "1"], "not scoring layers"),
        (["--model", str(checkpoint_dir("tiny-gemma2-embedder")), "--export-dtype", "fp16", "--target",
          "ort-cpu-int8"], "quantizes an fp32 graph"),
    ]
    for argv, needle in cases:
        out = tmp_path / "out"
        rc = main(argv + ["--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, (argv, err)
        assert not out.exists()


@pytest.mark.parametrize("case, field", [("tiny-layerwise", "scale_emb"), ("tiny-lightweight", "start_layer")])
def test_checkpoint_missing_custom_config_fields(checkpoint_dir, tmp_path, capsys, case, field):
    from bge_export.cli import main

    src = checkpoint_dir(case)
    broken = tmp_path / src.name
    shutil.copytree(src, broken)
    cfg = json.loads((broken / "config.json").read_text())
    del cfg[field]
    (broken / "config.json").write_text(json.dumps(cfg))
    rc = main(["--model", str(broken), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and field in err and "restore" in err and "Traceback" not in err, err
