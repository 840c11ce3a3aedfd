"""What every family's runtime shares: bundle + backend + tokenizer + batcher, and input checks."""
from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass

import numpy as np

from runtimes.backends import get_backend_class
from runtimes.batcher import Batcher
from runtimes.bundle import Bundle
from runtimes.errors import IncompatibleBundleError, InputError
from runtimes.registry import RUNTIME_APIS, runtime_class
from runtimes.tokenizer import Tokenizer


@functools.cache
def method_apis() -> dict[str, str]:
    """Public methods of FlagEmbedding's classes -> the class, so that calling one on a bundle of another family
    says what the bundle is instead of raising a bare AttributeError. Derived from the runtime classes'
    ``api_methods``: a method belongs to the first API of ``runtimes.registry.RUNTIME_APIS`` whose class declares
    it."""
    table: dict[str, str] = {}
    for api in RUNTIME_APIS:
        for name in runtime_class(api).api_methods:
            table.setdefault(name, api)
    return table


def __getattr__(name: str):
    if name == "API_METHODS":  # the table, as this module used to spell it
        return method_apis()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# FlagEmbedding's embedding heads, as encode()'s keywords name them (BGEM3FlagModel has three)
HEADS = ("return_dense", "return_sparse", "return_colbert_vecs")


@dataclass(frozen=True)
class Call:
    """How a server calls one batched API method: the keyword holding its inputs (texts or pairs) and the
    embedding heads it switches by keyword. Declared by each runtime class (``BundleModel.calls``), so an HTTP route
    never reads Python parameter names: a renamed parameter fails the class at import, not the API silently."""

    inputs: str
    heads: tuple[str, ...] = ()


def _run_job_method(name: str, planner):
    @functools.wraps(planner)
    def method(self, *args, **kwargs):
        return self.batcher.execute(getattr(self, f"{name}_job")(*args, **kwargs))

    method.__name__ = method.__qualname__ = name
    return method


def _check_declarations(cls) -> None:
    """A runtime class's ``calls`` and ``per_call_options`` must match its methods: each call is an API method with a
    planner that takes the declared inputs and heads keywords, each option has its setter."""
    for name, call in cls.calls.items():
        planner = getattr(cls, f"{name}_job", None)
        if name not in cls.api_methods or planner is None:
            raise TypeError(f"{cls.__name__}.calls declares {name}, which is not one of its batched API methods")
        params = inspect.signature(planner).parameters
        missing = [k for k in (call.inputs, *call.heads) if k not in params]
        if missing:
            raise TypeError(f"{cls.__name__}.{name}_job takes no {missing} (declared in {cls.__name__}.calls)")
    for option in cls.per_call_options:
        if not callable(getattr(cls, f"set_{option}", None)):
            raise TypeError(f"{cls.__name__}.per_call_options declares {option}, but it has no set_{option}()")


class BundleModel:
    api_methods: tuple[str, ...] = ()  # the FlagEmbedding API methods this class serves (see method_apis())
    # Each class registered in runtimes.RUNTIME_APIS declares, for its FlagEmbedding API: the constructor's
    # parameters after model_name_or_path with their defaults (the drop-in class's signature, runtimes.flag_api),
    # the FlagAutoModel / FlagAutoReranker model_class that picks it (("embedder" | "reranker", value)), and
    # whether FlagEmbedding loads its weights in half precision on CPU under use_fp16 (runtimes.options)
    flag_signature: list = []
    auto_model_class: tuple[str, str] | None = None
    loads_half_on_cpu: bool = False
    # What a server may call (runtimes.server): each batched API method by name, with its inputs keyword and heads
    # (each has a ``<name>_job`` planner), and the constructor options a request may change for one call (each has a
    # ``set_<option>`` method; with_options)
    calls: dict[str, Call] = {}
    per_call_options: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        """An API method ``m`` with a ``m_job`` planner is ``batcher.execute(m_job(...))``: the call's sequences and
        finishing step (runtimes.batcher.Job), run in-process. A server runs the same jobs in shared batches."""
        super().__init_subclass__(**kwargs)
        for name in cls.api_methods:
            planner = getattr(cls, f"{name}_job", None)
            if planner is not None and not hasattr(cls, name):
                setattr(cls, name, _run_job_method(name, planner))
        _check_declarations(cls)

    def job(self, method: str, *args, **kwargs):
        """The Job of API call ``method(*args, **kwargs)`` (validated as the call itself validates)."""
        planner = getattr(self, f"{method}_job", None) if method in self.api_methods else None
        if planner is None:
            raise InputError(f"{method}() is not a batched API call of {self.manifest.runtime['api']} (its calls: "
                             f"{', '.join(m for m in self.api_methods if hasattr(self, m + '_job'))})")
        return planner(*args, **kwargs)

    def with_options(self, **options):
        """A copy of this model sharing its engine, tokenizer and batcher, with per-call options changed through
        its ``set_<option>`` methods (validated as the constructor validates them); a server's per-request
        options. The copy's changes never reach this model."""
        clone = copy.copy(self)
        for key, value in options.items():
            if key not in self.per_call_options:
                allowed = ", ".join(self.per_call_options) or "none"
                raise InputError(f"'{key}' cannot be set per call on a {self.manifest.runtime['api']} bundle (the "
                                 f"options it takes per call: {allowed})")
            getattr(clone, f"set_{key}")(value)
        return clone

    def __getattr__(self, name: str):
        if "manifest" in self.__dict__ and not name.startswith("__") and name in method_apis():
            m, owner = self.__dict__["manifest"], method_apis()[name]
            raise IncompatibleBundleError(
                f"{name}() belongs to FlagEmbedding's {owner} API, but this bundle is a {m.family} "
                f"bundle with the {m.runtime['api']} API ({type(self).__name__}); load a bundle built from a "
                f"{owner} checkpoint, or use this one's own methods"
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
        self.batcher = Batcher(self.backend, self.tokenizer, self.input_names)

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
        self.truncate_limit = truncate_limit
        self.set_truncate_dim(truncate_dim)

    # per-call options of the embedders (with_options)
    def set_truncate_dim(self, truncate_dim) -> None:
        limit = self.truncate_limit
        if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer))
                                         or not 1 <= truncate_dim <= limit):
            raise InputError(f"truncate_dim must be an int in 1..{limit} (the embedding size) or None, "
                             f"got {truncate_dim!r}")
        self.truncate_dim = None if truncate_dim is None else int(truncate_dim)

    def set_normalize_embeddings(self, value) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise InputError(f"normalize_embeddings must be a bool, got {value!r}")
        self.normalize_embeddings = bool(value)

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

    # --- batching: runtimes.batcher --------------------------------------------------------------------
    @property
    def pad_to_multiple_of(self) -> int | None:
        return self.batcher.pad_to_multiple_of

    @pad_to_multiple_of.setter
    def pad_to_multiple_of(self, value: int | None) -> None:
        self.batcher.pad_to_multiple_of = value

    def feeds_for(self, encoded) -> dict[str, np.ndarray]:
        """The engine feeds of one padded batch of token sequences (benchmarks feed engines with these)."""
        return self.batcher.feeds(encoded)
