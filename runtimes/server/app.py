"""The HTTP routes: text-embeddings-inference's, OpenAI's embeddings, Cohere's / infinity's rerank, and the
FlagEmbedding API itself (``/v1/flag/{method}``) for what no peer serves (bge-m3's three heads and scores,
layer-wise cutoffs, the LLM rerankers' prompt, in-context examples).

Each request becomes one call of the bundle's FlagEmbedding API (a ``runtimes.batcher.Job``): planned and
tokenized on the tokenization pool, its sequences batched with other requests' by the bundle's engine worker,
finished on the pool, so a response equals what ``runtimes.load(bundle).<method>(...)`` returns for the same
inputs and options.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
import uuid
from typing import Any

import numpy as np

from runtimes._optional import require
from runtimes.errors import BgeError
from runtimes.server.engine import WorkerStopped
from runtimes.server.schemas import (CohereRerankRequest, DecodeRequest, EmbedRequest, FlagCallRequest,
                                     OpenAIEmbeddingRequest, RerankRequest, TokenizeRequest)
from runtimes.server.state import ServedModel, ServerState

log = logging.getLogger("bge_export.server")
access_log = logging.getLogger("bge_export.server.access")

INLINE_FINISH_TOKENS = 2048  # jobs up to this size are finished on the event loop (microseconds)
TIMING_HEADERS = ("x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time", "x-compute-tokens")
QUERY_NAMES = {"query", "search_query", "queries"}
PASSAGE_NAMES = {"passage", "document", "search_document", "passages", "corpus", "documents"}


class HTTPError(Exception):
    """An answer with an error status: ``{"error": message, "error_type": kind}``."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.headers = status, message, error_type, headers or {}


def plain(value: Any) -> Any:
    """numpy results -> JSON values (float32 -> the same number as a float64, so clients read it back exactly)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Timing:
    __slots__ = ("start", "tokenization", "queue", "inference", "tokens")

    def __init__(self):
        self.start = time.perf_counter()
        self.tokenization = self.queue = self.inference = 0.0
        self.tokens = 0

    def headers(self) -> dict[str, str]:
        ms = (lambda s: f"{s * 1000:.2f}")
        return {"x-compute-time": ms(time.perf_counter() - self.start), "x-tokenization-time": ms(self.tokenization),
                "x-queue-time": ms(self.queue), "x-inference-time": ms(self.inference),
                "x-compute-tokens": str(self.tokens)}


def create_app(state: ServerState):
    """The ASGI app over a loaded :class:`ServerState` (its workers are stopped at the app's shutdown)."""
    fastapi = require("fastapi")
    from contextlib import asynccontextmanager

    from fastapi import Request
    from fastapi.responses import Response
    from pydantic import ValidationError

    orjson = _orjson()
    settings = state.settings
    metrics = state.metrics

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has finished every accepted request by now (graceful shutdown): stop the engines
        await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = fastapi.FastAPI(title="bge-export server", version=_version(), lifespan=lifespan,
                          description="BGE engine bundles behind text-embeddings-inference's, OpenAI's and Cohere's "
                                      "APIs, plus FlagEmbedding's own calls.")

    def respond(body: Any, status: int = 200, headers: dict | None = None) -> Response:
        return Response(orjson(body), status_code=status, media_type="application/json", headers=headers)

    def error_response(exc: HTTPError, request: Request) -> Response:
        request.scope["bge.error"] = exc.error_type
        metrics.inc("te_request_failure", err=exc.error_type)
        return respond({"error": exc.message, "error_type": exc.error_type}, exc.status, exc.headers)

    # --- plumbing shared by the routes ---------------------------------------------------------------------
    def check_auth(request: Request) -> None:
        if settings.api_key is not None:
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                raise HTTPError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "unauthorized")

    async def read_body(request: Request, schema):
        check_auth(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.payload_limit:
            raise HTTPError(413, f"the request body has {int(declared)} bytes, above this server's --payload-limit "
                                 f"of {settings.payload_limit}; send fewer or shorter inputs per request",
                            "payload_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.payload_limit:
                raise HTTPError(413, f"the request body is above this server's --payload-limit of "
                                     f"{settings.payload_limit} bytes; send fewer or shorter inputs per request",
                                "payload_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            raise HTTPError(400, "the request body is empty; send a JSON object", "empty")
        try:
            return schema.model_validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if any(e["type"] in ("json_invalid", "json_type") for e in errors):
                detail = errors[0].get("msg", "")
                raise HTTPError(400, f"the request body is not valid JSON in UTF-8 ({detail})", "validation") from None
            raise HTTPError(422, "invalid request: " + "; ".join(_describe(e) for e in errors[:5]),
                            "validation") from None

    def model_for(request: Request, name: str | None) -> ServedModel:
        try:
            served = state.get(name)
        except LookupError as exc:
            raise HTTPError(404, str(exc), "not_found") from None
        request.scope["bge.model"] = served.name
        return served

    def count_inputs(request: Request, n: int, method: str) -> None:
        if n == 0:
            raise HTTPError(400, "no inputs: send at least one", "empty")
        if n > settings.max_client_batch_size:
            raise HTTPError(422, f"{n} inputs in one request, above this server's --max-client-batch-size "
                                 f"{settings.max_client_batch_size}; split it into several requests", "validation")
        request.scope["bge.inputs"] = n
        metrics.inc("te_request_count", method="single" if n == 1 else "batch")
        metrics.inc("te_embed_count", n)

    async def call(request: Request, served: ServedModel, method: str, kwargs: dict, *, options: dict | None = None,
                   check: list[str] | None = None, truncate: bool | None = None, n: int = 1) -> tuple[Any, Timing]:
        """Run one FlagEmbedding call through the engine worker; (its result, its timings)."""
        if state.in_flight + n > settings.max_concurrent_requests:
            raise HTTPError(429, f"overloaded: {state.in_flight} inputs in flight, the limit is "
                                 f"--max-concurrent-requests {settings.max_concurrent_requests}; retry shortly",
                            "overloaded", {"Retry-After": "1"})
        state.in_flight += n
        metrics.set("bge_inputs_in_flight", state.in_flight)
        timing = Timing()
        loop = asyncio.get_running_loop()
        try:
            truncate = settings.auto_truncate if truncate is None else truncate
            job = await loop.run_in_executor(state.pool, _plan, served, method, kwargs, options or {},
                                             None if truncate else check)
            timing.tokenization = time.perf_counter() - timing.start
            timing.tokens = job.tokens
            request.scope["bge.tokens"] = job.tokens
            future = loop.create_future()

            def done(t):
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(t))

            ticket = served.worker.submit(job, done)
            watcher = asyncio.ensure_future(_disconnected(request))
            try:
                finished, _ = await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watcher.cancel()
            if future not in finished:  # the client went away: its queued sequences are dropped
                ticket.cancelled = True
                request.scope["bge.error"] = "client_gone"
                raise ClientGone()
            timing.queue, timing.inference = ticket.queue_seconds, ticket.inference_seconds
            if job.tokens <= INLINE_FINISH_TOKENS:  # cheaper than a hop to the pool
                result = ticket.finish()
            else:
                result = await loop.run_in_executor(state.pool, ticket.finish)
        finally:
            state.in_flight -= n
            metrics.set("bge_inputs_in_flight", state.in_flight)
        metrics.inc("te_embed_success", n)
        metrics.observe("te_request_tokenization_duration", timing.tokenization)
        metrics.observe("te_request_queue_duration", timing.queue)
        metrics.observe("te_request_inference_duration", timing.inference)
        metrics.observe("te_request_duration", time.perf_counter() - timing.start)
        for item in job.items:
            metrics.observe("te_request_input_length", len(item.ids))
        return result, timing

    def ok(request: Request, body: Any, timing: Timing) -> Response:
        metrics.inc("te_request_success", method="single" if request.scope.get("bge.inputs", 1) == 1 else "batch")
        return respond(body, headers=timing.headers())

    def route(path: str, methods=("POST",), **kw):
        """Register a handler; HTTPError and the runtime's typed errors become the error JSON, anything else a
        500 logged with the request id."""
        def wrap(handler):
            async def endpoint(request: Request):
                try:
                    return await handler(request)
                except HTTPError as exc:
                    return error_response(exc, request)
                except ClientGone:
                    return Response(status_code=499)
                except WorkerStopped as exc:
                    return error_response(HTTPError(503, str(exc), "unhealthy"), request)
                except BgeError as exc:
                    return error_response(HTTPError(422, str(exc), "validation"), request)
                except Exception:
                    rid = request.scope.get("bge.request_id", "-")
                    log.exception("request %s %s failed", rid, request.url.path)
                    return error_response(HTTPError(500, f"internal error (request id {rid}); the server log has "
                                                         "the details", "backend"), request)
            endpoint.__annotations__ = {"request": Request}  # this module's annotations are strings
            endpoint.__name__ = handler.__name__
            endpoint.__doc__ = handler.__doc__
            app.add_api_route(path, endpoint, methods=list(methods), **kw)
            return handler
        return wrap

    # --- embeddings ----------------------------------------------------------------------------------------
    def embed_call(served: ServedModel, body, texts: list[str], heads: tuple[str, ...]) -> tuple[str, dict, dict]:
        """(method, keywords, per-call options) of an embedding request."""
        if not served.embeds:
            raise HTTPError(422, f"model '{served.name}' is a reranker ({served.api}); use /rerank or /v1/rerank",
                            "validation")
        have = served.heads or ["return_dense"]  # a model without heads gives dense vectors
        missing = [h for h in heads if h not in have]
        if missing:
            raise HTTPError(422, f"model '{served.name}' ({served.api}) has no {missing[0][7:]} head (it has: "
                                 f"{', '.join(h[7:] for h in have)})", "validation")
        direction = body.truncation_direction
        if direction is not None and direction.lower() != served.model.tokenizer.truncation_side:
            raise HTTPError(422, f"this bundle truncates on the {served.model.tokenizer.truncation_side}, not the "
                                 f"{direction.lower()}", "validation")
        method = _prompt_method(served, body.prompt_name or body.input_type)
        kwargs = {served.inputs_parameter(method): texts}
        for h in served.heads:
            kwargs[h] = h in heads
        options = {"normalize_embeddings": body.normalize}
        if body.dimensions is not None:
            options["truncate_dim"] = body.dimensions
        if body.examples is not None:
            options["examples_for_task"] = body.examples
        return method, kwargs, options

    async def embed_texts(request: Request, served: ServedModel, body, texts: list[str], heads=("return_dense",)):
        method, kwargs, options = embed_call(served, body, texts, heads)
        count_inputs(request, len(texts), method)
        result, timing = await call(request, served, method, kwargs, options=options, check=texts,
                                    truncate=body.truncate, n=len(texts))
        return result, timing

    def dense(result) -> np.ndarray:
        return result["dense_vecs"] if isinstance(result, dict) else result

    async def embed_request(request: Request, heads=("return_dense",)):
        """A TEI embedding route's request: its body, model and texts, run with the given heads."""
        body = await read_body(request, EmbedRequest)
        return await embed_texts(request, model_for(request, body.model), body, _texts(body.inputs), heads)

    @route("/embed")
    async def embed(request: Request):
        """text-embeddings-inference's /embed: a list of vectors."""
        result, timing = await embed_request(request)
        return ok(request, plain(np.atleast_2d(dense(result))), timing)

    @route("/embed_sparse")
    async def embed_sparse(request: Request):
        """text-embeddings-inference's /embed_sparse: bge-m3's lexical weights as [{"index", "value"}] per input."""
        result, timing = await embed_request(request, ("return_sparse",))
        weights = result["lexical_weights"]
        weights = [weights] if isinstance(weights, dict) else weights
        return ok(request, [sorted(({"index": int(k), "value": float(v)} for k, v in w.items()),
                                   key=lambda e: e["index"]) for w in weights], timing)

    @route("/embed_all")
    async def embed_all(request: Request):
        """text-embeddings-inference's /embed_all: per-token vectors, here bge-m3's ColBERT vectors."""
        result, timing = await embed_request(request, ("return_colbert_vecs",))
        vecs = result["colbert_vecs"]
        return ok(request, plain([vecs] if isinstance(vecs, np.ndarray) else vecs), timing)

    @route("/v1/embeddings")
    async def openai_embeddings(request: Request):
        """OpenAI's embeddings API (encoding_format float or base64; dimensions = truncate_dim)."""
        body = await read_body(request, OpenAIEmbeddingRequest)
        served = model_for(request, body.model)
        if not isinstance(body.input, str) and body.input and not all(isinstance(t, str) for t in body.input):
            raise HTTPError(422, "token-id inputs are not supported: send the texts", "validation")
        texts = _texts(body.input)
        result, timing = await embed_texts(request, served, body, texts)
        vecs = np.atleast_2d(dense(result))
        if body.encoding_format == "base64":
            data = [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode() for v in vecs]
        else:
            data = vecs.tolist()
        return ok(request, {"object": "list", "model": served.name,
                            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
                            "usage": {"prompt_tokens": timing.tokens, "total_tokens": timing.tokens}}, timing)

    # --- rerank ----------------------------------------------------------------------------------------------
    async def rerank_scores(request: Request, served: ServedModel, body, query: str, texts: list[str]):
        if not served.reranks:
            raise HTTPError(422, f"model '{served.name}' is an embedding model ({served.api}); use /embed, or "
                                 "/v1/flag/compute_score for its own scores", "validation")
        kwargs: dict[str, Any] = {"sentence_pairs": [[query, t] for t in texts], "normalize": not body.raw_scores}
        layers = body.cutoff_layers  # the runtime refuses keywords its API does not take
        if layers is not None:
            if isinstance(layers, list) and len(layers) != 1:
                raise HTTPError(422, "rerank takes one cutoff layer; use /v1/flag/compute_score for several",
                                "validation")
            kwargs["cutoff_layers"] = layers
        if body.prompt is not None:
            kwargs["prompt"] = body.prompt
        count_inputs(request, len(texts), "compute_score")
        scores, timing = await call(request, served, "compute_score", kwargs, check=[query, *texts],
                                    truncate=body.truncate, n=len(texts))
        return _one_score_each(scores), timing

    @route("/rerank")
    async def rerank(request: Request):
        """text-embeddings-inference's /rerank: [{"index", "score", "text"?}] sorted by score."""
        body = await read_body(request, RerankRequest)
        served = model_for(request, body.model)
        scores, timing = await rerank_scores(request, served, body, body.query, body.texts)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return ok(request, [{"index": i, "score": scores[i], **({"text": body.texts[i]} if body.return_text else {})}
                            for i in order], timing)

    @route("/v1/rerank")
    async def cohere_rerank(request: Request):
        """Cohere's / infinity's rerank: {"results": [{"index", "relevance_score", "document"?}]}."""
        body = await read_body(request, CohereRerankRequest)
        served = model_for(request, body.model)
        docs = []
        for i, d in enumerate(body.documents):
            text = d if isinstance(d, str) else d.get("text")
            if not isinstance(text, str):
                raise HTTPError(422, f"documents[{i}] must be a str or {{\"text\": str}}", "validation")
            docs.append(text)
        scores, timing = await rerank_scores(request, served, body, body.query, docs)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:body.top_n]
        return ok(request, {"object": "rerank", "id": request.scope.get("bge.request_id"), "model": served.name,
                            "results": [{"index": i, "relevance_score": scores[i],
                                         **({"document": docs[i]} if body.return_documents else {})} for i in order],
                            "usage": {"prompt_tokens": timing.tokens, "total_tokens": timing.tokens}}, timing)

    # --- POST / : the model's default task (what huggingface_hub.InferenceClient(base_url=...) calls) ----------
    @route("/")
    async def default_task(request: Request):
        """The model's default task, by the body's shape: {"inputs": texts} embeds (an embedding model) or
        scores [query, passage] pairs (a reranker); {"inputs": {"source_sentence", "sentences"}} gives
        similarities; {"query", "texts"} reranks."""
        raw = await read_body(request, FlagCallRequest)
        data = dict(raw.model_extra or {})
        data.update(data.pop("parameters", None) or {})
        served = model_for(request, raw.model)
        if "query" in data and "texts" in data:
            body = _validate(RerankRequest, data)
            scores, timing = await rerank_scores(request, served, body, body.query, body.texts)
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            return ok(request, [{"index": i, "score": scores[i]} for i in order], timing)
        inputs = data.get("inputs")
        if isinstance(inputs, dict):  # sentence similarity
            source, others = inputs.get("source_sentence"), inputs.get("sentences")
            if not isinstance(source, str) or not isinstance(others, list) or not all(isinstance(s, str) for s in others):
                raise HTTPError(422, "sentence similarity takes {\"source_sentence\": str, \"sentences\": [str]}",
                                "validation")
            if served.reranks:
                body = _validate(RerankRequest, {"query": source, "texts": others})
                scores, timing = await rerank_scores(request, served, body, source, others)
                return ok(request, scores, timing)
            body = _validate(EmbedRequest, {**data, "inputs": [source, *others], "normalize": True})
            result, timing = await embed_texts(request, served, body, [source, *others])
            vecs = dense(result)
            return ok(request, [float(x) for x in (vecs[1:] @ vecs[0])], timing)
        if served.reranks:
            pairs = inputs if isinstance(inputs, list) and inputs and isinstance(inputs[0], list) else [inputs]
            if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
                raise HTTPError(422, "a reranker scores [query, passage] pairs: send {\"inputs\": [[q, p], ...]}",
                                "validation")
            body = _validate(RerankRequest, {"query": "", "texts": [], **{k: v for k, v in data.items()
                                                                          if k in ("raw_scores", "truncate")}})
            count_inputs(request, len(pairs), "compute_score")
            scores, timing = await call(request, served, "compute_score",
                                        {"sentence_pairs": pairs, "normalize": not body.raw_scores},
                                        check=[x for p in pairs for x in p], truncate=body.truncate, n=len(pairs))
            return ok(request, [[{"label": "relevance", "score": s}] for s in _one_score_each(scores)], timing)
        body = _validate(EmbedRequest, data)
        result, timing = await embed_texts(request, served, body, _texts(body.inputs))
        return ok(request, plain(np.atleast_2d(dense(result))), timing)

    # --- FlagEmbedding's own calls ------------------------------------------------------------------------------
    @route("/v1/flag/{method}")
    async def flag_call(request: Request):
        """FlagEmbedding's API over HTTP: the body holds the call's keywords (for example
        {"sentences": [...], "return_sparse": true} for BGEM3FlagModel.encode, or {"sentence_pairs": [[q, p]],
        "cutoff_layers": [8]}), ``options`` per-call constructor options; the answer is {"result": ...} with
        numpy arrays as lists. Inputs are truncated to max_length as the Python call truncates them."""
        method = request.path_params["method"]
        body = await read_body(request, FlagCallRequest)
        served = model_for(request, body.model)
        if method not in served.calls:
            raise HTTPError(404, f"model '{served.name}' ({served.api}) has no call '{method}' here (its calls: "
                                 f"{', '.join(sorted(served.calls))})", "not_found")
        kwargs = dict(body.model_extra or {})
        first = served.inputs_parameter(method)
        inputs = kwargs.get(first)
        if inputs is None:
            raise HTTPError(422, f"{method} needs '{first}'", "validation")
        one_pair = first == "sentence_pairs" and isinstance(inputs, list) and inputs and isinstance(inputs[0], str)
        n = len(inputs) if isinstance(inputs, list) and not one_pair else 1
        count_inputs(request, n, method)
        result, timing = await call(request, served, method, kwargs, options=body.options, n=n)
        return ok(request, {"result": plain(result)}, timing)

    # --- tokens ---------------------------------------------------------------------------------------------
    @route("/tokenize")
    async def tokenize(request: Request):
        """text-embeddings-inference's /tokenize: [[{"id", "text", "special", "start", "stop"}]]."""
        body = await read_body(request, TokenizeRequest)
        served = model_for(request, body.model)
        texts = _texts(body.inputs)
        count_inputs(request, len(texts), "tokenize")
        timing = Timing()
        out = await asyncio.get_running_loop().run_in_executor(
            state.pool, served.model.tokenizer.details, texts, body.add_special_tokens)
        timing.tokenization = time.perf_counter() - timing.start
        timing.tokens = sum(len(t) for t in out)
        return ok(request, out, timing)

    @route("/decode")
    async def decode(request: Request):
        """text-embeddings-inference's /decode: token ids -> text."""
        body = await read_body(request, DecodeRequest)
        served = model_for(request, body.model)
        if not body.ids:
            raise HTTPError(400, "no token ids: send at least one", "empty")
        many = isinstance(body.ids[0], list)
        lists = body.ids if many else [body.ids]
        count_inputs(request, len(lists), "decode")
        tok = served.model.tokenizer
        vocab = tok.vocab_size()
        bad = [i for ids in lists for i in ids if not 0 <= i < vocab]
        if bad:
            raise HTTPError(422, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", "validation")
        texts = [tok.decode_plain(ids, body.skip_special_tokens) for ids in lists]
        return ok(request, texts if many else texts[0], Timing())

    # --- operations ----------------------------------------------------------------------------------------------
    @route("/info", methods=("GET",))
    async def info(request: Request):
        """The model (``?model=NAME`` with several), its limits and this server's."""
        check_auth(request)
        served = model_for(request, request.query_params.get("model"))
        return respond({**served.info(), "version": _version(), "models": list(state.models),
                        "min_padding_efficiency": settings.min_padding_efficiency,
                        "max_concurrent_requests": settings.max_concurrent_requests,
                        "max_client_batch_size": settings.max_client_batch_size,
                        "payload_limit": settings.payload_limit, "auto_truncate": settings.auto_truncate,
                        "tokenization_workers": state.tokenization_workers})

    @route("/v1/models", methods=("GET",))
    async def list_models(request: Request):
        """OpenAI's model list."""
        check_auth(request)
        return respond({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "bge-export",
                                                    "created": 0} for name in state.models]})

    @route("/health", methods=("GET",))
    async def health(request: Request):
        """200 while every engine worker runs, else 503."""
        dead = [s.name for s in state.models.values() if not s.worker.alive()]
        if dead:
            raise HTTPError(503, f"engine worker of {', '.join(dead)} stopped", "unhealthy")
        return respond({"status": "ok", "models": list(state.models)})

    @route("/metrics", methods=("GET",))
    async def prometheus(request: Request):
        """Prometheus metrics (text-embeddings-inference's names)."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def unknown_route(request: Request, exc):
        kind = "not_found" if exc.status_code == 404 else "validation"
        message = (f"no route {request.method} {request.url.path}; see GET /docs for the routes"
                   if exc.status_code in (404, 405) else str(exc.detail))
        return respond({"error": message, "error_type": kind}, exc.status_code)

    return AccessLog(app, metrics)


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(request) -> None:
    """Returns when the client has gone away (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _plan(served: ServedModel, method: str, kwargs: dict, options: dict, check: list[str] | None):
    """On the tokenization pool: refuse over-long inputs (unless truncating), then the call's Job."""
    model = served.model.with_options(**options) if options else served.model
    job = model.job(method, **kwargs)
    if check and job.exclusive is None:
        flags = [e.truncated for e in job.items]
        if None in flags:  # the family's tokenization does not record truncation: count the texts
            limit = int(model.max_length)
            long = [(i, n) for i, n in enumerate(model.tokenizer.count(check)) if n > limit]
            if long:
                i, n = long[0]
                raise HTTPError(422, f"input {i} has {n} tokens, above the model's max_length {limit}; send "
                                     "\"truncate\": true to cut it (as FlagEmbedding does), or shorten it", "validation")
        elif any(flags):
            i = flags.index(True)
            raise HTTPError(422, f"input {i} is longer than the model's max_length ({int(model.max_length)} tokens) "
                                 "and would be cut; send \"truncate\": true to cut it (as FlagEmbedding does), or "
                                 "shorten it", "validation")
    return job  # the worker checks it against the token budget when it is submitted


def _one_score_each(scores: list) -> list[float]:
    """compute_score's result as one score per pair: with several cutoff layers built in (a list per layer), the
    deepest layer's."""
    if scores and isinstance(scores[0], list):
        scores = scores[-1]
    return [float(s) for s in scores]


def _prompt_method(served: ServedModel, name: str | None) -> str:
    if name is None:
        return "encode"
    key = name.lower()
    if key in QUERY_NAMES and "encode_queries" in served.calls:
        return "encode_queries"
    if key in PASSAGE_NAMES and "encode_corpus" in served.calls:
        return "encode_corpus"
    raise HTTPError(422, f"unknown prompt_name / input_type '{name}': use 'query' (the model's query instruction, "
                         "encode_queries) or 'passage' (encode_corpus), or leave it out (encode)", "validation")


def _texts(inputs) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


def _validate(schema, data: dict):
    from pydantic import ValidationError

    try:
        return schema.model_validate(data, strict=True)
    except ValidationError as exc:
        raise HTTPError(422, "invalid request: " + "; ".join(_describe(e) for e in exc.errors(include_url=False)[:5]),
                        "validation") from None


def _describe(error: dict) -> str:
    where = ".".join(str(x) for x in error.get("loc", ())) or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def _version() -> str:
    import runtimes

    return runtimes.__version__


def _orjson():
    try:
        import orjson

        return orjson.dumps
    except ImportError:  # orjson is in the serve extra; the standard library is the fallback
        return lambda obj: json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class AccessLog:
    """Pure ASGI middleware: a request id (the client's x-request-id or a new one), the timing headers on every
    answer (zero where a step did not run), and one structured access-log line per request."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    def __getattr__(self, name):  # app.state and the like reach the FastAPI app
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), None)
        rid = given or uuid.uuid4().hex[:16]  # a proxy in front (Ray Serve's) that sends one also answers with it
        scope["bge.request_id"] = rid
        start = time.perf_counter()
        status = {"code": 0}

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [(h.encode(), b"0") for h in TIMING_HEADERS if h.encode() not in have]
                if given is None:
                    headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            if access_log.isEnabledFor(logging.INFO) and scope.get("path") not in ("/metrics", "/health"):
                client = scope.get("client") or ("-", 0)
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "request_id": rid, "method": scope.get("method"),
                    "path": scope.get("path"), "status": status["code"],
                    "ms": round((time.perf_counter() - start) * 1000, 2), "client": f"{client[0]}:{client[1]}",
                    "model": scope.get("bge.model"), "inputs": scope.get("bge.inputs"),
                    "tokens": scope.get("bge.tokens"), "error": scope.get("bge.error")}))
