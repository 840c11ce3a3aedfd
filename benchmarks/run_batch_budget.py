"""How big an engine batch should be on this CPU: the numbers behind `bge-export embed --batch-tokens 2048` and the
README's server-memory note, on the real all-MiniLM-L6-v2 (mean pooling, ort-cpu).

    .venv/bin/python -m benchmarks.run_batch_budget [--out benchmarks/results/batch-budget-minilm-<cpu>]

1. Rows/s of 2,000 mixed passages (benchmarks/run_corpus.py's corpus) at 2048, 4096 and 16384 padded tokens per
   batch and with encode()'s default batch_size=256, and the largest difference between those vectors.
2. The server's RSS before and after 15 s of 8 clients sending 32 x 512-token requests, at --max-batch-tokens
   16384 (the default) and 4096, with the inputs/s each served.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import runtimes
    from benchmarks.loadgen import load
    from benchmarks.run_corpus import make_corpus
    from benchmarks.run_cpu_targets import cpu_kind
    from benchmarks.run_server import build_bundles
    from bge_export.parity_run import parity_texts
    from parity_tests.live_server import LiveServer
    from runtimes.cpu import capabilities

    out = Path(args.out or HERE / "results" / f"batch-budget-minilm-{cpu_kind()}")
    out.mkdir(parents=True, exist_ok=True)
    bundle = build_bundles(Path("/tmp/bge-server-bench"))["ort-cpu"]
    corpus = Path("/tmp/bge-batch-budget.jsonl")
    make_corpus(corpus, 2000)
    texts = [json.loads(line)["text"] for line in open(corpus)]
    model = runtimes.load(bundle)
    rows, vectors = [], {}
    for budget in (None, 16384, 4096, 2048):
        job = model.job("encode", texts)
        start = time.perf_counter()
        vectors[budget] = model.batcher.execute(job, max_tokens=budget)
        seconds = time.perf_counter() - start
        rows.append({"what": "encode", "batch_tokens": budget or "encode default batch_size=256",
                     "rows_per_s": round(len(texts) / seconds, 1)})
    spread = max(float(np.abs(v - vectors[None]).max()) for v in vectors.values())
    rows.append({"what": "encode", "max_abs_difference_between_budgets": spread})
    request = json.dumps({"inputs": [" ".join(parity_texts()["corpus"][:40])] * 32, "truncate": True}).encode()
    for extra in ([], ["--max-batch-tokens", "4096"]):
        srv = LiveServer([bundle], *extra)
        try:
            before = srv.rss_kib()
            r = load(srv.url, "/embed", [request], concurrency=8, duration=15, warmup=1)
            rows.append({"what": "server", "max_batch_tokens": int(extra[1]) if extra else 16384,
                         "rss_mib_before": before // 1024, "rss_mib_after": srv.rss_kib() // 1024,
                         "inputs_per_s": round(r["requests_per_s"] * 32, 1), "statuses": r["statuses"]})
        finally:
            srv.stop()
    cpu = capabilities()["cpu"]
    with open(out / "batch_budget.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "cpu": cpu}) + "\n")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(run())
