"""The m3 family's runtime: FlagEmbedding's ``BGEM3FlagModel`` API on an engine bundle.

The graph gives raw heads; everything FlagEmbedding does after the model is reproduced by runtimes.postprocess:
truncate_dim then L2 normalisation (dense and ColBERT), lexical dicts keyed by ``str(token_id)`` with the max weight
over repeats (only weights > 0, cls/eos/pad/unk dropped), ColBERT trimmed to the real tokens, and every score. Token
sequences go through runtimes.batcher: sorted by length for ``encode``, in FlagEmbedding's own batches for
``compute_score``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtimes.batcher import EngineBatch, Job
from runtimes.bundle import Bundle
from runtimes.errors import InputError
from runtimes.flag_api import EMBED_HEAD, EMBED_TAIL
from runtimes.postprocess import (SCORE_KEYS, colbert_score, colbert_token_counts, finish_embeddings,
                                  lexical_matching_score, lexical_weights, m3_scores, maybe_normalize,
                                  padded_colbert_scores, sparse_dot, trim_colbert)
from runtimes.reranker import CrossEncoderModel
from runtimes.service import HEADS, BundleModel, Call

__all__ = ["M3Model", "SCORE_KEYS"]


class M3Model(BundleModel):
    """Drop-in for ``FlagEmbedding.BGEM3FlagModel``: ``encode`` (dict of dense_vecs / lexical_weights /
    colbert_vecs), ``encode_queries``, ``encode_corpus``, ``compute_lexical_matching_score``, ``colbert_score``,
    ``convert_id_to_token`` and ``compute_score`` (the five score kinds)."""

    api_methods = ("encode", "encode_queries", "encode_corpus", "compute_score", "compute_lexical_matching_score",
                   "colbert_score", "convert_id_to_token")
    calls = {"encode": Call("sentences", HEADS), "encode_queries": Call("queries", HEADS),
             "encode_corpus": Call("corpus", HEADS), "compute_score": Call("sentence_pairs")}
    per_call_options = ("normalize_embeddings", "truncate_dim")
    flag_signature = EMBED_HEAD + [("query_instruction_format", "{}{}"), ("devices", None), ("pooling_method", "cls"),
                                   ("trust_remote_code", False), ("cache_dir", None), ("colbert_dim", -1)] + EMBED_TAIL + [
        ("return_dense", True), ("return_sparse", False), ("return_colbert_vecs", False), ("truncate_dim", None)]
    auto_model_class = ("embedder", "encoder-only-m3")
    loads_half_on_cpu = True

    def __init__(
        self,
        bundle: Bundle,
        *,
        normalize_embeddings: bool = True,
        query_instruction_for_retrieval: str | None = None,
        query_instruction_format: str = "{}{}",
        batch_size: int = 256,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        max_length: int | None = None,
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert_vecs: bool = False,
        truncate_dim: int | None = None,
        passage_instruction_for_retrieval: str | None = None,
        passage_instruction_format: str = "{}{}",
        backend_options: dict | None = None,
    ):
        super().__init__(bundle, backend_options=backend_options)
        info = bundle.manifest.data["model"]
        self.hidden_size, self.colbert_dim = int(info["hidden_size"]), int(info["colbert_dim"])
        self.init_embedder_options(
            normalize_embeddings=normalize_embeddings, query_instruction_for_retrieval=query_instruction_for_retrieval,
            query_instruction_format=query_instruction_format, batch_size=batch_size, max_length=max_length,
            passage_instruction_for_retrieval=passage_instruction_for_retrieval,
            passage_instruction_format=passage_instruction_format, query_max_length=query_max_length,
            passage_max_length=passage_max_length, truncate_dim=truncate_dim,
            truncate_limit=min(self.hidden_size, self.colbert_dim))
        self.return_dense, self.return_sparse, self.return_colbert_vecs = return_dense, return_sparse, return_colbert_vecs
        self.unused_token_ids = set(self.defaults["unused_token_ids"])

    @property
    def max_length(self) -> int:
        """The passages' max_length (as EncoderModel's)."""
        return self.passage_max_length

    # --- encode ----------------------------------------------------------------------------------------
    def encode_queries_job(self, queries, batch_size=None, max_length=None, return_dense=None, return_sparse=None,
                       return_colbert_vecs=None, **kwargs: Any):
        return self.encode_job(queries, batch_size, max_length if max_length is not None else self.query_max_length,
                           return_dense, return_sparse, return_colbert_vecs,
                           instruction=self.query_instruction_for_retrieval,
                           instruction_format=self.query_instruction_format, **kwargs)

    def encode_corpus_job(self, corpus, batch_size=None, max_length=None, return_dense=None, return_sparse=None,
                      return_colbert_vecs=None, **kwargs: Any):
        return self.encode_job(corpus, batch_size, max_length if max_length is not None else self.passage_max_length,
                           return_dense, return_sparse, return_colbert_vecs,
                           instruction=self.passage_instruction_for_retrieval,
                           instruction_format=self.passage_instruction_format, **kwargs)

    def encode_job(self, sentences, batch_size=None, max_length=None, return_dense=None, return_sparse=None,
                   return_colbert_vecs=None, instruction=None, instruction_format=None, **kwargs: Any) -> Job:
        kwargs.pop("convert_to_numpy", None)  # FlagEmbedding ignores it here too
        if kwargs:
            raise InputError(f"encode() got unsupported keyword arguments {sorted(kwargs)}")
        want_d = self.return_dense if return_dense is None else return_dense
        want_s = self.return_sparse if return_sparse is None else return_sparse
        want_c = self.return_colbert_vecs if return_colbert_vecs is None else return_colbert_vecs
        if not (want_d or want_s or want_c):
            raise InputError("choose at least one of return_dense, return_sparse, return_colbert_vecs")
        single, texts = self.check_texts(sentences, "sentences")
        if instruction is not None:
            fmt = self.check_instruction_format(instruction_format or "{}{}", "instruction_format")
            texts = [self.apply_instruction(fmt, instruction, t) for t in texts]
        batch_size = self.check_batch_size(batch_size if batch_size is not None else self.batch_size)
        max_length = self.check_max_length(max_length if max_length is not None else self.passage_max_length)

        encoded = self.tokenizer.encode(texts, max_length)
        wanted = [name for name, want in (("dense_vecs", want_d), ("token_weights", want_s), ("colbert_vecs", want_c))
                  if want]

        unused, finish_vecs = self.unused_token_ids, self._finish

        def per_item(out: dict, item) -> tuple:
            return (out["dense_vecs"] if want_d else None,
                    lexical_weights(out["token_weights"], item.ids, unused) if want_s else None,
                    finish_vecs(trim_colbert(out["colbert_vecs"])) if want_c else None)

        def finish(values: list) -> dict:
            dense, lexical, colbert = zip(*values)
            result = {
                "dense_vecs": finish_vecs(np.stack(dense)) if want_d else None,
                "lexical_weights": list(lexical) if want_s else None,
                "colbert_vecs": list(colbert) if want_c else None,
            }
            if single:
                result = {k: (v[0] if v is not None else None) for k, v in result.items()}
            return result

        return Job(encoded, finish, outputs=tuple(wanted), batch_size=batch_size, per_item=per_item)

    def _finish(self, vecs: np.ndarray) -> np.ndarray:
        """FlagEmbedding's order: truncate_dim first, then L2 normalisation (zero vectors stay zero)."""
        # a copy: a view would keep its whole engine batch alive after batcher.map drops it
        return np.array(finish_embeddings(vecs, truncate_dim=self.truncate_dim, normalize=self.normalize_embeddings))

    # --- scores --------------------------------------------------------------------------------------
    @staticmethod
    def compute_lexical_matching_score(lexical_weights_1, lexical_weights_2):
        score = lexical_matching_score(lexical_weights_1, lexical_weights_2)
        if score is None:
            raise InputError("compute_lexical_matching_score takes two lexical-weight dicts or two lists of them")
        return score

    @staticmethod
    def colbert_score(q_reps, p_reps) -> float:
        """(1/n_q) * sum_i max_j <q_i, p_j>. FlagEmbedding returns a torch scalar; this returns a float."""
        q, p = np.asarray(q_reps, dtype=np.float32), np.asarray(p_reps, dtype=np.float32)
        if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1] or len(q) == 0 or len(p) == 0:
            raise InputError(f"colbert_score takes two (n, dim) arrays with the same dim, got {q.shape} and {p.shape}")
        return colbert_score(q, p)

    def convert_id_to_token(self, lexical_weights):
        items = [lexical_weights] if isinstance(lexical_weights, dict) else list(lexical_weights)
        out = [{self.tokenizer.decode_one(int(tid), self.defaults["clean_up_tokenization_spaces"]): w
                for tid, w in item.items()} for item in items]
        return out[0] if len(out) == 1 else out

    def compute_score_job(self, sentence_pairs, batch_size=None, max_query_length=None, max_passage_length=None,
                          weights_for_different_modes=None, **kwargs: Any) -> Job:
        """FlagEmbedding's five scores per pair. As there, pairs are batched in input order (not sorted), no
        instruction and no truncate_dim apply, and ColBERT runs on each padded batch, so a passage padded in its
        batch lets a query token count max(…, 0)."""
        if kwargs:
            raise InputError(f"compute_score() got unsupported keyword arguments {sorted(kwargs)}")
        pairs = CrossEncoderModel.check_pairs(sentence_pairs)
        single = isinstance(sentence_pairs[0], str)  # one (query, passage) pair: floats instead of lists
        batch_size = self.check_batch_size(batch_size if batch_size is not None else self.batch_size)
        q_len = self.check_max_length(max_query_length if max_query_length is not None else self.query_max_length)
        p_len = self.check_max_length(max_passage_length if max_passage_length is not None else self.passage_max_length)
        w = [1.0, 1.0, 1.0] if weights_for_different_modes is None else [float(x) for x in weights_for_different_modes]
        if len(w) != 3:
            raise InputError(f"weights_for_different_modes must hold 3 weights (dense, sparse, colbert), got {w}")
        # FlagEmbedding's batch composition: the caller's order, batch_size pairs at a time, queries and passages
        # as separate engine batches (run lazily: chunk k's queries, then its passages, then chunk k + 1). The
        # scores depend on it, so this job runs its own batches (never pooled with other calls)
        q_items = self.tokenizer.encode([a for a, _ in pairs], q_len)
        p_items = self.tokenizer.encode([b for _, b in pairs], p_len)

        def run(batcher) -> dict:
            queries = batcher.batches(q_items, batch_size, keep_order=True)
            passages = batcher.batches(p_items, batch_size, keep_order=True)
            scores = {k: [] for k in SCORE_KEYS}
            for q_batch, p_batch in zip(queries, passages):
                for k, v in self._pair_scores(q_batch, p_batch, w).items():
                    scores[k] += v
            scores = {k: [float(x) for x in v] for k, v in scores.items()}
            return {k: v[0] for k, v in scores.items()} if single else scores

        return Job(q_items + p_items, finish=None, batch_size=batch_size, exclusive=run)

    def _pair_scores(self, q: EngineBatch, p: EngineBatch, weights) -> dict[str, list[float]]:
        """The five scores of the pairs (q row i, p row i) of two padded batches: ColBERT on the padded rows (the
        finishing step FlagEmbedding's batch composition asks for), the rest per pair."""
        def side(batch: EngineBatch) -> dict:
            out = batch.outputs
            return {"dense": maybe_normalize(out["dense_vecs"], self.normalize_embeddings),
                    "sparse": [lexical_weights(batch.output("token_weights", row), item.ids, self.unused_token_ids)
                               for row, item in enumerate(batch.items)],
                    "colbert": maybe_normalize(trim_colbert(out["colbert_vecs"]), self.normalize_embeddings),
                    "n": colbert_token_counts(batch.feeds["attention_mask"])}

        qs, ps = side(q), side(p)
        dense = (qs["dense"] * ps["dense"]).sum(-1)
        sparse = np.array([sparse_dot(a, b) for a, b in zip(qs["sparse"], ps["sparse"])])
        colbert = padded_colbert_scores(qs["colbert"], qs["n"], ps["colbert"])
        return m3_scores(dense, sparse, colbert, weights)
