"""A small closed-loop HTTP/1.1 load generator on raw asyncio streams (keep-alive, no client library).

Each of ``concurrency`` clients keeps one connection, sends a request, reads the whole answer, and sends the next,
cycling through ``bodies``. Latency is measured per request from the first byte written to the last byte read.
It costs far less CPU per request than an HTTP client library, which matters when the load generator shares the
machine's two cores with the server it measures. Used by the server benchmark and the load tests.
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


async def run_load(url: str, path: str, bodies: list[bytes], *, concurrency: int, duration: float,
                   warmup: float = 2.0, headers: dict | None = None, timeout: float = 120.0) -> dict:
    """Closed-loop load for ``warmup + duration`` seconds; statistics over the requests that finished inside the
    measured window. A request that fails (connection error, timeout) counts under status 0."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    start = time.perf_counter()
    t0, t1 = start + warmup, start + warmup + duration
    latencies: list[float] = []
    statuses: Counter = Counter()
    sent = [0]

    async def client(k: int) -> None:
        reader = writer = None
        i = k
        while time.perf_counter() < t1:
            body = bodies[i % len(bodies)]
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
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    ok = statuses.get(200, 0)
    return {"concurrency": concurrency, "seconds": duration, "requests": sum(statuses.values()), "ok": ok,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "requests_per_s": ok / duration,
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max())}


def load(url: str, path: str, bodies: list[bytes], **kw) -> dict:
    return asyncio.run(run_load(url, path, bodies, **kw))


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
