"""OpenAI's routes: /v1/embeddings (encoding_format float or base64; dimensions = truncate_dim) and /v1/models."""
from __future__ import annotations

import base64

import numpy as np
from fastapi import Request

from runtimes.server.http import HTTPError, Http, respond, texts_of
from runtimes.server.infer import Inference
from runtimes.server.routes.tei import dense
from runtimes.server.schemas import OpenAIEmbeddingRequest


def register(http: Http, infer: Inference) -> None:
    @http.route("/v1/embeddings")
    async def openai_embeddings(request: Request):
        """OpenAI's embeddings API (encoding_format float or base64; dimensions = truncate_dim)."""
        body = await http.body(request, OpenAIEmbeddingRequest)
        served = http.model(request, body.model)
        if not isinstance(body.input, str) and body.input and not all(isinstance(t, str) for t in body.input):
            raise HTTPError(422, "token-id inputs are not supported: send the texts", "validation")
        result, timing = await infer.embed(request, served, texts_of(body.input), **body.call_options())
        vecs = np.atleast_2d(dense(result))
        if body.encoding_format == "base64":
            data = [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode() for v in vecs]
        else:
            data = vecs.tolist()
        return http.ok(request, {"object": "list", "model": served.name,
                                 "data": [{"object": "embedding", "index": i, "embedding": e}
                                          for i, e in enumerate(data)],
                                 "usage": {"prompt_tokens": timing.tokens, "total_tokens": timing.tokens}}, timing)

    @http.route("/v1/models", methods=("GET",))
    async def list_models(request: Request):
        """OpenAI's model list."""
        http.check_auth(request)
        return respond({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "bge-export",
                                                    "created": 0} for name in http.state.models]})
