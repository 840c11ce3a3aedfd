"""``bge-export serve``: engine bundles behind an HTTP server (needs the ``serve`` extra, never torch).

    bge-export serve bundles/all-MiniLM-L6-v2-ort-cpu --port 8080
    curl -s localhost:8080/embed -H 'content-type: application/json' -d '{"inputs": ["hello"]}'

Routes: text-embeddings-inference's (/embed, /embed_sparse, /embed_all, /rerank, /tokenize, /decode, POST /,
/info, /health, /metrics), OpenAI's /v1/embeddings and /v1/models, Cohere's / infinity's /v1/rerank, and
FlagEmbedding's own calls at /v1/flag/{method}. One engine worker per bundle batches the sequences of every
request up to --max-batch-tokens, each batch of sequences of similar lengths (runtimes.server.engine).
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys

from runtimes._optional import require
from runtimes.batcher import Padding
from runtimes.errors import BgeError, InputError
from runtimes.server.ray_serve import deploy, parse_autoscale
from runtimes.server.state import ServerSettings, ServerState

PADDING = Padding()

DESCRIPTION = """\
Serve engine bundles over HTTP with text-embeddings-inference's, OpenAI's and Cohere's APIs, plus FlagEmbedding's
own calls (bge-m3's sparse and ColBERT heads, the LLM rerankers' options) that no other server has.

  bge-export serve bundles/all-MiniLM-L6-v2-ort-cpu
  bge-export serve bundles/m3-ort bundles/reranker-ort --port 9000 --api-key "$KEY"
  bge-export serve bundles/bge-small-ov --option query_instruction_for_retrieval="Represent this sentence for searching relevant passages: "

Each bundle is served under its folder's name (--name overrides, in order); a request picks one with its "model"
field, which a server of one bundle does not need. Requests over the limits below get 413 (body), 422 (inputs per
request, input length without "truncate": true) or an immediate 429 with Retry-After (inputs in flight).
SIGTERM (or Ctrl-C) stops accepting connections, answers what was accepted, and exits 0.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bge-export serve", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folders to serve")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="the name the next bundle is served as (repeat, in bundle order; default: its folder name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one and prints it)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health and /metrics")
    p.add_argument("--max-batch-tokens", type=int, default=None, metavar="N",
                   help="padded tokens per engine batch, summed over the requests that share it; an input above a "
                        "budget you set is a 422 (default: 2048 on CPU engines, where larger batches run slower per "
                        "token, 16384 on GPU engines, raised to the model's max_length; a longer input runs alone)")
    p.add_argument("--min-padding-efficiency", type=float, default=PADDING.min_efficiency, metavar="E",
                   help="a batch takes a queued sequence only while its real tokens stay at least E of its padded "
                        f"tokens (rows shorter than {PADDING.short} tokens count as {PADDING.short}), so short "
                        "queries and long passages do not pad each other; 0 batches any lengths together "
                        f"(default {PADDING.min_efficiency})")
    p.add_argument("--max-concurrent-requests", type=int, default=512, metavar="N",
                   help="inputs in flight (queued or running) before new requests get 429 (default 512)")
    p.add_argument("--max-client-batch-size", type=int, default=32, metavar="N",
                   help="inputs per request, more is a 422 (default 32)")
    p.add_argument("--payload-limit", type=int, default=2_000_000, metavar="BYTES",
                   help="request body size, more is a 413 (default 2000000)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="engine threads per bundle (default: this machine's cores divided among the bundles)")
    p.add_argument("--tokenization-workers", type=int, default=None, metavar="N",
                   help="threads that tokenize and finish requests (default: the cores, at most 4)")
    p.add_argument("--auto-truncate", action="store_true",
                   help="cut over-long inputs to max_length unless a request says \"truncate\": false "
                        "(default: refuse them with 422 unless it says \"truncate\": true)")
    p.add_argument("--option", action="append", default=[], metavar="[NAME:]KEY=VALUE",
                   help="a runtime option, as runtimes.load(BUNDLE, KEY=VALUE) takes it, for the bundle served as NAME "
                        "or for every bundle; VALUE is JSON or a plain string (e.g. "
                        "query_instruction_for_retrieval=..., max_length=256)")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an engine backend option (e.g. allow_spinning=false); VALUE is JSON or a plain string")
    p.add_argument("--ray", default=None, metavar="auto|local|ADDRESS",
                   help="run as a Ray Serve deployment: 'auto' joins the running cluster, 'local' starts one here, or a "
                        "cluster address; every replica is this whole server (the ray extra)")
    p.add_argument("--replicas", type=int, default=None, metavar="N", help="with --ray: N replicas (default 1)")
    p.add_argument("--autoscale", default=None, metavar="MIN,MAX",
                   help="with --ray: between MIN and MAX replicas, scaled on ongoing requests")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="server log level; access logs are JSON lines at info (default info)")
    return p


def parse_options(pairs: list[str], flag: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def parse_bundle_options(pairs: list[str]) -> dict[str, dict]:
    """--option values -> {served name (or "" for every bundle): {key: value}}."""
    out: dict[str, dict] = {}
    for key, value in parse_options(pairs, "--option").items():
        name, _, option = key.rpartition(":")
        out.setdefault(name, {})[option] = value
    return out


def settings_from(args):
    return ServerSettings(
        host=args.host, port=args.port, api_key=args.api_key, max_batch_tokens=args.max_batch_tokens,
        min_padding_efficiency=args.min_padding_efficiency,
        max_concurrent_requests=args.max_concurrent_requests, max_client_batch_size=args.max_client_batch_size,
        payload_limit=args.payload_limit, threads=args.threads, tokenization_workers=args.tokenization_workers,
        auto_truncate=args.auto_truncate, options=parse_bundle_options(args.option),
        backend_options=parse_options(args.backend_option, "--backend-option"))


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the bundles load, so that a taken port is a clear error at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host!r} is not an address this machine can listen on ({exc})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port, or stop what "
                         "holds it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(message)s")
    say = (lambda msg: print(f"bge-export serve: {msg}", file=sys.stderr, flush=True))
    if args.ray is None and (args.replicas is not None or args.autoscale is not None):
        print("bge-export serve: error: --replicas and --autoscale need --ray", file=sys.stderr)
        return 2
    if args.ray is not None:
        return serve_on_ray(args, say)
    try:
        uvicorn = require("uvicorn")
        require("fastapi")
        settings = settings_from(args)
        sock = listen(settings.host, settings.port)
        from runtimes.server.app import create_app  # FastAPI, imported only to serve

        try:
            state = ServerState.load(args.bundles, settings, args.name, progress=say)
        except BaseException:
            sock.close()
            raise
    except BgeError as exc:
        print(f"bge-export serve: error: {exc}", file=sys.stderr)
        return exc.exit_code
    host, port = sock.getsockname()[:2]
    app = create_app(state)
    for served in state.models.values():
        say(f"'{served.name}': {served.api} ({served.family}, {served.target}), max_length "
            f"{served.model.max_length}, {served.threads} engine threads, batches of up to "
            f"{served.worker.max_batch_tokens} padded tokens")
    say(f"listening on http://{host}:{port} (limits: "
        f"{settings.max_concurrent_requests} inputs in flight, {settings.max_client_batch_size} inputs per request, "
        f"{settings.payload_limit} bytes per body); routes at http://{host}:{port}/docs")
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=60)
    server = uvicorn.Server(config)
    # uvicorn re-raises SIGTERM / SIGINT after its graceful shutdown; handled here, they end in exit code 0
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        state.close()  # already done by the app's shutdown, unless the server never started
    say("stopped")
    return 0 if server.started else 1


def serve_on_ray(args, say) -> int:
    try:
        require("fastapi")
        settings = settings_from(args)
        deploy(args.bundles, settings, args.name or [], args.ray, args.replicas, parse_autoscale(args.autoscale), say)
    except BgeError as exc:
        print(f"bge-export serve: error: {exc}", file=sys.stderr)
        return exc.exit_code
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
