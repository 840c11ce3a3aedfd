"""The cross-encoder family's runtime: FlagEmbedding's ``FlagReranker`` API on an engine bundle."""
from __future__ import annotations

from typing import Any

import numpy as np

from runtimes.batcher import Job
from runtimes.bundle import Bundle
from runtimes.errors import InputError
from runtimes.flag_api import RERANK
from runtimes.postprocess import sigmoid
from runtimes.service import BundleModel, Call


class CrossEncoderModel(BundleModel):
    """Drop-in for ``FlagEmbedding.FlagReranker``: ``compute_score(pairs, normalize=False)`` returns a list of
    floats, one per (query, passage) pair, even for a single pair."""

    api_methods = ("compute_score",)
    calls = {"compute_score": Call("sentence_pairs")}
    flag_signature = RERANK
    auto_model_class = ("reranker", "encoder-only-base")
    loads_half_on_cpu = False
    output_name = "score"  # the graph output holding each pair's score

    def __init__(
        self,
        bundle: Bundle,
        *,
        query_instruction_for_rerank: str | None = None,
        query_instruction_format: str = "{}{}",
        passage_instruction_for_rerank: str | None = None,
        passage_instruction_format: str = "{}{}",
        batch_size: int = 128,
        query_max_length: int | None = None,
        max_length: int | None = None,
        normalize: bool = False,
        backend_options: dict | None = None,
    ):
        super().__init__(bundle, backend_options=backend_options)
        self.query_instruction_for_rerank = query_instruction_for_rerank
        self.query_instruction_format = self.check_instruction_format(query_instruction_format, "query_instruction_format")
        self.passage_instruction_for_rerank = passage_instruction_for_rerank
        self.passage_instruction_format = self.check_instruction_format(passage_instruction_format,
                                                                        "passage_instruction_format")
        self.batch_size = self.check_batch_size(batch_size)
        self.max_length = self.check_max_length(max_length if max_length is not None else self.defaults["max_length"])
        self.query_max_length = None if query_max_length is None else self.check_max_length(query_max_length)
        self.normalize = bool(normalize)

    def compute_score_job(self, sentence_pairs, batch_size: int | None = None, query_max_length: int | None = None,
                          max_length: int | None = None, normalize: bool | None = None, **kwargs: Any) -> Job:
        extra = self.score_options(kwargs)
        pairs = self.check_pairs(sentence_pairs)
        batch_size = self.check_batch_size(batch_size if batch_size is not None else self.batch_size)
        max_length = self.check_max_length(max_length if max_length is not None else self.max_length)
        if query_max_length is None:
            query_max_length = self.query_max_length if self.query_max_length is not None else max_length * 3 // 4
        query_max_length = self.check_max_length(query_max_length)
        queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
        if self.query_instruction_for_rerank is not None:
            queries = [self.apply_instruction(self.query_instruction_format, self.query_instruction_for_rerank, q)
                       for q in queries]
        if self.passage_instruction_for_rerank is not None:
            passages = [self.apply_instruction(self.passage_instruction_format, self.passage_instruction_for_rerank, p)
                        for p in passages]
        items = self.pair_items(queries, passages, query_max_length, max_length, **extra)
        normalize = normalize if normalize is not None else self.normalize
        name, select, format_scores = self.output_name, self.select_scores, self.format_scores

        def finish(scores: list):
            scores = select(np.stack(scores).astype(np.float64), **extra)
            return format_scores(sigmoid(scores) if normalize else scores)

        return Job(items, finish, outputs=(name,), batch_size=batch_size, per_item=lambda out, item: out[name])

    # --- what the reranker families change --------------------------------------------------------
    def score_options(self, kwargs: dict) -> dict:
        """The family's extra compute_score keywords, validated (none for cross-encoders)."""
        if kwargs:
            raise InputError(f"compute_score() got unsupported keyword arguments {sorted(kwargs)}")
        return {}

    def pair_items(self, queries, passages, query_max_length, max_length, **extra) -> list:
        """The token sequences of the (query, passage) pairs."""
        return self.tokenizer.encode_pairs(queries, passages, query_max_length, max_length)

    def select_scores(self, scores: np.ndarray, **extra) -> np.ndarray:
        """The graph's scores of every pair (stacked in input order, float64) -> the scores the call returns."""
        return scores

    @staticmethod
    def format_scores(scores: np.ndarray):
        """FlagReranker returns a list of floats, even for one pair."""
        return [float(s) for s in scores]

    @staticmethod
    def check_pairs(sentence_pairs) -> list[tuple[str, str]]:
        """A (query, passage) pair or a list of them, every item a str; FlagReranker wraps a single pair."""
        if isinstance(sentence_pairs, (str, bytes)) or sentence_pairs is None or not hasattr(sentence_pairs, "__len__"):
            raise InputError(f"sentence_pairs must be a [query, passage] pair or a list of them, got "
                             f"{type(sentence_pairs).__name__}")
        if len(sentence_pairs) == 0:
            raise InputError("sentence_pairs is empty; pass at least one [query, passage] pair")
        items = list(sentence_pairs)
        if isinstance(items[0], str):
            items = [items]
        out = []
        for i, pair in enumerate(items):
            if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise InputError(f"sentence_pairs[{i}] must be a [query, passage] pair of two str, got {pair!r:.60}")
            q, p = pair
            if not isinstance(q, str) or not isinstance(p, str):
                raise InputError(f"sentence_pairs[{i}] holds {type(q).__name__} and {type(p).__name__}; "
                                 "both query and passage must be str")
            out.append((q, p))
        return out
