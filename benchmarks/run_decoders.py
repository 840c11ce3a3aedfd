"""The decoder families at a mid size, against FlagEmbedding, in ONE process: random weights in an 8-layer decoder
(hidden 512, 8 heads, 2-4 KV heads, FFN 1536, the tiny tokenizers' vocabulary), ort-cpu bundles (and ort-cpu-int8
for the LLM reranker and the Gemma2 embedder), timed with `bge-export bench`'s method (bge_export/bench/) against
the matching FlagEmbedding class built through bge_export.reference with the bundle's options:

  llm-reranker         Gemma      FlagLLMReranker.compute_score
  layerwise-reranker   MiniCPM    LayerWiseFlagLLMReranker.compute_score, cutoff layers 6,8 (start_layer 4)
  compressed-reranker  Gemma2     LightWeightFlagLLMReranker.compute_score, cutoff 8, compress_ratio 2, layers 4
  llm-embedder         Gemma2     FlagLLMModel.encode_corpus / encode_queries (eager attention, soft-cap on)
  llm-embedder (ICL)   Mistral    FlagICLModel.encode_corpus / encode_queries

Timing needs only the shapes; parity is proven on the tiny checkpoints by the test suite, so the bundles are built
without the parity step. Each cell also compares the first results of bundle and reference on the same inputs
(max abs difference; the weights use the builders' initializer range 0.2, so the outputs depend on the input).

    .venv/bin/python -m benchmarks.run_decoders [--family llm-reranker ...] [--repeats 3]
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

from bge_export import bench
from bge_export.compile import compile_bundle
from parity_tests import tiny_checkpoints as tiny

HERE = Path(__file__).resolve().parent
MID = {"hidden_size": 512, "num_hidden_layers": 8, "intermediate_size": 1536, "num_attention_heads": 8}
# name -> (builder, folder name FlagEmbedding dispatches on, shape overrides, bundle variant, also int8)
FAMILIES = {
    "llm-reranker": (tiny.tiny_gemma_reranker, "bge-reranker-v2-gemma", {"num_key_value_heads": 2}, {}, True),
    "layerwise-reranker": (tiny.tiny_minicpm_layerwise, "bge-reranker-v2-minicpm-layerwise",
                           {"num_key_value_heads": 4, "start_layer": 4}, {"cutoff_layers": "6,8"}, False),
    "compressed-reranker": (tiny.tiny_gemma2_lightweight, "bge-reranker-v2.5-gemma2-lightweight",
                            {"num_key_value_heads": 4, "start_layer": 4},
                            {"cutoff_layers": "8", "compress_ratio": 2, "compress_layers": "4"}, False),
    "llm-embedder-gemma2": (tiny.tiny_gemma2_embedder, "bge-multilingual-gemma2", {"num_key_value_heads": 4}, {}, True),
    "llm-embedder-icl": (tiny.tiny_mistral_icl, "bge-en-icl", {"num_key_value_heads": 2}, {}, False),
}


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--batch-sizes", default="8,32")
    p.add_argument("--seq-lens", default="128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-int8", action="store_true", help="ort-cpu bundles only")
    p.add_argument("--out", default=str(HERE / "results" / "decoders-mid-cpu"))
    args = p.parse_args()
    batches, seqs = bench.ints(args.batch_sizes, "--batch-sizes"), bench.ints(args.seq_lens, "--seq-lens")
    t_start = time.perf_counter()
    rows, envs, timings = [], {}, {}
    for name in args.family:
        builder, folder, shape, variant, int8 = FAMILIES[name]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bge-bench-{name}-") as work:
            ckpt = builder(Path(work) / folder, **MID, **shape)
            bundles = []
            for target in ("ort-cpu", "ort-cpu-int8") if int8 and not args.no_int8 else ("ort-cpu",):
                res = compile_bundle(str(ckpt), target, Path(work) / target, variant=variant, parity=False, quiet=True)
                bundles.append(res.bundle)
            t_built = time.perf_counter()
            print(f"== {name}: checkpoint + {len(bundles)} bundle(s) in {t_built - t0:.0f}s", flush=True)
            settings = bench.BenchSettings(batches=tuple(batches), seqs=tuple(seqs), repeats=args.repeats,
                                           warmup=args.warmup, peers=bench.Peers(optimum=False))
            cell_rows, env = bench.run_bench(bundles, settings)
        timings[name] = {"build_s": round(t_built - t0, 1), "bench_s": round(time.perf_counter() - t_built, 1)}
        print(f"== {name}: timed in {timings[name]['bench_s']:.0f}s", flush=True)
        envs[name] = env
        rows += [{**r, "group": name} for r in cell_rows]
        gc.collect()
    total = time.perf_counter() - t_start
    write(rows, envs, timings, total, Path(args.out), args)
    return 0


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def overview(rows: list[dict], envs: dict) -> str:
    """One line per family, bundle and cell: tokens/s and the ratios over FlagEmbedding, and the sanity check."""
    head = ["family", "API", "bundle", "batch x ~tokens", "tokens/call", "e2e tokens/s (FlagEmbedding)",
            "e2e x FE", "e2e-queries x FE", "engine x FE", "max abs diff vs FE (first results)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for group in dict.fromkeys(r["group"] for r in rows):
        g = [r for r in rows if r["group"] == group]
        api = envs[group]["api"]
        ref_name = next(r["contender"] for r in g if r["contender"].startswith("FlagEmbedding"))
        for name in dict.fromkeys(r["contender"] for r in g if r["contender"].startswith("bge-export")):
            for b, s in sorted({(r["batch"], r["seq"]) for r in g}, key=lambda c: (c[1], c[0])):
                get = {r["mode"]: r for r in g if (r["contender"], r["batch"], r["seq"]) == (name, b, s)}
                ref = {r["mode"]: r for r in g if (r["contender"], r["batch"], r["seq"]) == (ref_name, b, s)}
                checks = "; ".join(f"{m}: {bench.check_text(get[m])}" for m in get if "check_max_abs" in get[m])
                lines.append(
                    f"| {group} | {api} | {name.split()[-1]} | {b} x {s} | {get['e2e']['tokens']} | "
                    f"{get['e2e']['tokens_per_s']:.0f} ({ref['e2e']['tokens_per_s']:.0f}) | "
                    f"{_fmt(get['e2e'].get('speedup_vs_reference'))} | "
                    f"{_fmt(get.get('e2e-queries', {}).get('speedup_vs_reference'))} | "
                    f"{_fmt(get['engine'].get('speedup_vs_reference'))} | {checks} |")
    return "\n".join(lines) + "\n"


def write(rows, envs, timings, total, out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "env": envs[r["group"]], "timing": timings[r["group"]]}) + "\n")
    env = next(iter(envs.values()))
    md = ["# Decoder families, mid-sized random weights, CPU\n",
          f"`python -m benchmarks.run_decoders` (batch sizes {args.batch_sizes}, ~{args.seq_lens} tokens per text or "
          f"pair, warm-up {args.warmup}, median of {args.repeats} timed runs, contenders interleaved in one process). "
          f"Machine: {env['processor']}, {env['cpus']} cores, measured peaks "
          + ", ".join(f"{env['peak_kinds'][k]} {v} GFLOP/s" for k, v in env["peaks_gflops"].items())
          + f". Total run time {total / 60:.1f} min (checkpoints and bundles built in the same run).\n",
          "* Shape: 8 layers, hidden 512, 8 heads, FFN 1536, vocab of the tiny tokenizers (~1200); KV heads per "
          "family below. Random weights (initializer range 0.2); timing needs the shapes only.",
          "* e2e: `compute_score(pairs)` for the rerankers (the bundle's cutoff layers / compression; the "
          "FlagEmbedding object is built with the same options), `encode_corpus(texts)` for the embedders; "
          "e2e-queries: `encode_queries(queries)` with a retrieval instruction on both sides; engine: the model "
          "alone on the same pre-tokenized, padded tensors.",
          "* Rerankers: the whole pair (bos, `A: ` query of seq/4 tokens, `B: ` passage, separators, prompt) is "
          "about seq tokens; `tokens/call` is the real count. FlagEmbedding's public calls run one extra trial "
          "forward of the first batch (its batch-size probe), so with one batch per call its e2e runs the model "
          "twice; the engine ratio is the like-for-like compute comparison.",
          "* The sanity check compares the first results of each bundle with FlagEmbedding's on the same inputs "
          "(rerankers: max abs score difference, relative to the score spread; embedders: max abs difference "
          "of the normalised vectors and the minimum cosine).\n",
          "## Overview (ratios = median latency of FlagEmbedding / bundle)\n", overview(rows, envs)]
    for group in dict.fromkeys(r["group"] for r in rows):
        g = [r for r in rows if r["group"] == group]
        e = envs[group]
        t = timings[group]
        md += [f"\n## {group}: {e['api']} ({e['model']['model_type']}, variant "
               f"{ {k: v for k, v in e['variant'].items() if k not in ('architecture', 'export_dtype')} })\n",
               f"Built in {t['build_s']:.0f}s, timed in {t['bench_s']:.0f}s.\n",
               bench.summary_markdown(g), "", bench.markdown(g, e)]
    (out / "bench.md").write_text("\n".join(md))
    bench.plot(rows, out / "bench.png")
    print(overview(rows, envs))
    print(f"total {total / 60:.1f} min; wrote {out / 'bench.jsonl'}, {out / 'bench.md'}, {out / 'bench.png'}")


if __name__ == "__main__":
    sys.exit(run())
