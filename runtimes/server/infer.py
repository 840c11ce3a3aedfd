"""The inference layer (text-embeddings-inference's ``infer``): one FlagEmbedding call of a served bundle, as the
routes of every API ask for it.

A call takes an admission permit (``--max-concurrent-requests`` inputs in flight), is planned and tokenized on the
tokenization pool (runtimes.batcher.Job: over-long inputs refused unless truncating), has its sequences batched with
other requests' by the bundle's engine worker, and is finished (pooled, normalised, scored) on the loop or the pool,
so its result equals what ``runtimes.load(bundle).<method>(...)`` returns for the same inputs and options. A client
that goes away has its queued sequences dropped. The routes only translate their JSON into these calls and back.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request

from runtimes.server.http import ClientGone, HTTPError
from runtimes.server.state import ServedModel, ServerState

INLINE_FINISH_TOKENS = 2048  # jobs up to this size are finished on the event loop (microseconds)
QUERY_NAMES = {"query", "search_query", "queries"}
PASSAGE_NAMES = {"passage", "document", "search_document", "passages", "corpus", "documents"}


class Timing:
    """One request's timings, answered as text-embeddings-inference's x-*-time headers."""

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


class Inference:
    """The calls the routes make on the served bundles."""

    def __init__(self, state: ServerState):
        self.state, self.settings, self.metrics = state, state.settings, state.metrics

    def count(self, request: Request, n: int) -> None:
        """Refuse a request without inputs or with more than --max-client-batch-size; count it."""
        if n == 0:
            raise HTTPError(400, "no inputs: send at least one", "empty")
        limit = self.settings.max_client_batch_size
        if n > limit:
            raise HTTPError(422, f"{n} inputs in one request, above this server's --max-client-batch-size {limit}; "
                                 "split it into several requests", "validation")
        request.scope["bge.inputs"] = n
        self.metrics.inc("te_request_count", method="single" if n == 1 else "batch")
        self.metrics.inc("te_embed_count", n)

    async def call(self, request: Request, served: ServedModel, method: str, kwargs: dict, *,
                   options: dict | None = None, check: list[str] | None = None, truncate: bool | None = None,
                   n: int = 1) -> tuple[Any, Timing]:
        """Run one FlagEmbedding call through the engine worker; (its result, its timings). ``check``: the texts
        whose length is refused above max_length unless ``truncate`` (default --auto-truncate)."""
        state, metrics = self.state, self.metrics
        if state.in_flight + n > self.settings.max_concurrent_requests:
            raise HTTPError(429, f"overloaded: {state.in_flight} inputs in flight, the limit is "
                                 f"--max-concurrent-requests {self.settings.max_concurrent_requests}; retry shortly",
                            "overloaded", {"Retry-After": "1"})
        state.in_flight += n
        metrics.set("bge_inputs_in_flight", state.in_flight)
        timing = Timing()
        try:
            truncate = self.settings.auto_truncate if truncate is None else truncate
            loop = asyncio.get_running_loop()
            job = await loop.run_in_executor(state.pool, plan, served, method, kwargs, options or {},
                                             None if truncate else check)
            timing.tokenization = time.perf_counter() - timing.start
            timing.tokens = request.scope["bge.tokens"] = job.tokens
            result = await self._run(request, served, job, timing)
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

    async def _run(self, request: Request, served: ServedModel, job, timing: Timing):
        """Submit the job to the engine worker, wait for it (or for the client to leave), finish it."""
        loop = asyncio.get_running_loop()
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
            return ticket.finish()
        return await loop.run_in_executor(self.state.pool, ticket.finish)

    async def embed(self, request: Request, served: ServedModel, texts: list[str], *,
                    heads: tuple[str, ...] = ("return_dense",), normalize: bool = True, dimensions: int | None = None,
                    prompt_name: str | None = None, examples: list | None = None, truncate: bool | None = None,
                    truncation_direction: str | None = None) -> tuple[Any, Timing]:
        """Embed texts with the given heads: encode, or encode_queries / encode_corpus by ``prompt_name``; the
        options (normalize, dimensions = truncate_dim, in-context examples) for this call only."""
        if not served.embeds:
            raise HTTPError(422, f"model '{served.name}' is a reranker ({served.api}); use /rerank or /v1/rerank",
                            "validation")
        have = served.heads or ["return_dense"]  # a model without heads gives dense vectors
        missing = [h for h in heads if h not in have]
        if missing:
            raise HTTPError(422, f"model '{served.name}' ({served.api}) has no {missing[0][7:]} head (it has: "
                                 f"{', '.join(h[7:] for h in have)})", "validation")
        side = served.model.tokenizer.truncation_side
        if truncation_direction is not None and truncation_direction.lower() != side:
            raise HTTPError(422, f"this bundle truncates on the {side}, not the {truncation_direction.lower()}",
                            "validation")
        method = prompt_method(served, prompt_name)
        kwargs = {served.calls[method].inputs: texts, **{h: h in heads for h in served.calls[method].heads}}
        options = {"normalize_embeddings": normalize}
        if dimensions is not None:
            options["truncate_dim"] = dimensions
        if examples is not None:
            options["examples_for_task"] = examples
        self.count(request, len(texts))
        return await self.call(request, served, method, kwargs, options=options, check=texts, truncate=truncate,
                               n=len(texts))

    async def rerank(self, request: Request, served: ServedModel, query: str, texts: list[str], *,
                     raw_scores: bool = False, cutoff_layers=None, prompt: str | None = None,
                     truncate: bool | None = None) -> tuple[list[float], Timing]:
        """One score per text against the query (compute_score on the pairs; the deepest cutoff layer's)."""
        if not served.reranks:
            raise HTTPError(422, f"model '{served.name}' is an embedding model ({served.api}); use /embed, or "
                                 "/v1/flag/compute_score for its own scores", "validation")
        kwargs: dict[str, Any] = {"normalize": not raw_scores}
        if cutoff_layers is not None:  # the runtime refuses keywords its API does not take
            if isinstance(cutoff_layers, list) and len(cutoff_layers) != 1:
                raise HTTPError(422, "rerank takes one cutoff layer; use /v1/flag/compute_score for several",
                                "validation")
            kwargs["cutoff_layers"] = cutoff_layers
        if prompt is not None:
            kwargs["prompt"] = prompt
        return await self.score_pairs(request, served, [[query, t] for t in texts], kwargs, check=[query, *texts],
                                      truncate=truncate)

    async def score_pairs(self, request: Request, served: ServedModel, pairs: list, kwargs: dict, *,
                          check: list[str], truncate: bool | None) -> tuple[list[float], Timing]:
        self.count(request, len(pairs))
        kwargs = {served.calls["compute_score"].inputs: pairs, **kwargs}
        scores, timing = await self.call(request, served, "compute_score", kwargs, check=check, truncate=truncate,
                                         n=len(pairs))
        return one_score_each(scores), timing

    async def tokenize(self, served: ServedModel, texts: list[str], add_special_tokens: bool):
        """Token details of each text, on the tokenization pool."""
        timing = Timing()
        out = await asyncio.get_running_loop().run_in_executor(
            self.state.pool, served.model.tokenizer.details, texts, add_special_tokens)
        timing.tokenization = time.perf_counter() - timing.start
        timing.tokens = sum(len(t) for t in out)
        return out, timing


async def _disconnected(request) -> None:
    """Returns when the client has gone away (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def plan(served: ServedModel, method: str, kwargs: dict, options: dict, check: list[str] | None):
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


def one_score_each(scores: list) -> list[float]:
    """compute_score's result as one score per pair: with several cutoff layers built in (a list per layer), the
    deepest layer's."""
    if scores and isinstance(scores[0], list):
        scores = scores[-1]
    return [float(s) for s in scores]


def prompt_method(served: ServedModel, name: str | None) -> str:
    """The embedding call a prompt name / input type picks."""
    if name is None:
        return "encode"
    key = name.lower()
    if key in QUERY_NAMES and "encode_queries" in served.calls:
        return "encode_queries"
    if key in PASSAGE_NAMES and "encode_corpus" in served.calls:
        return "encode_corpus"
    raise HTTPError(422, f"unknown prompt_name / input_type '{name}': use 'query' (the model's query instruction, "
                         "encode_queries) or 'passage' (encode_corpus), or leave it out (encode)", "validation")
