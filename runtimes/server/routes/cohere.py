"""Cohere's / infinity's rerank route: /v1/rerank."""
from __future__ import annotations

from fastapi import Request

from runtimes.server.http import HTTPError, Http
from runtimes.server.infer import Inference
from runtimes.server.routes.tei import ranked, rerank_options
from runtimes.server.schemas import CohereRerankRequest


def register(http: Http, infer: Inference) -> None:
    @http.route("/v1/rerank")
    async def cohere_rerank(request: Request):
        """Cohere's / infinity's rerank: {"results": [{"index", "relevance_score", "document"?}]}."""
        body = await http.body(request, CohereRerankRequest)
        served = http.model(request, body.model)
        docs = []
        for i, d in enumerate(body.documents):
            text = d if isinstance(d, str) else d.get("text")
            if not isinstance(text, str):
                raise HTTPError(422, f"documents[{i}] must be a str or {{\"text\": str}}", "validation")
            docs.append(text)
        scores, timing = await infer.rerank(request, served, body.query, docs, **rerank_options(body))
        order = ranked(scores)[:body.top_n]
        return http.ok(request, {"object": "rerank", "id": request.scope.get("bge.request_id"), "model": served.name,
                                 "results": [{"index": i, "relevance_score": scores[i],
                                              **({"document": docs[i]} if body.return_documents else {})}
                                             for i in order],
                                 "usage": {"prompt_tokens": timing.tokens, "total_tokens": timing.tokens}}, timing)
