"""Padding efficiency and speed of the in-process paths on the server benchmark's realistic traffic: ``encode`` (one
call per request, and one call over the whole corpus at FlagModel's batch_size 256) and ``bge-export embed``'s
token-budget batches (2048), each with the padding rule (runtimes.batcher.Padding, the default) and without it
(min_efficiency 0: the plain length-sorted cut, which is also FlagEmbedding's own batching), on the real
all-MiniLM-L6-v2 ort-cpu bundle. The efficiency (real tokens / padded tokens) comes from the batch plan; the time
from running it, the two rules interleaved, medians of --repeats.

    .venv/bin/python -m benchmarks.run_inprocess_padding [--requests 600] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=600, help="requests of the mixed traffic (default 600)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per path and rule (default 3)")
    p.add_argument("--work", default="/tmp/bge-server-bench", help="where the server benchmark built its bundles")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/inprocess-padding-<cpu>)")
    args = p.parse_args()

    import numpy as np

    import runtimes
    from benchmarks import traffic as tr
    from benchmarks.run_cpu_targets import cpu_kind
    from benchmarks.run_server import build_bundles
    from bge_export.checkpoint import embedded_default_path
    from runtimes.batcher import Padding
    from runtimes.cpu import capabilities

    bundle = build_bundles(Path(args.work))["ort-cpu"]
    model = runtimes.load(bundle)
    count = tr.counter(str(embedded_default_path() / "tokenizer.json"), 512)
    reqs = tr.requests(args.requests, count, shape="mixed")
    texts = [t for r in reqs for t in r.texts]
    batcher = model.batcher
    calls = {  # path -> list of (items, batch_size, max_tokens), one per call
        "encode, one call per request": [(model.job("encode", list(r.texts)).items, 256, None) for r in reqs],
        "encode, the whole corpus (batch_size 256)": [(model.job("encode", texts).items, 256, None)],
        "bge-export embed (2048 batch tokens)": [(model.job("encode", texts).items, 256, 2048)],
    }
    rules = {"padding rule (default)": Padding(), "no rule (min_efficiency 0)": Padding(min_efficiency=0)}
    rows = []
    batcher.execute(model.job("encode", texts[:200]), max_tokens=2048)  # warm-up
    for path, work in calls.items():
        times: dict[str, list[float]] = {r: [] for r in rules}
        figures = {}
        for name, rule in rules.items():
            batcher.rule = rule
            real = padded = engine_calls = 0
            for items, size, budget in work:
                for idx in batcher.plan(items, size, max_tokens=budget):
                    lengths = [len(items[i].ids) for i in idx]
                    real += sum(lengths)
                    padded += rule.padded(max(lengths), len(lengths))
                    engine_calls += 1
            figures[name] = (real, padded, engine_calls)
        for _ in range(args.repeats):
            for name, rule in rules.items():
                batcher.rule = rule
                start = time.perf_counter()
                for items, size, budget in work:
                    list(batcher.batches(items, size, max_tokens=budget))
                times[name].append(time.perf_counter() - start)
        for name in rules:
            real, padded, engine_calls = figures[name]
            t = float(np.median(times[name]))
            rows.append({"path": path, "rule": name, "padding_efficiency": round(real / padded, 3),
                         "engine_calls": engine_calls, "seconds": round(t, 3), "tokens_per_s": round(real / t, 1),
                         "runs": [round(x, 3) for x in times[name]]})
            print(json.dumps(rows[-1]), file=sys.stderr)
    batcher.rule = Padding()
    cpu = capabilities()["cpu"]
    out = Path(args.out or HERE / "results" / f"inprocess-padding-{cpu_kind()}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu, "bundle": bundle.name, "traffic": tr.describe(reqs), "texts": len(texts)}
    (out / "inprocess.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [f"CPU: {cpu}; {bundle.name}; {len(reqs)} requests of the mixed traffic ({len(texts)} texts)", "",
             "| path | rule | padding efficiency | engine calls | tokens/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['rule']} | {r['padding_efficiency']:.2f} | {r['engine_calls']} | "
              f"{r['tokens_per_s']:.0f} |" for r in rows]
    (out / "inprocess.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run())
