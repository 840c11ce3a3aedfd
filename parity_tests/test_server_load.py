"""Load, overload, disconnects and a soak on `bge-export serve` of the real all-MiniLM-L6-v2 (ort-cpu), on loopback.
Long: run them with  pytest -m load -s  (about 3 minutes) and  pytest -m soak -s  (10 minutes); each prints its
figures, and appends them as a JSON line to $BGE_LOAD_REPORT when that is set."""
from __future__ import annotations

import json
import os
import time

import pytest

from bge_export.parity_run import parity_texts
from parity_tests.live_server import LiveServer

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from benchmarks.loadgen import abandon, load  # noqa: E402
from benchmarks.traffic import counter, requests  # noqa: E402

CORPUS = parity_texts()["corpus"]


def traffic(count: int = 400) -> list:
    """The server benchmark's realistic traffic (benchmarks/traffic.py): half the requests one real query, half 1 to
    8 real passages, so short queries and long passages share the queue."""
    from bge_export.checkpoint import embedded_default_path

    return requests(count, counter(str(embedded_default_path() / "tokenizer.json"), 512), shape="mixed")


def bodies(count: int = 400) -> list[bytes]:
    return [r.body(route="tei") for r in traffic(count)]


def report(name: str, figures: dict) -> None:
    line = json.dumps({"test": name, **figures})
    print("\n" + line)
    path = os.environ.get("BGE_LOAD_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def metric(url: str, series: str, default: float | None = None) -> float:
    """One series of /metrics; a missing one fails the test unless ``default`` is given (a counter not yet counted)."""
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    assert default is not None, f"/metrics has no series {series}"
    return default


@pytest.fixture(scope="module")
def minilm(bundle):
    return bundle("minilm-real", "ort-cpu").bundle


@pytest.mark.load
def test_64_clients_for_60_s_without_a_failure(minilm):
    reqs = traffic()
    with LiveServer([minilm], names=["minilm"]) as srv:
        rss0 = srv.rss_kib()
        r = load(srv.url, "/embed", [q.body(route="tei") for q in reqs], concurrency=64, duration=60, warmup=5,
                 weights=[(len(q.texts), sum(q.tokens)) for q in reqs])
        real = metric(srv.url, 'bge_batch_real_tokens{model="minilm"}')
        efficiency = real / metric(srv.url, 'bge_batch_padded_tokens{model="minilm"}')
        report("64 clients x 60 s, mixed lengths", {**r, "padding_efficiency": round(efficiency, 3),
                                                    "rss_mib_before": rss0 // 1024,
                                                    "rss_mib_after": srv.rss_kib() // 1024})
        assert r["ok"] > 0 and r["statuses"] == {"200": r["ok"]}, r["statuses"]
        # short queries and long passages did not pad each other (arrival-order batches ran at about 0.45 here)
        assert efficiency >= 0.75, efficiency


@pytest.mark.load
def test_ten_times_overload_gets_only_429_and_the_server_stays_healthy(minilm):
    with LiveServer([minilm], "--max-concurrent-requests", "64", names=["minilm"]) as srv:
        # 80 clients x 8 inputs = 640 inputs asked for at once: 10x the 64 permits
        eight = [json.dumps({"inputs": [CORPUS[(i + k) % len(CORPUS)] for k in range(8)], "truncate": True}).encode()
                 for i in range(100)]
        r = load(srv.url, "/embed", eight, concurrency=80, duration=20, warmup=2)
        health = httpx.get(srv.url + "/health", timeout=30).status_code
        after = httpx.post(srv.url + "/embed", json={"inputs": ["after the storm"]}, timeout=30).status_code
        report("10x overload", {**r, "health_after": health, "request_after": after,
                                "in_flight_after": metric(srv.url, "bge_inputs_in_flight")})
        assert set(r["statuses"]) <= {"200", "429"} and r["statuses"].get("429", 0) > 0, r["statuses"]
        assert health == 200 and after == 200 and metric(srv.url, "bge_inputs_in_flight") == 0


@pytest.mark.load
def test_clients_that_disconnect_leak_nothing(minilm):
    with LiveServer([minilm], names=["minilm"]) as srv:
        long_request = json.dumps({"inputs": [" ".join(CORPUS[:40])] * 32, "truncate": True}).encode()
        # warm up with the same requests, answered: ONNX Runtime's arena grows to the largest batch once and keeps it
        load(srv.url, "/embed", [long_request], concurrency=8, duration=20, warmup=1)
        rss0 = srv.rss_kib()
        for _ in range(10):
            abandon(srv.url, "/embed", long_request, clients=50, after=0.02)
        deadline = time.time() + 120
        while (metric(srv.url, "bge_inputs_in_flight") or metric(srv.url, 'te_queue_size{model="minilm"}')) \
                and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        dropped = metric(srv.url, 'bge_inputs_dropped{model="minilm"}', default=0.0)
        rss1 = srv.rss_kib()
        ok = httpx.post(srv.url + "/embed", json={"inputs": ["still here"]}, timeout=30).status_code
        report("500 abandoned requests", {"rss_mib_before": rss0 // 1024, "rss_mib_after": rss1 // 1024,
                                          "sequences_dropped_before_inference": dropped,
                                          "in_flight_after": metric(srv.url, "bge_inputs_in_flight")})
        assert ok == 200 and metric(srv.url, "bge_inputs_in_flight") == 0
        assert rss1 - rss0 < 64 * 1024, (rss0, rss1)


@pytest.mark.soak
def test_ten_minute_soak_keeps_rss_flat(minilm):
    with LiveServer([minilm], names=["minilm"]) as srv:
        samples = []
        for minute in range(10):
            r = load(srv.url, "/embed", bodies(), concurrency=16, duration=58, warmup=1)
            samples.append({"minute": minute + 1, "rss_mib": round(srv.rss_kib() / 1024, 1), "ok": r["ok"],
                            "failed": r["requests"] - r["ok"], "p99_ms": round(r["p99_ms"], 1)})
        growth = samples[-1]["rss_mib"] - samples[0]["rss_mib"]
        report("10-minute soak", {"samples": samples, "rss_growth_mib_after_minute_1": round(growth, 1)})
        assert all(s["failed"] == 0 for s in samples)
        assert growth < 50, samples
