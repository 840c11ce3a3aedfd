"""`bge-export serve --ray`: the same server as a Ray Serve deployment.

Each replica is a whole server (runtimes.server.state + app): it loads the bundles once, keeps its own engine
workers and token-budget batcher, and answers the same routes with the same results; Ray Serve's proxy spreads the
requests over the replicas (a fixed number, or autoscaled on ongoing requests) and replaces a replica that dies.
Engine threads per replica = the CPUs Ray gives it.
"""
from __future__ import annotations

import dataclasses
import signal
import threading
from pathlib import Path

from runtimes._optional import require
from runtimes.errors import InputError
from runtimes.ray_cluster import connect
from runtimes.server.state import ServerSettings, ServerState

APP_NAME = "bge-export"


class ReplicaServer:
    """One replica: the bundles loaded in the replica's process, served by the FastAPI app of runtimes.server.app."""

    def __init__(self, bundles: list[str], settings: dict, names: list[str]):
        self.state = ServerState.load(bundles, ServerSettings(**settings), names)

    def __serve_build_asgi_app__(self):  # Ray Serve calls it after __init__, in the replica
        from runtimes.server.app import create_app  # FastAPI: in the replica only

        return create_app(self.state)


def parse_autoscale(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        low, high = (int(x) for x in value.split(","))
    except ValueError:
        raise InputError(f"--autoscale takes MIN,MAX replicas (e.g. 1,4), got {value!r}") from None
    if not 1 <= low <= high:
        raise InputError(f"--autoscale MIN,MAX needs 1 <= MIN <= MAX, got {value!r}")
    return low, high


def deploy(bundles: list[str], settings, names: list[str], address: str, replicas: int | None,
           autoscale: tuple[int, int] | None, say, block: bool = True):
    """Start (or join) the Ray cluster, run the deployment behind Ray Serve's HTTP proxy on settings.host:port, and
    (``block``) wait for SIGTERM / Ctrl-C, then shut the application down. Returns the app's handle."""
    serve = require("ray.serve")
    if replicas is not None and autoscale is not None:
        raise InputError("give --replicas or --autoscale, not both")
    if replicas is not None and replicas < 1:
        raise InputError(f"--replicas must be a positive int, got {replicas}")
    ray = connect(address)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    count = autoscale[1] if autoscale else (replicas or 1)
    per_replica = max(cpus / count, 0.1)
    threads = settings.threads or max(1, int(per_replica // max(1, len(bundles))))
    replica_settings = dataclasses.asdict(dataclasses.replace(settings, threads=threads))
    options = {"name": "BgeServer", "ray_actor_options": {"num_cpus": per_replica},
               "max_ongoing_requests": max(8, settings.max_concurrent_requests // 4)}
    if autoscale:
        options["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                         "target_ongoing_requests": 16}
    else:
        options["num_replicas"] = replicas or 1
    deployment = serve.deployment(serve.ingress()(ReplicaServer), **options)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    say(f"deploying on Ray ({cpus:g} CPUs): {'autoscaled %d..%d' % autoscale if autoscale else count} replicas x "
        f"{per_replica:g} CPU, {threads} engine threads each")
    bundles = [str(Path(b).resolve()) for b in bundles]  # replicas run in other working directories
    handle = serve.run(deployment.bind(bundles, replica_settings, list(names)), name=APP_NAME,
                       route_prefix="/")
    say(f"listening on http://{settings.host}:{settings.port} (Ray Serve); Application startup complete")
    if not block:
        return handle
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say("stopping: Ray Serve drains the replicas")
        serve.delete(APP_NAME)
        serve.shutdown()
    return handle
