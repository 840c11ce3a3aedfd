"""`bge-export serve --ray`: the server as a Ray Serve deployment on a Ray cluster on this machine, 2 replicas,
answered by 32 concurrent clients with zero failures and the same results as the plain server; a replica killed
under load is replaced while the other keeps answering (slow)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

import runtimes
from bge_export.parity_run import parity_texts
from parity_tests.live_server import LiveServer

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("ray")
from benchmarks.loadgen import load  # noqa: E402

TEXTS = parity_texts()["corpus"][:40]
REPLICA = "ServeReplica:bge-export:BgeServer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replicas() -> list[int]:
    out = subprocess.run(["pgrep", "-f", REPLICA], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


@pytest.fixture(scope="module")
def on_ray(bundle):
    path = bundle("tiny-bert", "ort-cpu").bundle
    with LiveServer([path], "--ray", "local", "--replicas", "2", "--port", str(free_port()), "--auto-truncate",
                    names=["encoder"], timeout=240, stop_timeout=120) as srv:
        yield srv, path
    deadline = time.time() + 60
    while replicas() and time.time() < deadline:  # the replicas go with the application
        time.sleep(0.5)


def test_two_replicas_answer_32_clients_with_the_plain_servers_results(on_ray):
    srv, path = on_ray
    deadline = time.time() + 120
    while len(replicas()) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert len(replicas()) == 2
    model = runtimes.load(path)
    got = httpx.post(srv.url + "/embed", json={"inputs": TEXTS[:8]}, timeout=60).json()
    assert np.array_equal(np.asarray(got, dtype=np.float32), model.encode(TEXTS[:8]))  # one request: bit for bit
    bodies = [json.dumps({"inputs": TEXTS[i:i + 1 + i % 4]}).encode() for i in range(32)]
    r = load(srv.url, "/embed", bodies, concurrency=32, duration=10, warmup=2)
    print(f"\nRay Serve, 2 replicas, 32 clients: {r['ok']} answers, statuses {r['statuses']}, "
          f"{r['requests_per_s']:.0f} requests/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
    assert r["ok"] > 0 and r["statuses"] == {"200": r["ok"]}


@pytest.mark.slow
def test_a_killed_replica_is_replaced_under_load(on_ray):
    srv, _ = on_ray
    bodies = [json.dumps({"inputs": TEXTS[i:i + 2]}).encode() for i in range(32)]
    result = {}
    t = threading.Thread(target=lambda: result.update(load(srv.url, "/embed", bodies, concurrency=16, duration=25,
                                                           warmup=1)))
    t.start()
    time.sleep(6)
    victim = replicas()[0]
    killed = time.time()
    os.kill(victim, signal.SIGKILL)
    replaced = None
    while time.time() - killed < 120:
        now = replicas()
        if len(now) == 2 and victim not in now:
            replaced = time.time() - killed
            break
        time.sleep(0.2)
    t.join()
    failed = result["requests"] - result["ok"]
    print(f"\nreplica killed under load (16 clients): {failed} of {result['requests']} requests failed "
          f"({result['statuses']}), a new replica process after {replaced and round(replaced, 1)} s")
    assert replaced is not None
    assert failed <= 16  # at most the requests in flight on the killed replica
    assert httpx.post(srv.url + "/embed", json={"inputs": ["after"]}, timeout=60).status_code == 200
