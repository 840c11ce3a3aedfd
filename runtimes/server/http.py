"""The HTTP plumbing every route shares: error answers, request bodies, authentication, JSON out, the access log.

A route raises :class:`HTTPError` (or lets a runtime's typed error through); :meth:`Http.route` turns it into the
peers' error JSON ``{"error": message, "error_type": kind}`` with its status, and anything unexpected into a 500
logged with the request id.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from runtimes.errors import BgeError
from runtimes.server.engine import WorkerStopped
from runtimes.server.state import ServedModel, ServerState

log = logging.getLogger("bge_export.server")
access_log = logging.getLogger("bge_export.server.access")

TIMING_HEADERS = ("x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time", "x-compute-tokens")

try:
    from orjson import dumps as to_json  # the serve extra's fast JSON writer
except ImportError:  # the standard library is the fallback
    def to_json(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class HTTPError(Exception):
    """An answer with an error status: ``{"error": message, "error_type": kind}``."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type, self.headers = status, message, error_type, headers or {}


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


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


def respond(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(to_json(body), status_code=status, media_type="application/json", headers=headers)


def texts_of(inputs) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


def validate(schema, data: dict):
    """A schema from a dict already parsed (POST / reads its body once, then picks the task's schema)."""
    try:
        return schema.model_validate(data, strict=True)
    except ValidationError as exc:
        raise HTTPError(422, "invalid request: " + "; ".join(_describe(e) for e in exc.errors(include_url=False)[:5]),
                        "validation") from None


def _describe(error: dict) -> str:
    where = ".".join(str(x) for x in error.get("loc", ())) or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


class Http:
    """Registers routes on the FastAPI app and reads their requests under the server's limits."""

    def __init__(self, app, state: ServerState):
        self.app, self.state, self.settings, self.metrics = app, state, state.settings, state.metrics

    def error_response(self, exc: HTTPError, request: Request) -> Response:
        request.scope["bge.error"] = exc.error_type
        self.metrics.inc("te_request_failure", err=exc.error_type)
        return respond({"error": exc.message, "error_type": exc.error_type}, exc.status, exc.headers)

    def route(self, path: str, methods=("POST",), **kw):
        """Register a handler ``async (request) -> Response``; HTTPError and the runtime's typed errors become the
        error JSON, anything else a 500 logged with the request id."""
        def wrap(handler):
            async def endpoint(request: Request):
                try:
                    return await handler(request)
                except HTTPError as exc:
                    return self.error_response(exc, request)
                except ClientGone:
                    return Response(status_code=499)
                except WorkerStopped as exc:
                    return self.error_response(HTTPError(503, str(exc), "unhealthy"), request)
                except BgeError as exc:
                    return self.error_response(HTTPError(422, str(exc), "validation"), request)
                except Exception:
                    rid = request.scope.get("bge.request_id", "-")
                    log.exception("request %s %s failed", rid, request.url.path)
                    return self.error_response(HTTPError(500, f"internal error (request id {rid}); the server log "
                                                              "has the details", "backend"), request)
            endpoint.__annotations__ = {"request": Request}  # resolved here, not from this module's strings
            endpoint.__name__ = handler.__name__
            endpoint.__doc__ = handler.__doc__
            self.app.add_api_route(path, endpoint, methods=list(methods), **kw)
            return handler
        return wrap

    def check_auth(self, request: Request) -> None:
        key = self.settings.api_key
        if key is not None:
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                raise HTTPError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "unauthorized")

    async def body(self, request: Request, schema):
        """The request's JSON body as ``schema``, after the API key and the payload limit."""
        self.check_auth(request)
        limit = self.settings.payload_limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"the request body has {int(declared)} bytes, above this server's --payload-limit "
                                 f"of {limit}; send fewer or shorter inputs per request", "payload_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the request body is above this server's --payload-limit of {limit} bytes; "
                                     "send fewer or shorter inputs per request", "payload_too_large")
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

    def model(self, request: Request, name: str | None) -> ServedModel:
        """The served model a request names (the only one when the server serves one)."""
        try:
            served = self.state.get(name)
        except LookupError as exc:
            raise HTTPError(404, str(exc), "not_found") from None
        request.scope["bge.model"] = served.name
        return served

    def ok(self, request: Request, body: Any, timing) -> Response:
        """A successful answer with its timing headers."""
        single = request.scope.get("bge.inputs", 1) == 1
        self.metrics.inc("te_request_success", method="single" if single else "batch")
        return respond(body, headers=timing.headers())


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
