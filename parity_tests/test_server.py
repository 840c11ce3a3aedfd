"""`bge-export serve` as users run it: one subprocess serving a bundle of every family on a free loopback port,
answered by real clients (openai, huggingface_hub, httpx). Every response equals the in-process runtime's result
for the same inputs and options, bit for bit (one request at a time: the server then batches a request exactly as
runtimes.load batches the call). Limits, errors, metrics, the API key and SIGTERM are checked on small servers."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import signal
import threading
import time

import numpy as np
import pytest

import runtimes
from bge_export.parity_run import parity_texts
from parity_tests.live_server import LiveServer

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

T = parity_texts()
TEXTS = T["queries"][:5] + ["emoji 🙂 and 中文", T["edge_cases"][11], "a"]
QUERY = T["queries"][0]
DOCS = [T["corpus"][i * 7] for i in range(6)] + ["", "🙂"]
INSTRUCTION = "Represent this sentence for searching relevant passages: "
EXAMPLES = [{"instruct": "Given a question, retrieve passages", "query": "what is rain", "response": "Water falling."}]

# served name -> (test case, runtime options given with --option)
SERVED = {
    "encoder": ("tiny-bert", {"query_instruction_for_retrieval": INSTRUCTION}),
    "m3": ("tiny-m3", {}),
    "reranker": ("tiny-reranker-xlmr", {}),
    "llm-reranker": ("tiny-llm-reranker", {}),
    "layerwise": ("tiny-layerwise", {}),
    "lightweight": ("tiny-lightweight", {}),
    "llm-embedder": ("tiny-gemma2-embedder", {"query_instruction_for_retrieval": "Given a web search query"}),
    "icl": ("tiny-icl", {"query_instruction_for_retrieval": "Given a question"}),
    "code": ("tiny-qwen2-code", {"query_instruction_for_retrieval": "Given a question, retrieve code"}),
}


@pytest.fixture(scope="module")
def paths(bundle):
    return {name: bundle(case, "ort-cpu").bundle for name, (case, _) in SERVED.items()}


@pytest.fixture(scope="module")
def server(paths):
    args = ["--threads", "1", "--max-client-batch-size", "64", "--auto-truncate"]
    for name, (_, options) in SERVED.items():
        for key, value in options.items():
            args += ["--option", f"{name}:{key}={value}"]
    srv = LiveServer(list(paths.values()), *args, names=list(paths))
    yield srv
    assert srv.stop() == 0, srv.text()[-3000:]


@pytest.fixture(scope="module")
def local(paths):
    cache = {}

    def get(name: str, **extra):
        key = (name, json.dumps(extra, sort_keys=True))
        if key not in cache:
            cache[key] = runtimes.load(paths[name], **SERVED[name][1], **extra)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def post(client, path, body, status=200):
    r = client.post(path, json=body)
    assert r.status_code == status, (r.status_code, r.text[:500])
    if status != 200:
        error = r.json()
        assert set(error) == {"error", "error_type"} and error["error"], error
    return r.json()


def same(got, want):
    """Bit for bit: JSON numbers read as float64 equal the float32 (or float64) results exactly."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.array_equal(got, want), float(np.abs(got - want).max())


# --- embeddings ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["encoder", "m3", "llm-embedder", "icl", "code"])
def test_embed_equals_in_process_encode(client, local, name):
    model = local(name)
    want = model.encode(TEXTS)
    same(post(client, "/embed", {"model": name, "inputs": TEXTS}),
         want["dense_vecs"] if isinstance(want, dict) else want)
    # prompt_name / input_type: the query instruction (encode_queries), the passage side (encode_corpus)
    want_q = model.encode_queries(TEXTS)
    same(post(client, "/embed", {"model": name, "inputs": TEXTS, "prompt_name": "query"}),
         want_q["dense_vecs"] if isinstance(want_q, dict) else want_q)
    want_p = model.encode_corpus(TEXTS[:3])
    same(post(client, "/embed", {"model": name, "inputs": TEXTS[:3], "input_type": "passage"}),
         want_p["dense_vecs"] if isinstance(want_p, dict) else want_p)


def test_a_text_with_no_tokens_is_a_422_where_the_model_cannot_pool_it(client):
    """Qwen's tokenizers add no special tokens: "" has nothing to pool (FlagLLMModel pools a padding token)."""
    error = post(client, "/embed", {"model": "code", "inputs": ["fine", ""]}, status=422)
    assert "no tokens" in error["error"]
    assert len(post(client, "/embed", {"model": "code", "inputs": ["fine"]})) == 1


def test_embed_options_equal_constructor_options(client, local):
    same(post(client, "/embed", {"model": "encoder", "inputs": TEXTS, "dimensions": 8, "normalize": False}),
         local("encoder", truncate_dim=8, normalize_embeddings=False).encode(TEXTS))
    same(post(client, "/embed", {"model": "encoder", "inputs": "one string"}), [local("encoder").encode("one string")])
    # the ICL embedder's in-context examples, per request
    same(post(client, "/embed", {"model": "icl", "inputs": TEXTS[:4], "prompt_name": "query", "examples": EXAMPLES}),
         local("icl", examples_for_task=EXAMPLES).encode_queries(TEXTS[:4]))


def test_openai_client(server, local):
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    res = oc.embeddings.create(model="encoder", input=TEXTS)
    same([d.embedding for d in res.data], local("encoder").encode(TEXTS))
    assert [d.index for d in res.data] == list(range(len(TEXTS)))
    assert res.usage.prompt_tokens == sum(len(e.ids) for e in local("encoder").tokenizer.encode(TEXTS, 512))
    # base64 (the openai package's default when numpy is installed) and dimensions
    raw = oc.embeddings.with_raw_response.create(model="m3", input=TEXTS[:3], encoding_format="base64", dimensions=8)
    got = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw.http_response.json()["data"]]
    same(got, local("m3", truncate_dim=8).encode(TEXTS[:3])["dense_vecs"])
    assert {m.id for m in oc.models.list()} == set(SERVED)


def test_huggingface_hub_client(server, local, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    # the suite runs with HF_HUB_OFFLINE=1 (nothing is downloaded), which also blocks calls to a local server
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    # one model per server for InferenceClient(base_url=...): it posts to POST / without a model name
    one = LiveServer([local("encoder").bundle.path, local("reranker").bundle.path], "--threads", "1",
                     names=["encoder", "reranker"])
    try:
        with pytest.raises(Exception, match="model"):  # two models: POST / needs one named
            hub.InferenceClient(base_url=one.url).feature_extraction("hello")
    finally:
        one.stop()
    solo = LiveServer([local("encoder").bundle.path], "--threads", "1")
    try:
        client = hub.InferenceClient(base_url=solo.url)
        same(client.feature_extraction(TEXTS[1]), [local("encoder").encode(TEXTS[1])])
        sims = client.sentence_similarity(TEXTS[0], other_sentences=TEXTS[1:4])
        vecs = local("encoder").encode(TEXTS[:4])
        same(sims, [float(x) for x in vecs[1:] @ vecs[0]])
    finally:
        assert solo.stop() == 0
    solo = LiveServer([local("reranker").bundle.path], "--threads", "1")
    try:  # a reranker scores sentence similarity as (source, sentence) pairs
        sims = hub.InferenceClient(base_url=solo.url).sentence_similarity(QUERY, other_sentences=DOCS[:4])
        same(sims, local("reranker").compute_score([[QUERY, d] for d in DOCS[:4]], normalize=True))
    finally:
        assert solo.stop() == 0


# --- bge-m3's heads ----------------------------------------------------------------------------------------

def test_m3_sparse_colbert_and_scores(client, local):
    m3 = local("m3")
    want = m3.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    sparse = post(client, "/embed_sparse", {"model": "m3", "inputs": TEXTS})
    for got, w in zip(sparse, want["lexical_weights"]):
        assert [e["index"] for e in got] == sorted(int(k) for k in w)
        same([e["value"] for e in got], [w[str(e["index"])] for e in got])
    for got, w in zip(post(client, "/embed_all", {"model": "m3", "inputs": TEXTS}), want["colbert_vecs"]):
        same(got, w)
    # all three heads in one call, FlagEmbedding's own keywords
    result = post(client, "/v1/flag/encode", {"model": "m3", "sentences": TEXTS, "return_sparse": True,
                                              "return_colbert_vecs": True})["result"]
    same(result["dense_vecs"], want["dense_vecs"])
    assert result["lexical_weights"] == [{k: float(v) for k, v in w.items()} for w in want["lexical_weights"]]
    for got, w in zip(result["colbert_vecs"], want["colbert_vecs"]):
        same(got, w)
    pairs = [[QUERY, d] for d in DOCS[:5]]
    scores = post(client, "/v1/flag/compute_score", {"model": "m3", "sentence_pairs": pairs, "batch_size": 2,
                                                     "weights_for_different_modes": [0.4, 0.2, 0.4]})["result"]
    assert scores == m3.compute_score(pairs, batch_size=2, weights_for_different_modes=[0.4, 0.2, 0.4])
    # heads a model does not have
    assert "sparse" in post(client, "/embed_sparse", {"model": "encoder", "inputs": ["x"]}, 422)["error"]


# --- rerankers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["reranker", "llm-reranker", "layerwise", "lightweight"])
def test_rerank_equals_in_process_compute_score(client, local, name):
    model = local(name)
    pairs = [[QUERY, d] for d in DOCS]
    want = model.compute_score(pairs, normalize=True)
    want = want[-1] if isinstance(want[0], list) else want  # several cutoff layers built: the deepest answers
    got = post(client, "/rerank", {"model": name, "query": QUERY, "texts": DOCS, "return_text": True})
    assert [g["index"] for g in got] == sorted(range(len(DOCS)), key=lambda i: -want[i])
    same([g["score"] for g in got], sorted(want, reverse=True))
    assert all(g["text"] == DOCS[g["index"]] for g in got)
    raw = post(client, "/rerank", {"model": name, "query": QUERY, "texts": DOCS, "raw_scores": True})
    want_raw = model.compute_score(pairs)
    want_raw = want_raw[-1] if isinstance(want_raw[0], list) else want_raw
    same([r["score"] for r in sorted(raw, key=lambda r: r["index"])], want_raw)
    cohere = post(client, "/v1/rerank", {"model": name, "query": QUERY, "documents": DOCS, "top_n": 3,
                                         "return_documents": True})
    assert [r["index"] for r in cohere["results"]] == [g["index"] for g in got[:3]]
    same([r["relevance_score"] for r in cohere["results"]], [g["score"] for g in got[:3]])
    assert all(r["document"] == DOCS[r["index"]] for r in cohere["results"])


def test_llm_reranker_options(client, local):
    pairs = [[QUERY, d] for d in DOCS]
    prompt = "Is B relevant to A? Answer Yes or No."
    got = post(client, "/v1/flag/compute_score", {"model": "llm-reranker", "sentence_pairs": pairs, "prompt": prompt})
    same(got["result"], local("llm-reranker").compute_score(pairs, prompt=prompt))
    lw = local("layerwise")
    layers = lw.built_cutoffs
    got = post(client, "/v1/flag/compute_score", {"model": "layerwise", "sentence_pairs": pairs, "cutoff_layers": layers})
    want = lw.compute_score(pairs, cutoff_layers=layers)
    same(got["result"], want)
    one = post(client, "/rerank", {"model": "layerwise", "query": QUERY, "texts": DOCS, "raw_scores": True,
                                   "cutoff_layers": layers[0]})
    same([r["score"] for r in sorted(one, key=lambda r: r["index"])],
         lw.compute_score(pairs, cutoff_layers=layers[0]))
    error = post(client, "/rerank", {"model": "layerwise", "query": QUERY, "texts": DOCS, "cutoff_layers": [99]}, 422)
    assert "cutoff" in error["error"]
    assert "prompt" in post(client, "/rerank", {"model": "reranker", "query": "q", "texts": ["p"], "prompt": "x"},
                            422)["error"]


# --- tokens, info, routing ------------------------------------------------------------------------------

def test_tokenize_decode_info_health_metrics(client, local):
    tokens = post(client, "/tokenize", {"model": "encoder", "inputs": ["hello world"]})[0]
    ids = [t["id"] for t in tokens]
    assert ids == local("encoder").tokenizer.encode(["hello world"], 512)[0].ids
    assert tokens[0]["special"] and not tokens[1]["special"] and tokens[1]["text"] == "hello world"[
        tokens[1]["start"]:tokens[1]["stop"]]
    assert post(client, "/decode", {"model": "encoder", "ids": ids}) == "hello world"
    assert post(client, "/decode", {"model": "encoder", "ids": []}, 400)["error_type"] == "empty"
    info = client.get("/info", params={"model": "m3"}).json()
    assert info["model_id"] == "m3" and info["api"] == "BGEM3FlagModel" and info["max_client_batch_size"] == 64
    assert set(info["models"]) == set(SERVED)
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/embed", json={"model": "encoder", "inputs": ["timing"]})
    for h in ("x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time", "x-compute-tokens",
              "x-request-id"):
        assert h in r.headers, h
    assert int(r.headers["x-compute-tokens"]) == len(local("encoder").tokenizer.encode(["timing"], 512)[0].ids)
    text = client.get("/metrics").text
    for name in ("te_request_count", "te_request_success", "te_embed_count", "te_queue_size",
                 "te_batch_next_size_bucket", "te_batch_next_tokens_sum", "te_request_duration_count",
                 "te_request_queue_duration_sum", "te_request_inference_duration_sum",
                 "te_request_tokenization_duration_sum"):
        assert f"\n{name}" in text, name
    # several models: the request names one; an unknown one is a 404 that lists them
    assert "encoder" in post(client, "/embed", {"model": "nope", "inputs": ["x"]}, 404)["error"]
    assert "model" in post(client, "/embed", {"inputs": ["x"]}, 404)["error"]
    assert post(client, "/v1/flag/nope", {"model": "encoder", "sentences": ["x"]}, 404)["error_type"] == "not_found"


def test_concurrent_requests_share_batches_and_keep_their_results(client, local, server):
    """Requests sent at once are batched together; each gets its own results (equal to the in-process ones up to
    float rounding from other batch shapes)."""
    model = local("encoder")
    before = _metric(client.get("/metrics").text, 'te_batch_next_size_count{model="encoder"}')
    texts = [T["corpus"][i:i + 3] for i in range(0, 48, 3)]
    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda t: post(client, "/embed", {"model": "encoder", "inputs": t}), texts))
    for got, t in zip(results, texts):
        np.testing.assert_allclose(np.asarray(got), model.encode(t), atol=1e-6)
    batches = _metric(client.get("/metrics").text, 'te_batch_next_size_count{model="encoder"}') - before
    assert batches < len(texts), f"{len(texts)} requests ran in {batches} batches: nothing was shared"


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


# --- limits, errors, auth and shutdown on a small server ---------------------------------------------------------

@pytest.fixture(scope="module")
def strict(paths):
    srv = LiveServer([paths["encoder"]], "--threads", "1", "--api-key", "sekret", "--max-client-batch-size", "8",
                     "--max-concurrent-requests", "6", "--payload-limit", "20000", "--max-batch-tokens", "256")
    yield srv
    assert srv.stop() == 0


def test_errors_and_limits(strict):
    auth = {"Authorization": "Bearer sekret"}
    with httpx.Client(base_url=strict.url, timeout=60) as c:
        def check(status, kind, **kw):
            r = c.post("/embed", **kw)
            assert r.status_code == status, (r.status_code, r.text[:300])
            body = r.json()
            assert set(body) == {"error", "error_type"} and body["error_type"] == kind, body
            return r

        check(401, "unauthorized", json={"inputs": ["x"]})
        check(401, "unauthorized", json={"inputs": ["x"]}, headers={"Authorization": "Bearer wrong"})
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200  # open
        assert c.get("/info").status_code == 401
        check(400, "empty", json={"inputs": []}, headers=auth)
        check(400, "empty", content=b"", headers=auth)
        check(400, "validation", content=b'{"inputs": ["x"', headers=auth)
        check(400, "validation", content=b'{"inputs": ["\xff\xfe"]}', headers=auth)
        check(422, "validation", json={"inputs": [1, 2]}, headers=auth)
        check(422, "validation", json={"inputs": ["x"], "normalize": "yes"}, headers=auth)
        check(422, "validation", json={"inputs": ["x"] * 9}, headers=auth)  # > --max-client-batch-size
        check(422, "validation", json={"inputs": ["word " * 600]}, headers=auth)  # too long, truncate not asked
        check(413, "payload_too_large", json={"inputs": ["x" * 30000]}, headers=auth)
        chunked = iter([b'{"inputs": ["', b"x" * 30000, b'"]}'])  # no content-length: counted while read
        check(413, "payload_too_large", content=chunked, headers={**auth, "content-type": "application/json"})
        check(429, "overloaded", json={"inputs": ["x"] * 7}, headers=auth)  # more inputs than permits
        r = c.post("/embed", json={"inputs": ["word " * 600], "truncate": True}, headers=auth)
        assert r.status_code == 422 and "max-batch-tokens" in r.json()["error"]  # 512 tokens > a 256-token budget
        ok = c.post("/embed", json={"inputs": ["word " * 100, "short"], "truncate": True}, headers=auth)
        assert ok.status_code == 200 and len(ok.json()) == 2
        assert c.get("/health").json()["status"] == "ok"


def test_bad_inputs_at_the_default_limits(paths):
    """What the load-and-faults list asks, at the defaults: each gets its 4xx and the error JSON."""
    srv = LiveServer([paths["encoder"]], "--threads", "1")
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            def status(**kw):
                r = c.post("/embed", **kw)
                assert r.status_code == 200 or set(r.json()) == {"error", "error_type"}, r.text[:200]
                return r.status_code

            assert status(content=b'{"inputs": ["unclosed"', headers={"content-type": "application/json"}) == 400
            assert status(json={"inputs": {"a": 1}}) == 422
            assert status(json={"inputs": ["x"], "truncate": "no"}) == 422
            assert status(content=b'{"inputs": ["\xc3\x28"]}', headers={"content-type": "application/json"}) == 400
            assert status(json={"inputs": ["x" * 100] * 30000}) == 413  # 3 MB body, over the 2 MB default
            assert status(json={"inputs": ["text"] * 10000}) == 422  # over --max-client-batch-size 32
            one_mb = "word " * 200_000
            assert status(json={"inputs": [one_mb]}) == 422  # too long, truncate not asked
            assert status(json={"inputs": [one_mb], "truncate": True}) == 200
            assert c.get("/health").status_code == 200
    finally:
        assert srv.stop() == 0


def test_overload_answers_429_with_retry_after_and_stays_healthy(strict):
    auth = {"Authorization": "Bearer sekret"}
    long_text = "words " * 60
    codes = []
    with httpx.Client(base_url=strict.url, timeout=120, limits=httpx.Limits(max_connections=64)) as c:
        def one(_):
            r = c.post("/embed", json={"inputs": [long_text] * 4}, headers=auth)
            codes.append(r.status_code)
            if r.status_code == 429:
                assert r.headers.get("retry-after") == "1"
            return r.status_code

        with cf.ThreadPoolExecutor(24) as pool:
            list(pool.map(one, range(48)))
        assert set(codes) <= {200, 429} and 429 in codes and 200 in codes, codes
        assert c.get("/health").status_code == 200
        assert _metric(c.get("/metrics").text, "bge_inputs_in_flight") == 0


def test_client_disconnect_drops_its_work(strict):
    auth = {"Authorization": "Bearer sekret"}
    with httpx.Client(base_url=strict.url, timeout=120) as c:
        for _ in range(3):
            try:
                httpx.post(strict.url + "/embed", json={"inputs": ["many words " * 20] * 4}, headers=auth,
                           timeout=httpx.Timeout(10, read=0.005))
            except httpx.TimeoutException:
                pass
        deadline = time.time() + 30
        while _metric(c.get("/metrics").text, "bge_inputs_in_flight") and time.time() < deadline:
            time.sleep(0.1)
        assert _metric(c.get("/metrics").text, "bge_inputs_in_flight") == 0
        assert c.post("/embed", json={"inputs": ["after"]}, headers=auth).status_code == 200


def requests_received(url: str) -> float:
    """te_request_count summed over its labels: requests the server has read and accepted."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("te_request_count{"))


def test_sigterm_finishes_accepted_requests_and_exits_0(bundle):
    srv = LiveServer([bundle(SERVED["encoder"][0], "ort-cpu").bundle], "--threads", "1")
    results = []

    def request():
        try:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                results.append(c.post("/embed", json={"inputs": [T["corpus"][i] for i in range(32)]}).status_code)
        except httpx.HTTPError as exc:  # recorded, so that a request that got no answer shows what it got
            results.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    # signal once the server has accepted all four (a request not yet accepted is refused by a closing server)
    deadline = time.monotonic() + 60
    while requests_received(srv.url) < 4:
        assert time.monotonic() < deadline, f"the server did not receive the 4 requests: {srv.text()[-2000:]}"
        time.sleep(0.01)
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert srv.proc.wait(60) == 0, srv.text()[-2000:]
    assert results == [200] * 4, results
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=5)


def test_bad_command_lines_are_clear_errors(paths, tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "bge_export.cli", "serve", *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    r = run(tmp_path / "missing")
    assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr
    r = run(paths["encoder"], paths["encoder"])
    assert r.returncode == 2 and "--name" in r.stderr
    r = run(paths["encoder"], "--option", "nope=1")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = run(paths["encoder"], "--max-batch-tokens", "0")
    assert r.returncode == 2 and "--max-batch-tokens" in r.stderr
