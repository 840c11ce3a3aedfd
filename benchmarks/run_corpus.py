"""Corpus embedding: a 20,000-passage corpus of mixed lengths (real all-MiniLM-L6-v2, mean pooling) embedded by
`bge-export embed` in-process, on Ray Data with 1 and with 2 actors, and by FlagModel.encode, in one run.

    .venv/bin/python -m benchmarks.run_corpus [--rows 20000] [--out benchmarks/results/corpus-minilm-<cpu>]

One 2-core machine cannot show scale-out gains: Ray's rows come from the same two cores. What it shows is Ray's
overhead against in-process and the throughput of one actor (one engine on one CPU), which a cluster multiplies
by its actors. Writes corpus.jsonl, corpus.md and corpus.png.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_corpus(path: Path, rows: int) -> int:
    """``rows`` passages of 8 to 200 words (a mix of short and long), as JSONL; returns ``rows``."""
    from bge_export.parity_run import parity_texts

    words = " ".join(parity_texts()["corpus"]).split()
    rng = random.Random(0)
    with open(path, "w") as f:
        for i in range(rows):
            n = int(min(200, max(8, rng.lognormvariate(3.6, 0.7))))
            start = rng.randrange(0, len(words) - n)
            f.write(json.dumps({"id": i, "text": " ".join(words[start:start + n])}) + "\n")
    return rows


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--work", default="/tmp/bge-corpus-bench")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import ray

    from benchmarks.run_cpu_targets import cpu_kind
    from benchmarks.run_server import build_bundles
    from bge_export.checkpoint import embedded_default_path
    from runtimes.corpus.run import EmbedSettings, embed_corpus
    from runtimes.cpu import capabilities
    from runtimes.tokenizer import Tokenizer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out or HERE / "results" / f"corpus-minilm-{cpu_kind()}")
    out_dir.mkdir(parents=True, exist_ok=True)
    bundles = build_bundles(Path("/tmp/bge-server-bench"))
    corpus = work / "corpus.jsonl"
    make_corpus(corpus, args.rows)
    texts = [json.loads(line)["text"] for line in open(corpus)]
    tok = Tokenizer(bundles["ort-cpu"] / "tokenizer", pad_token_id=0, padding_side="right")
    tokens = sum(min(n, 512) for n in tok.count(texts))
    rows = []

    def record(name, seconds, extra=None):
        r = {"contender": name, "rows": len(texts), "tokens": tokens, "seconds": round(seconds, 2),
             "rows_per_s": round(len(texts) / seconds, 1), "tokens_per_s": round(tokens / seconds),
             "cpu": capabilities()["cpu"], **(extra or {})}
        rows.append(r)
        print(json.dumps(r), file=sys.stderr)

    def embed(name, bundle, **kw):
        out = work / name.replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        embed_corpus(EmbedSettings(bundle=str(bundle), input=str(corpus), output=str(out), shard_rows=2000, **kw),
                     log=lambda m: None)
        return time.perf_counter() - start

    record("bge-export embed, in-process, ort-cpu", embed("local ort-cpu", bundles["ort-cpu"]))
    fastest = [t for t in bundles if t not in ("ort-cpu", "ort-cpu-int8")]
    if fastest:
        record(f"bge-export embed, in-process, {fastest[0]}", embed(f"local {fastest[0]}", bundles[fastest[0]]))
    for workers in (1, 2):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
        try:
            seconds = embed(f"ray {workers}", bundles["ort-cpu"], ray="local", workers=workers)
        finally:
            ray.shutdown()
        record(f"bge-export embed --ray, {workers} actor{'s' if workers > 1 else ''} x {2 // workers} CPU, ort-cpu",
               seconds, {"actors": workers, "cpus_per_actor": 2 // workers})
    from FlagEmbedding import FlagModel

    model = FlagModel(str(embedded_default_path()), pooling_method="mean", use_fp16=False, devices="cpu")
    start = time.perf_counter()
    model.encode(texts, batch_size=256)
    record("FlagModel.encode (fp32 torch), batch 256", time.perf_counter() - start)
    with open(out_dir / "corpus.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    base = rows[0]["rows_per_s"]
    lines = [f"CPU: {rows[0]['cpu']} (2 cores); {len(texts):,} passages, {tokens:,} tokens", "",
             "| contender | seconds | rows/s | tokens/s | vs in-process ort-cpu |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['contender']} | {r['seconds']} | {r['rows_per_s']} | {r['tokens_per_s']:,} | "
              f"{r['rows_per_s'] / base:.2f}x |" for r in rows]
    (out_dir / "corpus.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.barh([r["contender"] for r in rows][::-1], [r["rows_per_s"] for r in rows][::-1])
        ax.set_xlabel("rows / s")
        ax.set_title(f"{len(texts):,} passages, all-MiniLM-L6-v2, {rows[0]['cpu']} (2 cores)")
        fig.tight_layout()
        fig.savefig(out_dir / "corpus.png", dpi=110)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(run())
