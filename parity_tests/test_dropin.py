"""`from runtimes import FlagModel, ...`: FlagEmbedding's README quick-start code runs against bundles with only the
import line and the path changed, and gives FlagEmbedding's results."""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import runtimes
from runtimes.options import LOADS_HALF_ON_CPU, BundleRunsWarning

# FlagEmbedding's README quick-start snippets (1.4.2), verbatim but for the model path, which is PATH here
QUICKSTART = {
    "FlagModel": '''
sentences_1 = ["样例数据-1", "样例数据-2"]
sentences_2 = ["样例数据-3", "样例数据-4"]
model = FlagModel(PATH,
                  query_instruction_for_retrieval="为这个句子生成表示以用于检索相关文章：",
                  use_fp16=True) # Setting use_fp16 to True speeds up computation with a slight performance degradation
embeddings_1 = model.encode(sentences_1)
embeddings_2 = model.encode(sentences_2)
similarity = embeddings_1 @ embeddings_2.T

queries = ['query_1', 'query_2']
passages = ["样例文档-1", "样例文档-2"]
q_embeddings = model.encode_queries(queries)
p_embeddings = model.encode(passages)
scores = q_embeddings @ p_embeddings.T
''',
    "FlagReranker": '''
reranker = FlagReranker(PATH, use_fp16=True) # Setting use_fp16 to True speeds up computation with a slight performance degradation
score = reranker.compute_score(['query', 'passage'])
score_normalized = reranker.compute_score(['query', 'passage'], normalize=True)
scores = reranker.compute_score([['what is panda?', 'hi'], ['what is panda?', 'The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, is a bear species endemic to China.']])
scores_normalized = reranker.compute_score([['what is panda?', 'hi'], ['what is panda?', 'The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, is a bear species endemic to China.']], normalize=True)
''',
    "BGEM3FlagModel": '''
model = BGEM3FlagModel(PATH, use_fp16=True) # Setting use_fp16 to True speeds up computation with a slight performance degradation
sentences_1 = ["What is BGE M3?", "Defination of BM25"]
sentences_2 = ["BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
               "BM25 is a bag-of-words retrieval function that ranks a set of documents based on the query terms appearing in each document"]
embeddings_1 = model.encode(sentences_1, batch_size=12, max_length=8192)['dense_vecs']
embeddings_2 = model.encode(sentences_2)['dense_vecs']
similarity = embeddings_1 @ embeddings_2.T

output_1 = model.encode(sentences_1, return_dense=True, return_sparse=True, return_colbert_vecs=False)
output_2 = model.encode(sentences_2, return_dense=True, return_sparse=True, return_colbert_vecs=False)
lexical_scores = model.compute_lexical_matching_score(output_1['lexical_weights'][0], output_2['lexical_weights'][0])
tokens = model.convert_id_to_token(output_1['lexical_weights'])

output_1 = model.encode(sentences_1, return_dense=True, return_sparse=True, return_colbert_vecs=True)
output_2 = model.encode(sentences_2, return_dense=True, return_sparse=True, return_colbert_vecs=True)
colbert = model.colbert_score(output_1['colbert_vecs'][0], output_2['colbert_vecs'][0])

sentence_pairs = [[i,j] for i in sentences_1 for j in sentences_2]
all_scores = model.compute_score(sentence_pairs, max_passage_length=128, weights_for_different_modes=[0.4, 0.2, 0.4])
''',
}
RESULTS = {"FlagModel": ("similarity", "scores"),
           "FlagReranker": ("score", "score_normalized", "scores", "scores_normalized"),
           "BGEM3FlagModel": ("similarity", "lexical_scores", "tokens", "colbert", "all_scores")}


def run_snippet(api: str, module: str, path, use_fp16: bool = True) -> dict:
    namespace = {"PATH": str(path)}
    code = QUICKSTART[api] if use_fp16 else QUICKSTART[api].replace("use_fp16=True", "use_fp16=False")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(f"from {module} import {api}\n" + code, namespace)  # noqa: S102 - the users' code
    namespace["_warnings"] = [w for w in caught if issubclass(w.category, BundleRunsWarning)]
    return namespace


def _same(a, b, path="", rel: float = 1e-4) -> None:
    """Equal structure and types; floats within ``rel`` of max(1, |values|) (fp32 parity by default)."""
    if hasattr(a, "item") and getattr(a, "ndim", 1) == 0:  # FlagEmbedding's torch scalar (colbert_score)
        a = a.item()
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}", rel)
    elif isinstance(a, (list, tuple)) and not isinstance(a, str):
        assert type(b) is type(a) and len(a) == len(b), (path, type(a), type(b))
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, str):
        assert a == b, path
    else:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert x.shape == y.shape, path
        np.testing.assert_allclose(y, x, atol=rel * max(1.0, float(np.abs(x).max())), err_msg=path)


@pytest.fixture(scope="module")
def m3_8194(tmp_path_factory):
    """bge-m3's 8194 positions, so that the quick-start's max_length=8192 is valid as on the real model."""
    from bge_export.compile import compile_bundle
    from parity_tests import checkpoints as ck

    d = tmp_path_factory.mktemp("m3-8194")
    ckpt = ck.tiny_m3(d / "bge-m3", max_positions=8194, seed=7)
    return compile_bundle(ckpt, "ort-cpu", d / "bundle", parity=False, quiet=True)


@pytest.mark.parametrize("api, case", [("FlagModel", "tiny-bert"), ("FlagReranker", "tiny-reranker-xlmr"),
                                       ("BGEM3FlagModel", None)])
def test_quickstart_runs_with_only_the_import_changed(bundle, m3_8194, api, case):
    built = m3_8194 if case is None else bundle(case, "ort-cpu")
    ckpt = built.manifest.data["source"]["checkpoint"]
    ours = run_snippet(api, "runtimes", built.bundle)
    # FlagEmbedding verbatim. On CPU its rerankers switch use_fp16 off, so they match at fp32 parity; its embedders
    # load the weights in fp16 and compute in fp32 from those rounded weights, which moves cosines by ~1e-3
    verbatim = run_snippet(api, "FlagEmbedding", ckpt)
    rounds = api in LOADS_HALF_ON_CPU
    for name in RESULTS[api]:
        _same(verbatim[name], ours[name], name, rel=5e-3 if rounds else 1e-4)
    if rounds:  # the same code with use_fp16=False (fp32 weights too) matches at fp32 parity
        exact = run_snippet(api, "FlagEmbedding", ckpt, use_fp16=False)
        for name in RESULTS[api]:
            _same(exact[name], ours[name], name)
    # use_fp16=True on a CPU bundle: accepted, with one warning that says what the bundle runs
    assert len(ours["_warnings"]) == 1
    message = str(ours["_warnings"][0].message)
    assert "ignoring use_fp16=True (FlagEmbedding computes in fp32 on CPU" in message, message
    assert "this bundle runs fp32 on CPU (target ort-cpu" in message, message
    assert ("from weights it loaded in fp16" in message) == rounds, message
    assert isinstance(ours["model" if api != "FlagReranker" else "reranker"], getattr(runtimes, api))


def test_single_flat_pair_gives_what_flagreranker_gives(bundle):
    ours = run_snippet("FlagReranker", "runtimes", bundle("tiny-reranker-xlmr", "ort-cpu").bundle)
    assert isinstance(ours["score"], list) and len(ours["score"]) == 1 and 0 < ours["score_normalized"][0] < 1


def test_auto_classes_pick_the_bundles_class(bundle):
    from FlagEmbedding import FlagAutoModel as RefAuto, FlagAutoReranker as RefAutoReranker

    enc = bundle("tiny-bert", "ort-cpu")  # its checkpoint folder is named bge-small-en-v1.5, as FlagAuto needs
    model = runtimes.FlagAutoModel.from_finetuned(str(enc.bundle), query_instruction_for_retrieval="q: ")
    assert type(model) is runtimes.FlagModel
    ref = RefAuto.from_finetuned(enc.manifest.data["source"]["checkpoint"], query_instruction_for_retrieval="q: ",
                                 use_fp16=False, devices="cpu")
    _same(ref.encode_queries(["what is a panda?"]), model.encode_queries(["what is a panda?"]))
    rr = bundle("tiny-reranker-xlmr", "ort-cpu")
    reranker = runtimes.FlagAutoReranker.from_finetuned(str(rr.bundle), model_class="encoder-only-base")
    assert type(reranker) is runtimes.FlagReranker
    ref_rr = RefAutoReranker.from_finetuned(rr.manifest.data["source"]["checkpoint"], devices="cpu")
    _same(ref_rr.compute_score([["a", "b"], ["c", "d"]]), reranker.compute_score([["a", "b"], ["c", "d"]]))
    with pytest.raises(runtimes.InputError, match="model_class='encoder-only-m3' picks BGEM3FlagModel"):
        runtimes.FlagAutoModel.from_finetuned(str(enc.bundle), model_class="encoder-only-m3")
    with pytest.raises(runtimes.IncompatibleBundleError, match="serves FlagEmbedding's FlagReranker API"):
        runtimes.FlagAutoModel.from_finetuned(str(rr.bundle))


def test_signatures_are_flagembeddings():
    import FlagEmbedding

    for api in runtimes.RUNTIME_APIS:
        want = inspect.signature(getattr(FlagEmbedding, api).__init__).parameters
        got = inspect.signature(getattr(runtimes, api).__init__).parameters
        assert [(p.name, p.default) for p in got.values()] == [(p.name, p.default) for p in want.values()], api
    for name in ("FlagAutoModel", "FlagAutoReranker"):
        want = inspect.signature(getattr(FlagEmbedding, name).from_finetuned).parameters
        got = inspect.signature(getattr(runtimes, name).from_finetuned).parameters
        assert [(p.name, p.default) for p in got.values()] == [(p.name, p.default) for p in want.values()], name


def test_options_that_contradict_the_bundle_raise(bundle):
    enc = bundle("tiny-bert", "ort-cpu").bundle
    with pytest.raises(runtimes.IncompatibleBundleError, match=r"serves FlagEmbedding's FlagModel API .*"
                                                               r"`from runtimes import FlagModel`"):
        runtimes.FlagReranker(str(enc))
    with pytest.raises(runtimes.InputError, match=r"pooling_method='mean' \(the bundle pools with 'cls'; rebuild "
                                                  r"with --pooling mean\).*runs fp32 on CPU \(target ort-cpu"):
        runtimes.FlagModel(str(enc), pooling_method="mean")
    with pytest.raises(runtimes.InputError, match=r"devices=\['cuda:0', 'cuda:1'\] \(build --target ort-cuda"):
        runtimes.FlagModel(str(enc), devices=["cuda:0", "cuda:1"])
    with pytest.raises(runtimes.InputError, match=r"devices='cuda:x': a bundle runs on 'cpu' or CUDA devices"):
        runtimes.FlagModel(str(enc), devices="cuda:x")
    with pytest.raises(runtimes.InputError, match=r"peft_path='lora/' \(merge the adapter"):
        runtimes.FlagModel(str(enc), peft_path="lora/")
    with pytest.raises(runtimes.InputError, match=r"FlagModel\(\): .*unexpected keyword argument 'bogus'"):
        runtimes.FlagModel(str(enc), bogus=1)
    # an fp16 bundle: use_fp16=False asks for fp32, which it does not run
    half = bundle("tiny-xlmr", "onnx-fp16").bundle
    with pytest.raises(runtimes.InputError, match=r"use_fp16=False asks for fp32 .* this bundle runs fp16 on CPU "
                                                  r"\(target onnx-fp16"):
        runtimes.FlagModel(str(half), use_fp16=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtimes.FlagModel(str(half), use_fp16=True)  # what it runs: no warning


def test_inert_options_warn_once_and_change_nothing(bundle):
    enc = bundle("tiny-bert", "ort-cpu").bundle
    with pytest.warns(BundleRunsWarning) as record:
        model = runtimes.FlagModel(str(enc), use_fp16=True, devices="cpu", trust_remote_code=True,
                                   cache_dir="/tmp/hf", pooling_method="cls")
    assert len(record) == 1
    message = str(record[0].message)
    for part in ("devices='cpu'", "trust_remote_code=True", "cache_dir='/tmp/hf'", "use_fp16=True",
                 "this bundle runs fp32 on CPU (target ort-cpu"):
        assert part in message, message
    plain = runtimes.load(enc)
    np.testing.assert_array_equal(model.encode(["a b c", "d"]), plain.encode(["a b c", "d"]))
