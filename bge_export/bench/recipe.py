"""What a family's benchmark recipe declares: how `bge-export bench` drives its FlagEmbedding API, for the bundle's
runtime and for the reference alike. Each family carries its own as data (``bench_recipe = BenchRecipe(...)`` on
the family class, bge_export/families/); ``recipe_for`` is the one lookup."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

# The callables' arguments, by name:
#   w    the Workload below
#   x    a cell's inputs (what ``inputs`` returned)
#   b, s the cell's batch size and sequence length (tokens)
#   obj  the object whose public calls are timed: the bundle's runtime model or FlagEmbedding's object
#   ref  a FlagEmbedding object (its ``model`` and ``tokenizer``)
#   enc  the reference's pre-tokenized tensors (``ref_tensors``'s result)


@dataclass(frozen=True)
class Workload:
    """What a recipe gets to build a cell's inputs: exact-length texts, a token counter, and the first bundle's
    runtime model (whose tokenizer builds the tensors every engine contender runs on)."""
    texts: Callable[..., list[str]]  # (n, length, offset=0) -> n texts of exactly `length` tokens
    n_tok: Callable[[str], int]
    model: Any


@dataclass(frozen=True)
class BenchRecipe:
    """How the benchmark drives one FlagEmbedding API (one family)."""

    # (w, b, s) -> the cell's inputs: the texts, pairs or {"corpus", "queries"} every contender gets
    inputs: Callable[[Workload, int, int], Any]
    # the public calls, one per end-to-end mode ("e2e", and e.g. "e2e-queries"): (obj, x, b, s) -> result
    e2e: Mapping[str, Callable[[Any, Any, int, int], Any]]
    # (model, x, s) -> the bundle engine's feeds (numpy arrays by input name) for the cell's inputs
    engine_feeds: Callable[[Any, Any, int], Mapping[str, Any]]
    # (ref, enc) -> the reference model's bare forward on its pre-tokenized tensors (the engine-only call)
    ref_forward: Callable[[Any, Mapping[str, Any]], Any]
    # (ref, x, s, w) -> the reference's pre-tokenized tensors, from its own tokenizer. None: the reference runs on
    # exactly the bundle engine's feeds (``engine_feeds``): ``ref_feeds`` as torch tensors, ``ref_list_feeds`` as
    # python lists
    ref_tensors: Callable[[Any, Any, int, Workload], Mapping[str, Any]] | None = None
    ref_feeds: tuple[str, ...] = ("input_ids", "attention_mask")
    ref_list_feeds: tuple[str, ...] = ()  # e.g. the lightweight reranker's query_lengths / prompt_lengths
    # (w, x, b, s) -> the real tokens per call, by mode ({"e2e": ..., "engine": ...}); None: batch x seq
    tokens: Callable[[Workload, Any, int, int], Mapping[str, int]] | None = None
    # the options the runtime model (runtimes.load) and the FlagEmbedding object are both built with (the family
    # adds its variant's own, e.g. cutoff layers)
    options: Mapping[str, Any] = field(default_factory=dict)
    # what the sanity check compares: "vectors" (cosine + max abs) or "scores" (max abs relative to the spread)
    check: Literal["vectors", "scores"] = "vectors"
    # the part of a public call's result the sanity check compares (e.g. one head of a dict result); None: all
    check_value: Callable[[Any], Any] | None = None
    # a plain Hugging Face encoder whose pooled hidden state is the output: the peers that export or cast the
    # checkpoint themselves (optimum, optimum-intel, torch bf16 end to end) can run it
    hf_encoder: bool = False

    @property
    def modes(self) -> list[str]:
        """Every timed mode: the public calls, then the engine."""
        return list(self.e2e) + ["engine"]


def recipe_for(family) -> BenchRecipe | None:
    """The benchmark recipe of ``family`` (a family class or object); None where it declares none."""
    return getattr(family, "bench_recipe", None)
