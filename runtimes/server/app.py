"""The ASGI app: text-embeddings-inference's routes, OpenAI's embeddings, Cohere's / infinity's rerank, and the
FlagEmbedding API itself (``/v1/flag/{method}``), over a loaded :class:`~runtimes.server.state.ServerState`.

Layers, as text-embeddings-inference's router: ``http`` (errors, bodies, auth, the access log), ``infer`` (one
FlagEmbedding call: admission, tokenization off the loop, the engine worker's shared batches, finishing) and one
module of ``routes`` per API family, each translating its JSON into those calls and back. A response equals what
``runtimes.load(bundle).<method>(...)`` returns for the same inputs and options.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import fastapi
from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtimes import __version__
from runtimes.server.http import AccessLog, Http, respond
from runtimes.server.infer import Inference
from runtimes.server.routes import cohere, flag, openai, tei
from runtimes.server.state import ServerState

API_FAMILIES = (tei, openai, cohere, flag)  # each module's register(http, infer) adds its routes


def create_app(state: ServerState):
    """The ASGI app over a loaded :class:`ServerState` (its workers are stopped at the app's shutdown)."""

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has finished every accepted request by now (graceful shutdown): stop the engines
        await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = fastapi.FastAPI(title="bge-export server", version=__version__, lifespan=lifespan,
                          description="BGE engine bundles behind text-embeddings-inference's, OpenAI's and Cohere's "
                                      "APIs, plus FlagEmbedding's own calls.")
    http, infer = Http(app, state), Inference(state)
    for family in API_FAMILIES:
        family.register(http, infer)

    @app.exception_handler(StarletteHTTPException)
    async def unknown_route(request: Request, exc):
        kind = "not_found" if exc.status_code == 404 else "validation"
        message = (f"no route {request.method} {request.url.path}; see GET /docs for the routes"
                   if exc.status_code in (404, 405) else str(exc.detail))
        return respond({"error": message, "error_type": kind}, exc.status_code)

    return AccessLog(app, state.metrics)
