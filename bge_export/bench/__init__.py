"""`bge-export bench`: bundles against FlagEmbedding (fp32, CPU) and optimum's ONNX export, one process.

Every contender gets the same texts (exactly ``seq`` tokens each; for the decoder rerankers and the embedders'
queries, the whole model input, prompt and instruction included, is about ``seq`` tokens) and the same batch; runs
are interleaved (round-robin, rotating order) after warm-up. Every ONNX Runtime contender (ours and optimum's graph)
runs with the same session settings and thread spinning off, so one contender's idle spinning threads never steal
the cores from the next one. Timings per contender:
  e2e          the public call: ``encode(texts)`` / ``compute_score(pairs)`` (tokenize + batch + run + post-process);
               the LLM embedders: ``encode_corpus(texts)``
  e2e-queries  the LLM embedders only: ``encode_queries(queries)`` with a retrieval instruction
  engine       the model alone on pre-tokenized, pre-padded tensors
Rows: median / p95 / p99 latency, tokens/s (real tokens the model sees), GFLOP/s of the work each contender does
(a CLS-only last layer counts as such) and its fraction of the peak of its own precision measured here, the
speed-up over FlagEmbedding, and a sanity check: the max abs difference of
each e2e result from FlagEmbedding's on the same inputs. Output: bench.jsonl, bench.md, bench.png.

The package: settings (BenchSettings: what a run times), args (the CLI's arguments -> BenchSettings, and the run),
texts (exact-length inputs), peaks (the GEMM peaks), recipe (BenchRecipe: how a family's FlagEmbedding API is
driven; each family declares its own), contenders (the bundles and the peers), harness (the timing loop:
run_bench), report (bench.jsonl / bench.md / bench.png).
"""
from __future__ import annotations

import importlib

# the package's public names -> their module, imported on first use (families import bench.recipe, so this package
# must stay light to import)
_EXPORTS = {
    "DEFAULT_BATCHES": "settings", "DEFAULT_SEQS": "settings", "add_arguments": "args", "ints": "args",
    "settings_from_args": "args", "run_from_args": "args", "BenchSettings": "settings", "Peers": "settings",
    "run_bench": "harness",
    "matmul_gflops": "peaks", "BenchRecipe": "recipe", "Workload": "recipe", "recipe_for": "recipe",
    "best_markdown": "report", "check_text": "report", "markdown": "report", "plot": "report",
    "summary_markdown": "report", "write_outputs": "report", "exact_length_texts": "texts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
