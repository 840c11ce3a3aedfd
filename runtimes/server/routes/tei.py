"""text-embeddings-inference's routes: /embed, /embed_sparse, /embed_all, /rerank, /tokenize, /decode, POST / (the
model's default task, what huggingface_hub.InferenceClient(base_url=...) calls), and /info, /health, /metrics."""
from __future__ import annotations

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from runtimes import __version__
from runtimes.server.http import HTTPError, Http, plain, respond, texts_of, validate
from runtimes.server.infer import Inference, Timing
from runtimes.server.schemas import DecodeRequest, EmbedRequest, FlagCallRequest, RerankRequest, TokenizeRequest


def dense(result) -> np.ndarray:
    """The dense vectors of an embedding call's result (BGEM3FlagModel answers a dict)."""
    return result["dense_vecs"] if isinstance(result, dict) else result


def ranked(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def register(http: Http, infer: Inference) -> None:
    embedding_routes(http, infer)
    default_task_route(http, infer)
    token_routes(http, infer)
    operation_routes(http)


def embedding_routes(http: Http, infer: Inference) -> None:
    """/embed, /embed_sparse, /embed_all, /rerank."""
    async def embed_request(request: Request, heads=("return_dense",)):
        body = await http.body(request, EmbedRequest)
        served = http.model(request, body.model)
        return await infer.embed(request, served, texts_of(body.inputs), heads=heads, **body.call_options())

    @http.route("/embed")
    async def embed(request: Request):
        """text-embeddings-inference's /embed: a list of vectors."""
        result, timing = await embed_request(request)
        return http.ok(request, plain(np.atleast_2d(dense(result))), timing)

    @http.route("/embed_sparse")
    async def embed_sparse(request: Request):
        """text-embeddings-inference's /embed_sparse: bge-m3's lexical weights as [{"index", "value"}] per input."""
        result, timing = await embed_request(request, ("return_sparse",))
        weights = result["lexical_weights"]
        weights = [weights] if isinstance(weights, dict) else weights
        return http.ok(request, [sorted(({"index": int(k), "value": float(v)} for k, v in w.items()),
                                        key=lambda e: e["index"]) for w in weights], timing)

    @http.route("/embed_all")
    async def embed_all(request: Request):
        """text-embeddings-inference's /embed_all: per-token vectors, here bge-m3's ColBERT vectors."""
        result, timing = await embed_request(request, ("return_colbert_vecs",))
        vecs = result["colbert_vecs"]
        return http.ok(request, plain([vecs] if isinstance(vecs, np.ndarray) else vecs), timing)

    @http.route("/rerank")
    async def rerank(request: Request):
        """text-embeddings-inference's /rerank: [{"index", "score", "text"?}] sorted by score."""
        body = await http.body(request, RerankRequest)
        served = http.model(request, body.model)
        scores, timing = await infer.rerank(request, served, body.query, body.texts, **rerank_options(body))
        return http.ok(request, [{"index": i, "score": scores[i], **({"text": body.texts[i]} if body.return_text
                                                                    else {})} for i in ranked(scores)], timing)


def default_task_route(http: Http, infer: Inference) -> None:
    """POST /: what huggingface_hub.InferenceClient(base_url=...) calls for every task."""
    @http.route("/")
    async def default_task(request: Request):
        """The model's default task, by the body's shape: {"inputs": texts} embeds (an embedding model) or
        scores [query, passage] pairs (a reranker); {"inputs": {"source_sentence", "sentences"}} gives
        similarities; {"query", "texts"} reranks."""
        raw = await http.body(request, FlagCallRequest)
        data = dict(raw.model_extra or {})
        data.update(data.pop("parameters", None) or {})
        served = http.model(request, raw.model)
        inputs = data.get("inputs")
        if "query" in data and "texts" in data:
            body = validate(RerankRequest, data)
            scores, timing = await infer.rerank(request, served, body.query, body.texts, **rerank_options(body))
            return http.ok(request, [{"index": i, "score": scores[i]} for i in ranked(scores)], timing)
        if isinstance(inputs, dict):
            return await similarity(request, served, data, inputs)
        if served.reranks:
            pairs = inputs if isinstance(inputs, list) and inputs and isinstance(inputs[0], list) else [inputs]
            if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
                raise HTTPError(422, "a reranker scores [query, passage] pairs: send {\"inputs\": [[q, p], ...]}",
                                "validation")
            body = validate(RerankRequest, {"query": "", "texts": [], **{k: v for k, v in data.items()
                                                                         if k in ("raw_scores", "truncate")}})
            scores, timing = await infer.score_pairs(request, served, pairs, {"normalize": not body.raw_scores},
                                                     check=[x for p in pairs for x in p], truncate=body.truncate)
            return http.ok(request, [[{"label": "relevance", "score": s}] for s in scores], timing)
        body = validate(EmbedRequest, data)
        result, timing = await infer.embed(request, served, texts_of(body.inputs), **body.call_options())
        return http.ok(request, plain(np.atleast_2d(dense(result))), timing)

    async def similarity(request: Request, served, data: dict, inputs: dict):
        """Sentence similarity: the source against each sentence (cosines, or a reranker's scores)."""
        source, others = inputs.get("source_sentence"), inputs.get("sentences")
        if not isinstance(source, str) or not isinstance(others, list) or not all(isinstance(s, str) for s in others):
            raise HTTPError(422, "sentence similarity takes {\"source_sentence\": str, \"sentences\": [str]}",
                            "validation")
        if served.reranks:
            body = validate(RerankRequest, {"query": source, "texts": others})
            scores, timing = await infer.rerank(request, served, source, others, **rerank_options(body))
            return http.ok(request, scores, timing)
        body = validate(EmbedRequest, {**data, "inputs": [source, *others], "normalize": True})
        result, timing = await infer.embed(request, served, [source, *others], **body.call_options())
        vecs = dense(result)
        return http.ok(request, [float(x) for x in (vecs[1:] @ vecs[0])], timing)


def token_routes(http: Http, infer: Inference) -> None:
    """/tokenize, /decode."""
    @http.route("/tokenize")
    async def tokenize(request: Request):
        """text-embeddings-inference's /tokenize: [[{"id", "text", "special", "start", "stop"}]]."""
        body = await http.body(request, TokenizeRequest)
        served = http.model(request, body.model)
        texts = texts_of(body.inputs)
        infer.count(request, len(texts))
        out, timing = await infer.tokenize(served, texts, body.add_special_tokens)
        return http.ok(request, out, timing)

    @http.route("/decode")
    async def decode(request: Request):
        """text-embeddings-inference's /decode: token ids -> text."""
        body = await http.body(request, DecodeRequest)
        served = http.model(request, body.model)
        if not body.ids:
            raise HTTPError(400, "no token ids: send at least one", "empty")
        many = isinstance(body.ids[0], list)
        lists = body.ids if many else [body.ids]
        infer.count(request, len(lists))
        tok = served.model.tokenizer
        vocab = tok.vocab_size()
        bad = [i for ids in lists for i in ids if not 0 <= i < vocab]
        if bad:
            raise HTTPError(422, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", "validation")
        texts = [tok.decode_plain(ids, body.skip_special_tokens) for ids in lists]
        return http.ok(request, texts if many else texts[0], Timing())


def operation_routes(http: Http) -> None:
    """/info, /health, /metrics."""
    state = http.state

    @http.route("/info", methods=("GET",))
    async def info(request: Request):
        """The model (``?model=NAME`` with several), its limits and this server's."""
        http.check_auth(request)
        served = http.model(request, request.query_params.get("model"))
        s = state.settings
        return respond({**served.info(), "version": __version__, "models": list(state.models),
                        "min_padding_efficiency": s.min_padding_efficiency,
                        "max_concurrent_requests": s.max_concurrent_requests,
                        "max_client_batch_size": s.max_client_batch_size, "payload_limit": s.payload_limit,
                        "auto_truncate": s.auto_truncate, "tokenization_workers": state.tokenization_workers})

    @http.route("/health", methods=("GET",))
    async def health(request: Request):
        """200 while every engine worker runs, else 503."""
        dead = [s.name for s in state.models.values() if not s.worker.alive()]
        if dead:
            raise HTTPError(503, f"engine worker of {', '.join(dead)} stopped", "unhealthy")
        return respond({"status": "ok", "models": list(state.models)})

    @http.route("/metrics", methods=("GET",))
    async def prometheus(request: Request):
        """Prometheus metrics (text-embeddings-inference's names)."""
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


def rerank_options(body) -> dict:
    """The keywords of Inference.rerank a rerank body gives (TEI's and Cohere's share them)."""
    return {"raw_scores": body.raw_scores, "cutoff_layers": body.cutoff_layers, "prompt": body.prompt,
            "truncate": body.truncate}
