"""The decoder families' runtimes: FlagEmbedding's FlagLLMReranker, LayerWiseFlagLLMReranker,
LightWeightFlagLLMReranker, FlagLLMModel and FlagICLModel APIs on an engine bundle.

Prompt and pair building happen here, token for token as FlagEmbedding builds them (reference-semantics §3-§8):
``[bos] + "A: "query`` (cut to query_max_length), ``"\\n" + "B: "passage`` (cut to max_length and then so that the
pair fits ``max_length + len(sep) + len(prompt)``), then ``"\\n" + prompt``; batches padded to a multiple of 8.
Export-time variants (cutoff layers, compression) are fixed in the graph: asking for others is a clear error.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtimes.bundle import Bundle
from runtimes.encoder import EncoderModel
from runtimes.errors import IncompatibleBundleError, InputError
from runtimes.flag_api import EMBED_HEAD, EMBED_TAIL, LLM_RERANK, LLM_RERANK_TAIL
from runtimes.reranker import CrossEncoderModel
from runtimes.tokenizer import Encoded


def _layers(value, what: str) -> list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise InputError(f"{what} must be an int or a non-empty list of ints, got {value!r}")
    return [int(v) for v in value]


class LLMRerankerModel(CrossEncoderModel):
    """Drop-in for ``FlagEmbedding.FlagLLMReranker``: ``compute_score(pairs, normalize=False, prompt=None)`` returns
    a list of floats (the "Yes" logit of each pair, or its sigmoid), even for one pair."""

    flag_signature = LLM_RERANK + LLM_RERANK_TAIL
    auto_model_class = ("reranker", "decoder-only-base")

    output_name = "score"

    def __init__(
        self,
        bundle: Bundle,
        *,
        query_instruction_for_rerank: str | None = "A: ",
        query_instruction_format: str = "{}{}",
        passage_instruction_for_rerank: str | None = "B: ",
        passage_instruction_format: str = "{}{}",
        prompt: str | None = None,
        batch_size: int = 128,
        query_max_length: int | None = None,
        max_length: int = 512,
        normalize: bool = False,
        backend_options: dict | None = None,
    ):
        super().__init__(bundle, query_instruction_for_rerank=query_instruction_for_rerank,
                         query_instruction_format=query_instruction_format,
                         passage_instruction_for_rerank=passage_instruction_for_rerank,
                         passage_instruction_format=passage_instruction_format, batch_size=batch_size,
                         query_max_length=query_max_length, max_length=max_length, normalize=normalize,
                         backend_options=backend_options)
        self.prompt = self._check_prompt(prompt)
        self.batcher.pad_to_multiple_of = int(self.defaults["pad_to_multiple_of"])
        self.bos_token_id = self.defaults.get("bos_token_id")
        self.add_bos = bool(self.defaults.get("add_bos"))
        self.sep_ids = self.tokenizer.encode_plain(["\n"])[0]

    @staticmethod
    def _check_prompt(prompt):
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"prompt must be a str or None, got {type(prompt).__name__}")
        return prompt

    def score_options(self, kwargs: dict) -> dict:
        prompt = self._check_prompt(kwargs.pop("prompt", None))
        if kwargs:
            raise InputError(f"compute_score() got unsupported keyword arguments {sorted(kwargs)}")
        return {"prompt": prompt}

    def build_pairs(self, queries, passages, query_max_length: int, max_length: int, prompt: str | None):
        """FlagEmbedding's token-level pair building; each Encoded also carries the query / prompt lengths that
        the compressed reranker's graph reads."""
        prompt = prompt if prompt is not None else (self.prompt if self.prompt is not None else self.defaults["prompt"])
        prompt_ids = self.tokenizer.encode_plain([prompt])[0]
        sep = self.sep_ids
        limit = max_length + len(sep) + len(prompt_ids)
        q_ids = self.tokenizer.encode_plain(queries, query_max_length)
        p_ids = self.tokenizer.encode_plain(passages, max_length)
        head = [self.bos_token_id] if self.add_bos else []
        out = []
        for q, p in zip(q_ids, p_ids):
            first, second = head + q, sep + p
            excess = len(first) + len(second) - limit
            if 0 < excess < len(second):  # 'only_second' truncation; too short to absorb it: left as is
                second = second[:-excess] if self.tokenizer.truncation_side == "right" else second[excess:]
            ids = first + second + sep + prompt_ids
            if len(ids) > self.max_supported_length:
                raise InputError(
                    f"a pair takes {len(ids)} tokens with the prompt ({len(prompt_ids)} tokens), above the model's "
                    f"position limit {self.max_supported_length}; use a shorter prompt or a smaller max_length")
            out.append(Encoded(ids, [0] * len(ids), {"query_lengths": len(first) + len(sep),
                                                     "prompt_lengths": len(sep) + len(prompt_ids)}))
        return out

    def pair_items(self, queries, passages, query_max_length, max_length, prompt=None, **extra) -> list:
        return self.build_pairs(queries, passages, query_max_length, max_length, prompt)


class LayerWiseRerankerModel(LLMRerankerModel):
    """Drop-in for ``LayerWiseFlagLLMReranker``: ``compute_score(pairs, cutoff_layers=None)`` returns a list of floats
    for one cutoff layer, else one list per cutoff layer. ``cutoff_layers=None`` means the layers the bundle was
    built for; any subset of them can be asked for (in ascending order)."""

    flag_signature = LLM_RERANK + [("cutoff_layers", None)] + LLM_RERANK_TAIL
    auto_model_class = ("reranker", "decoder-only-layerwise")

    output_name = "scores"

    def __init__(self, bundle: Bundle, *, cutoff_layers=None, **options: Any):
        super().__init__(bundle, **options)
        self.built_cutoffs = list(self.defaults["cutoff_layers"])
        if cutoff_layers is not None:
            self.select_cutoffs(cutoff_layers)  # validated now, applied per call
        self.cutoff_layers = cutoff_layers

    def select_cutoffs(self, value) -> list[int]:
        """Columns of the graph's scores for the requested cutoff layers."""
        layers = _layers(value, "cutoff_layers")
        if layers != sorted(set(layers)):
            raise InputError(f"cutoff_layers {layers} must be given in ascending order without repeats (FlagEmbedding "
                             "pairs an unsorted list with the wrong heads)")
        missing = [c for c in layers if c not in self.built_cutoffs]
        if missing:
            raise IncompatibleBundleError(
                f"this bundle was built for cutoff layers {self.built_cutoffs}, not {missing}; rebuild it with "
                f"`bge-export --cutoff-layers {','.join(map(str, sorted(set(self.built_cutoffs) | set(layers))))}`")
        return [self.built_cutoffs.index(c) for c in layers]

    def score_options(self, kwargs: dict) -> dict:
        value = kwargs.pop("cutoff_layers", None)
        value = value if value is not None else self.cutoff_layers
        columns = list(range(len(self.built_cutoffs))) if value is None else self.select_cutoffs(value)
        return {**super().score_options(kwargs), "columns": columns}

    def select_scores(self, scores: np.ndarray, columns=None, **extra) -> np.ndarray:
        return scores[:, columns].T  # (n_cutoffs, N)

    @staticmethod
    def format_scores(scores: np.ndarray):
        lists = [[float(s) for s in row] for row in scores]
        return lists[0] if len(lists) == 1 else lists


class LightWeightRerankerModel(LayerWiseRerankerModel):
    """Drop-in for ``LightWeightFlagLLMReranker``: ``compute_score(pairs, cutoff_layers=None, compress_ratio=None,
    compress_layers=None)``. The cutoff layers and compression are compiled into the graph; ``None`` means the
    bundle's settings, other values must match them (a leading subset of the cutoff layers is fine). Padding is
    always on the right, as FlagEmbedding forces it (token compression needs it)."""

    # FlagEmbedding's defaults compress_layers=[8], compress_ratio=1 (no compression); a bundle records its own, so
    # these defaults are only checked when passed
    flag_signature = LLM_RERANK + [("cutoff_layers", None), ("compress_layers", [8]), ("compress_ratio", 1)] + \
        LLM_RERANK_TAIL
    auto_model_class = ("reranker", "decoder-only-lightweight")

    def __init__(self, bundle: Bundle, *, compress_ratio=None, compress_layers=None, **options: Any):
        super().__init__(bundle, **options)
        self.tokenizer.padding_side = "right"
        self.compress_ratio, self.compress_layers = compress_ratio, compress_layers
        self.score_options({})  # validate the constructor's settings now

    def pair_items(self, *args, **kwargs) -> list:
        if self.tokenizer.padding_side != "right":
            raise InputError("the lightweight reranker needs right padding (its graph reads [query][passage][prompt] "
                             "from the left edge and token compression assumes it; FlagEmbedding forces it too); "
                             "set model.tokenizer.padding_side = 'right'")
        return super().pair_items(*args, **kwargs)

    def select_cutoffs(self, value) -> list[int]:
        # FlagEmbedding records states in ascending layer order and scores the i-th with head i: a leading
        # subset of the built cutoffs uses the same heads, any other subset would not.
        layers = sorted(set(_layers(value, "cutoff_layers")))
        if layers != self.built_cutoffs[:len(layers)]:
            raise IncompatibleBundleError(
                f"this bundle was built for cutoff layers {self.built_cutoffs} (it serves {self.built_cutoffs} or a "
                f"leading part of it), not {layers}; rebuild it with `bge-export --cutoff-layers "
                f"{','.join(map(str, layers))}`")
        return list(range(len(layers)))

    def score_options(self, kwargs: dict) -> dict:
        ratio = kwargs.pop("compress_ratio", None)
        layers = kwargs.pop("compress_layers", None)
        alias = kwargs.pop("compress_layer", None)  # FlagEmbedding's deprecated spelling
        layers = layers if layers is not None else alias
        ratio = ratio if ratio is not None else self.compress_ratio
        layers = layers if layers is not None else self.compress_layers
        out = super().score_options(kwargs)
        d = self.defaults
        if ratio is not None or layers is not None:
            r = d["compress_ratio"] if ratio is None else ratio
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
                raise InputError(f"compress_ratio must be a positive int, got {r!r}")
            asked = d["compress_layers"] if layers is None else _layers(layers, "compress_layers")
            built = compression(d["compress_ratio"], d["compress_layers"], d["cutoff_layers"])
            if compression(int(r), asked, d["cutoff_layers"]) != built:
                raise IncompatibleBundleError(
                    f"this bundle was built with compress_ratio={d['compress_ratio']}, compress_layers="
                    f"{d['compress_layers']} (compression before layers {built[1] or 'none'}); "
                    f"compress_ratio={r}, compress_layers={asked} needs another bundle: rebuild with "
                    f"`bge-export --compress-ratio {r} --compress-layers {','.join(map(str, asked))}`")
        return out


def effective_compress_layers(cutoffs: list[int], ratio: int, layers: list[int]) -> list[int]:
    """The layers before which FlagEmbedding really compresses: none at ratio 1, never before layer 0, and none
    at or past the deepest cutoff (its loop stops there)."""
    return sorted({x for x in layers if 0 < x < max(cutoffs)}) if ratio > 1 else []


def compression(ratio: int, layers: list[int], cutoffs: list[int]) -> tuple[int, list[int]]:
    """What a compression setting does, so that equivalent settings compare equal: (ratio, layers), (1, []) if none."""
    effective = effective_compress_layers(cutoffs, ratio, layers)
    return (ratio if effective else 1), effective


class LLMEmbedderModel(EncoderModel):
    """Drop-in for ``FlagEmbedding.FlagLLMModel`` (bge-multilingual-gemma2): last-token embeddings, queries with
    ``query_instruction_format`` (default ``"Instruct: {}\\nQuery: {}"``, the class's own default)."""

    flag_signature = EMBED_HEAD + [("query_instruction_format", "Instruct: {}\nQuery: {}"), ("devices", None),
                                   ("trust_remote_code", False), ("cache_dir", None)] + EMBED_TAIL + [
        ("convert_to_numpy", True), ("truncate_dim", None)]
    auto_model_class = ("embedder", "decoder-only-base")
    loads_half_on_cpu = True

    output_name = "pooled"  # the last-token hidden state (the same name as the encoder graphs)

    def __init__(self, bundle: Bundle, *, query_instruction_format: str | None = None, query_max_length: int = 512,
                 passage_max_length: int = 512, **options: Any):
        fmt = query_instruction_format if query_instruction_format is not None else \
            bundle.manifest.runtime["defaults"]["query_instruction_format"]
        super().__init__(bundle, query_instruction_format=fmt, query_max_length=query_max_length,
                         passage_max_length=passage_max_length, **options)

    def embed_job(self, encoded, batch_size: int, single: bool):
        """Last-token pooling needs a token: a text the tokenizer turns into none (an empty string, with tokenizers
        that add no BOS / EOS, such as Qwen's) is refused by name. FlagLLMModel pools a padding token that attends to
        nothing for it (one constant vector that carries no text), and raises IndexError when every text is empty."""
        empty = next((i for i, e in enumerate(encoded) if not e.ids), None)
        if empty is not None:
            raise InputError(f"text {empty} has no tokens (an empty string?): this model's tokenizer adds no special "
                             "tokens, so last-token pooling has nothing to pool; drop empty texts or give them content",
                             item=empty)
        return super().embed_job(encoded, batch_size, single)


class ICLEmbedderModel(LLMEmbedderModel):
    """Drop-in for ``FlagEmbedding.FlagICLModel`` (bge-en-icl): queries get the in-context examples as a prefix and
    ``suffix`` after a decode / re-encode round trip of the truncated query, exactly as FlagICLModel builds them;
    passages (``encode_corpus`` / ``encode``) are plain text."""

    flag_signature = EMBED_HEAD + [("query_instruction_format", "<instruct>{}\n<query>{}"), ("suffix", "\n<response>"),
                                   ("devices", None), ("examples_for_task", None),
                                   ("examples_instruction_format", "<instruct>{}\n<query>{}\n<response>{}"),
                                   ("trust_remote_code", False), ("cache_dir", None)] + EMBED_TAIL + [
        ("convert_to_numpy", True), ("truncate_dim", None)]
    auto_model_class = ("embedder", "decoder-only-icl")
    loads_half_on_cpu = True

    api_methods = LLMEmbedderModel.api_methods + ("set_examples",)
    per_call_options = LLMEmbedderModel.per_call_options + ("examples_for_task",)

    def __init__(self, bundle: Bundle, *, suffix: str = "\n<response>", examples_for_task: list[dict] | None = None,
                 examples_instruction_format: str = "<instruct>{}\n<query>{}\n<response>{}", **options: Any):
        super().__init__(bundle, **options)
        if not isinstance(suffix, str):
            raise InputError(f"suffix must be a str, got {type(suffix).__name__}")
        try:
            examples_instruction_format.replace("\\n", "\n").format("", "", "")
        except (AttributeError, IndexError, KeyError, ValueError):
            raise InputError("examples_instruction_format must be a str with three '{}' fields (instruction, query, "
                             f"response) such as '<instruct>{{}}\\n<query>{{}}\\n<response>{{}}', got "
                             f"{examples_instruction_format!r}") from None
        self.suffix = suffix
        self.examples_instruction_format = examples_instruction_format.replace("\\n", "\n")
        self.examples_for_task = None
        self.prefix = ""
        self.set_examples(examples_for_task)

    def set_examples(self, examples_for_task: list[dict] | None = None) -> None:
        """FlagICLModel.set_examples: ``None`` keeps the current examples (or none)."""
        if examples_for_task is None:
            examples_for_task = self.examples_for_task
        if examples_for_task is None:
            self.prefix = ""
            return
        if not isinstance(examples_for_task, (list, tuple)) or not all(isinstance(e, dict) for e in examples_for_task):
            raise InputError("examples_for_task must be a list of dicts with 'instruct', 'query' and 'response' keys")
        parts = []
        for i, e in enumerate(examples_for_task):
            values = (e.get("instruct", self.query_instruction_for_retrieval), e.get("query", ""), e.get("response", ""))
            if not all(isinstance(v, str) for v in values):
                raise InputError(f"examples_for_task[{i}]: 'instruct', 'query' and 'response' must be str, got "
                                 f"{[type(v).__name__ for v in values]}")
            parts.append(self.examples_instruction_format.format(*values))
        self.examples_for_task = list(examples_for_task)
        self.prefix = "\n\n".join(parts) + "\n\n"

    def set_examples_for_task(self, examples_for_task) -> None:
        """Per-call examples (with_options): None means none, unlike set_examples(None)."""
        self.examples_for_task = None
        self.set_examples(examples_for_task)

    def encode_queries_job(self, queries, batch_size=None, max_length=None, convert_to_numpy=None, **kwargs: Any):
        if kwargs:
            raise InputError(f"encode_queries() got unsupported keyword arguments {sorted(kwargs)}")
        self._check_numpy(convert_to_numpy if convert_to_numpy is not None else self.convert_to_numpy)
        single, texts = self.check_texts(queries, "queries")
        if self.query_instruction_for_retrieval is not None:
            texts = [self.apply_instruction(self.query_instruction_format, self.query_instruction_for_retrieval, t)
                     for t in texts]
        batch_size = self.check_batch_size(batch_size if batch_size is not None else self.batch_size)
        max_length = self.check_max_length(max_length if max_length is not None else self.query_max_length)
        tok = self.tokenizer
        prefix_ids, suffix_ids = tok.encode_plain([self.prefix])[0], tok.encode_plain([self.suffix])[0]
        budget = max_length - len(tok.encode_plain(["<s>"])[0]) - len(tok.encode_plain([self.suffix + "</s>"])[0])
        new_max = (len(prefix_ids) + len(suffix_ids) + max_length + 8) // 8 * 8 + 8
        if budget < 1:
            raise InputError(f"query max_length {max_length} leaves no room for the query next to the suffix "
                             f"{self.suffix!r}; raise query_max_length")
        if new_max > self.max_supported_length:
            raise InputError(
                f"the in-context examples take {len(prefix_ids)} tokens: with query_max_length {max_length} a query "
                f"prompt may reach {new_max} tokens, above the model's position limit {self.max_supported_length}; "
                "use fewer or shorter examples, or a smaller query_max_length")
        clean = bool(self.defaults.get("clean_up_tokenization_spaces", False))
        round_trip = [tok.decode(ids, clean) for ids in tok.encode_plain(texts, budget)]
        items = tok.encode([self.prefix + t + self.suffix for t in round_trip], new_max)
        for e in items:
            e.truncated = None  # the query was cut before the prompt was built: not recorded here
        return self.embed_job(items, batch_size, single)
