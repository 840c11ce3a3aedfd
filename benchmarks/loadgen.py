"""A small HTTP/1.1 load generator on raw asyncio streams (keep-alive, no client library), closed or open loop.

Closed loop (:func:`run_load`): each of ``concurrency`` clients keeps one connection, sends a request, reads the
whole answer, and sends the next, cycling through ``bodies``; latency is measured from the first byte written to
the last byte read. Open loop (:func:`run_open`): requests arrive at a fixed mean rate with exponential gaps
(Poisson arrivals) whatever the server's pace, each on an idle kept-alive connection or a new one; latency is
measured from the request's scheduled arrival, so time spent waiting for a connection counts (no coordinated
omission). Both cost far less CPU per request than an HTTP client library, which matters when the load generator
shares the machine's two cores with the server it measures. Used by the server benchmark and the load tests.

``weights`` (optional, one ``(texts, tokens)`` per body) adds the texts and tokens of the answered requests to
the figures.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from urllib.parse import urlsplit

import numpy as np


def _request(host: str, path: str, body: bytes, headers: dict | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server keeps the connection open); the body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == "content-length":
            length = int(value)
        elif key == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif key == "connection" and value == "close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, not close


IDLE_REUSE_S = 2.0  # open loop: a kept-alive connection idle longer is not reused (uvicorn closes them after 5 s)


def _figures(latencies: list[float], statuses: Counter, done: Counter, duration: float,
             weights: list[tuple[int, int]] | None) -> dict:
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    ok = statuses.get(200, 0)
    out = {"seconds": duration, "requests": sum(statuses.values()), "ok": ok,
           "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
           "requests_per_s": ok / duration,
           "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
           "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max())}
    if weights is not None:
        texts = sum(weights[i][0] * n for i, n in done.items())
        tokens = sum(weights[i][1] * n for i, n in done.items())
        out.update({"texts_per_s": texts / duration, "tokens_per_s": tokens / duration})
    return out


async def run_load(url: str, path: str, bodies: list[bytes], *, concurrency: int, duration: float,
                   warmup: float = 2.0, headers: dict | None = None, timeout: float = 120.0,
                   weights: list[tuple[int, int]] | None = None) -> dict:
    """Closed-loop load for ``warmup + duration`` seconds; statistics over the requests that finished inside the
    measured window. A request that fails (connection error, timeout) counts under status 0."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    start = time.perf_counter()
    t0, t1 = start + warmup, start + warmup + duration
    latencies: list[float] = []
    statuses: Counter = Counter()
    done: Counter = Counter()  # answered requests by body index (200, inside the window)
    sent = [0]

    async def client(k: int) -> None:
        reader = writer = None
        i = k
        while time.perf_counter() < t1:
            index = i % len(bodies)
            body = bodies[index]
            i += concurrency
            began = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(_request(host, path, body, headers))
                await writer.drain()
                status, keep = await asyncio.wait_for(_read_response(reader), timeout)
                ended = time.perf_counter()
                if not keep:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                status, ended = 0, time.perf_counter()
                if writer is not None:
                    writer.close()
                reader = writer = None
            sent[0] += 1
            if t0 <= ended <= t1:
                statuses[status] += 1
                if status == 200:
                    latencies.append(ended - began)
                    done[index] += 1
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return {"concurrency": concurrency, **_figures(latencies, statuses, done, duration, weights)}


async def run_open(url: str, path: str, bodies: list[bytes], *, rate: float, duration: float, warmup: float = 2.0,
                   headers: dict | None = None, timeout: float = 120.0, weights: list[tuple[int, int]] | None = None,
                   max_outstanding: int = 512, seed: int = 0) -> dict:
    """Open-loop load: requests arrive ``rate`` per second on average (exponential gaps, seeded) for
    ``warmup + duration`` seconds, cycling through ``bodies``; statistics over the requests that arrived inside
    the measured window (each waited for, up to ``timeout``). An arrival while ``max_outstanding`` requests are
    unanswered is not sent and counts under status "shed" (the client gave up): the load generator's own bound."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    rng = np.random.default_rng(seed)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []  # with the time it went idle
    latencies: list[float] = []
    statuses: Counter = Counter()
    done: Counter = Counter()
    outstanding = [0]

    async def one(index: int, due: float, measured: bool) -> None:
        outstanding[0] += 1
        reader = writer = None
        while idle and time.perf_counter() - idle[-1][2] > IDLE_REUSE_S:  # the server may have closed it
            idle.pop()[1].close()
        try:
            reader, writer = idle.pop()[:2] if idle else await asyncio.open_connection(host, port)
            writer.write(_request(host, path, bodies[index], headers))
            await writer.drain()
            status, keep = await asyncio.wait_for(_read_response(reader), timeout)
            if keep:
                idle.append((reader, writer, time.perf_counter()))
            else:
                writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            status = 0
            if writer is not None:
                writer.close()
        finally:
            outstanding[0] -= 1
        if measured:
            statuses[status] += 1
            if status == 200:
                latencies.append(time.perf_counter() - due)
                done[index] += 1

    start = time.perf_counter()
    t0, t1 = start + warmup, start + warmup + duration
    tasks, due, i = [], start, 0
    while True:
        due += float(rng.exponential(1.0 / rate))
        if due >= t1:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if outstanding[0] >= max_outstanding:
            if due >= t0:
                statuses["shed"] += 1
        else:
            tasks.append(asyncio.ensure_future(one(i % len(bodies), due, due >= t0)))
        i += 1
    await asyncio.gather(*tasks)
    for _, writer, _ in idle:
        writer.close()
    return {"rate": rate, **_figures(latencies, statuses, done, duration, weights)}


def load(url: str, path: str, bodies: list[bytes], **kw) -> dict:
    return asyncio.run(run_load(url, path, bodies, **kw))


def load_open(url: str, path: str, bodies: list[bytes], **kw) -> dict:
    return asyncio.run(run_open(url, path, bodies, **kw))


async def _abandon(url: str, path: str, body: bytes, after: float) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(_request(parts.hostname, path, body, None))
    await writer.drain()
    await asyncio.sleep(after)
    writer.transport.abort()  # gone without reading the answer


def abandon(url: str, path: str, body: bytes, *, clients: int, after: float = 0.01) -> None:
    """``clients`` clients that send a request and disconnect ``after`` seconds later, all at once."""
    async def main():
        await asyncio.gather(*(_abandon(url, path, body, after) for _ in range(clients)), return_exceptions=True)

    asyncio.run(main())
