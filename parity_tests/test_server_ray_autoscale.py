"""`bge-export serve --ray local --autoscale 1,2`: the deployment starts with one replica, Ray Serve adds the second
when the ongoing requests pass the target (16 per replica), and no request fails while it does (slow: Ray Serve waits
30 s of sustained load before it scales up)."""
from __future__ import annotations

import json
import threading
import time

import pytest

from bge_export.parity_run import parity_texts
from parity_tests.live_server import LiveServer
from parity_tests.test_server_ray import free_port, replicas

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("ray")
from benchmarks.loadgen import load  # noqa: E402

TEXTS = parity_texts()["corpus"][:40]


@pytest.mark.slow
def test_autoscale_adds_a_replica_under_load_and_no_request_fails(bundle):
    path = bundle("tiny-bert", "ort-cpu").bundle
    with LiveServer([path], "--ray", "local", "--autoscale", "1,2", "--port", str(free_port()), "--auto-truncate",
                    names=["encoder"], timeout=240, stop_timeout=120) as srv:
        assert "autoscaled 1..2 replicas" in srv.text()
        time.sleep(3)
        assert len(replicas()) == 1
        bodies = [json.dumps({"inputs": TEXTS[i % 36:i % 36 + 1 + i % 4]}).encode() for i in range(64)]
        result, counts = {}, []
        t = threading.Thread(target=lambda: result.update(load(srv.url, "/embed", bodies, concurrency=64,
                                                               duration=75, warmup=1)))
        started = time.time()
        t.start()
        scaled = None
        while t.is_alive():
            counts.append(len(replicas()))
            if scaled is None and counts[-1] == 2:
                scaled = time.time() - started
            time.sleep(0.5)
        t.join()
        print(f"\nautoscale 1..2 under 64 clients: second replica after {scaled and round(scaled, 1)} s; "
              f"{result['ok']} answers, statuses {result['statuses']}, {result['requests_per_s']:.0f} requests/s")
        assert scaled is not None, f"replica counts seen: {sorted(set(counts))}"
        assert result["ok"] > 0 and result["statuses"] == {"200": result["ok"]}
    deadline = time.time() + 60
    while replicas() and time.time() < deadline:
        time.sleep(0.5)
