"""What every family's runtime shares: bundle + backend + tokenizer, input checks and length-sorted batching."""
from __future__ import annotations

import numpy as np

from runtimes.backends import get_backend_class
from runtimes.bundle import Bundle
from runtimes.errors import IncompatibleBundleError, InputError
from runtimes.tokenizer import Tokenizer


# Public methods of FlagEmbedding's classes -> the class, so that calling one on a bundle of another family
# says what the bundle is instead of raising a bare AttributeError.
API_METHODS = {
    "encode": "FlagModel", "encode_queries": "FlagModel", "encode_corpus": "FlagModel",
    "compute_score": "FlagReranker", "compute_lexical_matching_score": "BGEM3FlagModel",
    "colbert_score": "BGEM3FlagModel", "convert_id_to_token": "BGEM3FlagModel", "set_examples": "FlagICLModel",
}


class BundleModel:
    def __getattr__(self, name: str):
        if name in API_METHODS and "manifest" in self.__dict__:
            m = self.__dict__["manifest"]
            raise IncompatibleBundleError(
                f"{name}() belongs to FlagEmbedding's {API_METHODS[name]} API, but this bundle is a {m.family} "
                f"bundle with the {m.runtime['api']} API ({type(self).__name__}); load a bundle built from a "
                f"{API_METHODS[name]} checkpoint, or use this one's own methods"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __init__(self, bundle: Bundle, *, backend_options: dict | None = None):
        m = bundle.manifest
        self.bundle = bundle
        self.manifest = m
        self.defaults = dict(m.runtime.get("defaults", {}))
        self.max_supported_length = int(m.data["profiles"]["sequence"]["max"])
        tok = m.tokenizer
        self.tokenizer = Tokenizer(
            bundle.tokenizer_dir,
            pad_token_id=tok["pad_token_id"],
            padding_side=tok["padding_side"],
            truncation_side=tok.get("truncation_side", "right"),
        )
        backend_cls = get_backend_class(m.engine["kind"])
        self.backend = backend_cls(bundle.engine_file, m.engine, m.io["inputs"], m.io["outputs"],
                                   padding=self.tokenizer, max_length=self.max_supported_length,
                                   **(backend_options or {}))
        self.input_names = [s["name"] for s in m.io["inputs"]]

    def __repr__(self) -> str:
        m = self.manifest
        return f"<{type(self).__name__} {m.family}/{m.target} from {self.bundle.path}>"

    def init_embedder_options(self, *, normalize_embeddings, query_instruction_for_retrieval, query_instruction_format,
                              passage_instruction_for_retrieval, passage_instruction_format, batch_size, max_length,
                              query_max_length, passage_max_length, truncate_dim, truncate_limit: int) -> None:
        """The constructor options FlagModel and BGEM3FlagModel share, validated."""
        default = self.check_max_length(max_length if max_length is not None else self.defaults["max_length"])
        self.query_max_length = default if query_max_length is None else self.check_max_length(query_max_length)
        self.passage_max_length = default if passage_max_length is None else self.check_max_length(passage_max_length)
        self.normalize_embeddings = bool(normalize_embeddings)
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.query_instruction_format = self.check_instruction_format(query_instruction_format, "query_instruction_format")
        self.passage_instruction_for_retrieval = passage_instruction_for_retrieval
        self.passage_instruction_format = self.check_instruction_format(passage_instruction_format,
                                                                        "passage_instruction_format")
        self.batch_size = self.check_batch_size(batch_size)
        if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer))
                                         or not 1 <= truncate_dim <= truncate_limit):
            raise InputError(f"truncate_dim must be an int in 1..{truncate_limit} (the embedding size) or None, "
                             f"got {truncate_dim!r}")
        self.truncate_dim = None if truncate_dim is None else int(truncate_dim)

    # --- checks shared by every family ---------------------------------------------------------------
    @staticmethod
    def check_texts(texts, what: str) -> tuple[bool, list[str]]:
        """Returns (was a single string, list of strings); rejects anything else with the offending item."""
        if isinstance(texts, str):
            return True, [texts]
        if texts is None or isinstance(texts, (bytes, bytearray, dict)) or not hasattr(texts, "__iter__"):
            raise InputError(f"{what} must be a str or a list of str, got {type(texts).__name__}")
        try:
            items = list(texts)
        except TypeError:  # e.g. a 0-d numpy array
            raise InputError(f"{what} must be a str or a list of str, got {type(texts).__name__}") from None
        if not items:
            raise InputError(f"{what} is empty; pass at least one string")
        for i, t in enumerate(items):
            if isinstance(t, np.str_):
                items[i] = t = str(t)
            if not isinstance(t, str):
                raise InputError(f"{what}[{i}] is {type(t).__name__} ({t!r:.40}), expected str; convert it with str() first")
        return False, items

    @staticmethod
    def check_batch_size(value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"batch_size must be a positive int, got {value!r}")
        return int(value)

    def check_max_length(self, value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 2 <= value <= self.max_supported_length:
            raise InputError(
                f"max_length must be an int in 2..{self.max_supported_length} (the model's position limit), got {value!r}"
            )
        return int(value)

    @staticmethod
    def check_instruction_format(fmt, what: str) -> str:
        """FlagEmbedding formats with ``fmt.format(instruction, text)``: it needs exactly two positional fields."""
        try:
            filled = fmt.replace("\\n", "\n").format("\0", "\1") if isinstance(fmt, str) else ""
            ok = "\0" in filled and "\1" in filled
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{what} must be a str with two '{{}}' fields (instruction, then text) such as "
                             f"'{{}}{{}}' or '<instruct>{{}}\\n<query>{{}}', got {fmt!r}")
        return fmt

    @staticmethod
    def apply_instruction(instruction_format: str, instruction: str, text: str) -> str:
        """FlagEmbedding's rule: a literal backslash-n in the format becomes a newline, then str.format."""
        return instruction_format.replace("\\n", "\n").format(instruction, text)

    # --- batching -------------------------------------------------------------------------------------
    pad_to_multiple_of: int | None = None

    def feeds_for(self, encoded) -> dict[str, np.ndarray]:
        padded = self.tokenizer.pad(encoded, self.pad_to_multiple_of)
        for name in encoded[0].extra:
            padded[name] = np.array([e.extra[name] for e in encoded], dtype=np.int64)
        return {name: padded[name] for name in self.input_names}

    def run_sorted(self, texts: list[str], batch_size: int, max_length: int, *, output: str) -> np.ndarray:
        """Tokenize, sort by descending length, run padded batches, and return ``output`` in input order."""
        return self.run_encoded(self.tokenizer.encode(texts, max_length), batch_size, output=output)

    def run_encoded(self, encoded, batch_size: int, *, output: str) -> np.ndarray:
        """Sort token sequences by descending length, run padded batches, return ``output`` in input order."""
        order = np.argsort([-len(e.ids) for e in encoded], kind="stable")
        chunks = []
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            chunks.append(self.backend.infer(self.feeds_for(batch))[output])
        out = np.concatenate(chunks, axis=0)
        result = np.empty_like(out)
        result[order] = out
        return result
