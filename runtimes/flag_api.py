"""FlagEmbedding's own class names over bundles, for code written for FlagEmbedding:

    from runtimes import FlagModel            # was: from FlagEmbedding import FlagModel
    model = FlagModel("bundles/bge-large-en-v1.5-ort-cpu", query_instruction_for_retrieval="...", use_fp16=True)

Each class takes FlagEmbedding 1.4.2's constructor signature with a bundle path in place of the model name, and
is the runtime class of its family. Options a bundle fixed when it was built are checked by runtimes.options:
inert ones warn once, contradicting ones raise ``InputError``. The class must match the bundle's API.
"""
from __future__ import annotations

import inspect
from typing import Any

from runtimes.errors import IncompatibleBundleError, InputError

# FlagEmbedding 1.4.2's constructor parameters after model_name_or_path, with their defaults (the API's data)
_RERANK = [("use_fp16", False), ("query_instruction_for_rerank", None), ("query_instruction_format", "{}{}"),
           ("passage_instruction_for_rerank", None), ("passage_instruction_format", "{}{}"),
           ("trust_remote_code", False), ("cache_dir", None), ("devices", None), ("batch_size", 128),
           ("query_max_length", None), ("max_length", 512), ("normalize", False)]
_LLM_RERANK = [("peft_path", None), ("use_fp16", False), ("use_bf16", False), ("query_instruction_for_rerank", "A: "),
               ("query_instruction_format", "{}{}"), ("passage_instruction_for_rerank", "B: "),
               ("passage_instruction_format", "{}{}"), ("cache_dir", None), ("trust_remote_code", False),
               ("devices", None)]
_LLM_RERANK_TAIL = [("prompt", None), ("batch_size", 128), ("query_max_length", None), ("max_length", 512),
                    ("normalize", False)]
_EMBED_HEAD = [("normalize_embeddings", True), ("use_fp16", True), ("use_bf16", False),
               ("query_instruction_for_retrieval", None)]
_EMBED_TAIL = [("batch_size", 256), ("query_max_length", 512), ("passage_max_length", 512)]
SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "FlagModel": _EMBED_HEAD + [("query_instruction_format", "{}{}"), ("devices", None), ("pooling_method", "cls"),
                                ("trust_remote_code", False), ("cache_dir", None)] + _EMBED_TAIL
                 + [("convert_to_numpy", True), ("truncate_dim", None)],
    "BGEM3FlagModel": _EMBED_HEAD + [("query_instruction_format", "{}{}"), ("devices", None),
                                     ("pooling_method", "cls"), ("trust_remote_code", False), ("cache_dir", None),
                                     ("colbert_dim", -1)] + _EMBED_TAIL
                      + [("return_dense", True), ("return_sparse", False), ("return_colbert_vecs", False),
                         ("truncate_dim", None)],
    "FlagLLMModel": _EMBED_HEAD + [("query_instruction_format", "Instruct: {}\nQuery: {}"), ("devices", None),
                                   ("trust_remote_code", False), ("cache_dir", None)] + _EMBED_TAIL
                    + [("convert_to_numpy", True), ("truncate_dim", None)],
    "FlagICLModel": _EMBED_HEAD + [("query_instruction_format", "<instruct>{}\n<query>{}"),
                                   ("suffix", "\n<response>"), ("devices", None), ("examples_for_task", None),
                                   ("examples_instruction_format", "<instruct>{}\n<query>{}\n<response>{}"),
                                   ("trust_remote_code", False), ("cache_dir", None)] + _EMBED_TAIL
                    + [("convert_to_numpy", True), ("truncate_dim", None)],
    "FlagReranker": _RERANK,
    "FlagLLMReranker": _LLM_RERANK + _LLM_RERANK_TAIL,
    "LayerWiseFlagLLMReranker": _LLM_RERANK + [("cutoff_layers", None)] + _LLM_RERANK_TAIL,
    "LightWeightFlagLLMReranker": _LLM_RERANK + [("cutoff_layers", None), ("compress_layers", [8]),
                                                 ("compress_ratio", 1)] + _LLM_RERANK_TAIL,
}
# FlagAutoModel / FlagAutoReranker's model_class values -> the API they pick
EMBEDDER_CLASSES = {"encoder-only-base": "FlagModel", "encoder-only-m3": "BGEM3FlagModel",
                    "decoder-only-base": "FlagLLMModel", "decoder-only-icl": "FlagICLModel"}
RERANKER_CLASSES = {"encoder-only-base": "FlagReranker", "decoder-only-base": "FlagLLMReranker",
                    "decoder-only-layerwise": "LayerWiseFlagLLMReranker",
                    "decoder-only-lightweight": "LightWeightFlagLLMReranker"}
# FlagEmbedding's LightWeight reranker defaults compress_layers=[8], compress_ratio=1 (no compression); a bundle
# records its own, so these defaults are only checked when passed


def _signature(api: str) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", kind), inspect.Parameter("model_name_or_path", kind)]
    params += [inspect.Parameter(name, kind, default=default) for name, default in SIGNATURES[api]]
    params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def _given(api: str, sig: inspect.Signature, self, args, kwargs) -> tuple[Any, dict]:
    """(model_name_or_path, the options the caller passed): defaults the caller left alone are not options."""
    try:
        bound = sig.bind(self, *args, **kwargs)
    except TypeError as exc:
        raise InputError(f"{api}(): {exc}") from None
    given = dict(bound.arguments)
    given.pop("self")
    path = given.pop("model_name_or_path")
    given.update(given.pop("kwargs", {}))
    return path, given


def _make(api: str) -> type:
    from runtimes import checked_options, open_checked, runtime_class

    base = runtime_class(api)
    sig = _signature(api)

    def __init__(self, *args, **kwargs):
        path, given = _given(api, sig, self, args, kwargs)
        bundle = open_checked(path)
        have = bundle.manifest.runtime.get("api")
        if have != api:
            raise IncompatibleBundleError(
                f"{api}({path!r}): this bundle serves FlagEmbedding's {have} API (family {bundle.manifest.family}); "
                f"use `from runtimes import {have}`, or runtimes.load(path) which picks the class")
        known = [n for n, _ in SIGNATURES[api]]
        base.__init__(self, bundle, **checked_options(bundle, base, given, f"{api}()", known))

    __init__.__signature__ = sig
    doc = (f"FlagEmbedding's ``{api}`` on an engine bundle: ``{api}(bundle_path, ...)`` with FlagEmbedding 1.4.2's "
           f"constructor options. The methods are those of {base.__name__}.")
    return type(api, (base,), {"__init__": __init__, "__doc__": doc, "__module__": "runtimes"})


_CLASSES: dict[str, type] = {}


def dropin(api: str) -> type:
    if api not in _CLASSES:
        _CLASSES[api] = _make(api)
    return _CLASSES[api]


class _Auto:
    kind: str
    classes: dict[str, str]
    apis: tuple[str, ...]

    def __init__(self, *args, **kwargs):
        raise InputError(f"{type(self).__name__} is built with {type(self).__name__}.from_finetuned(bundle_path, ...)")

    @classmethod
    def _pick(cls, model_name_or_path, model_class) -> tuple[type, Any]:
        from runtimes import open_bundle

        bundle = open_bundle(model_name_or_path, verify=False)  # the class opens (verifies, warns) it again
        api = bundle.manifest.runtime.get("api")
        if api not in cls.apis:
            raise IncompatibleBundleError(
                f"{cls.__name__}.from_finetuned({model_name_or_path!r}): this bundle serves FlagEmbedding's {api} "
                f"API, not {cls.kind}; use runtimes.load(path) or `from runtimes import {api}`")
        if model_class is not None:
            value = getattr(model_class, "value", model_class)
            if value not in cls.classes:
                raise InputError(f"model_class={value!r}: expected one of {', '.join(cls.classes)}")
            if cls.classes[value] != api:
                raise InputError(f"model_class={value!r} picks {cls.classes[value]}, but this bundle serves {api}; "
                                 "drop model_class (the bundle knows its class)")
        return dropin(api), bundle


class FlagAutoModel(_Auto):
    """``FlagAutoModel.from_finetuned(bundle_path, ...)``: the embedder class the bundle's API names."""

    kind = "an embedder"
    classes = EMBEDDER_CLASSES
    apis = tuple(EMBEDDER_CLASSES.values())

    @classmethod
    def from_finetuned(cls, model_name_or_path, model_class=None, normalize_embeddings: bool = True,
                       use_fp16: bool = True, use_bf16: bool = False, query_instruction_for_retrieval=None,
                       devices=None, pooling_method=None, trust_remote_code=None, query_instruction_format=None,
                       truncate_dim=None, **kwargs):
        klass, _ = cls._pick(model_name_or_path, model_class)
        passed = {"normalize_embeddings": normalize_embeddings, "query_instruction_for_retrieval":
                  query_instruction_for_retrieval, "truncate_dim": truncate_dim}
        # FlagAutoModel always forwards use_fp16 / use_bf16; left at their defaults they mean "the usual", which
        # for a bundle is what it was built with, so only values the caller changed are checked
        for name, value, default in (("use_fp16", use_fp16, True), ("use_bf16", use_bf16, False),
                                     ("devices", devices, None), ("pooling_method", pooling_method, None),
                                     ("trust_remote_code", trust_remote_code, None),
                                     ("query_instruction_format", query_instruction_format, None)):
            if value != default:
                passed[name] = value
        return klass(model_name_or_path, **passed, **kwargs)


class FlagAutoReranker(_Auto):
    """``FlagAutoReranker.from_finetuned(bundle_path, ...)``: the reranker class the bundle's API names."""

    kind = "a reranker"
    classes = RERANKER_CLASSES
    apis = tuple(RERANKER_CLASSES.values())

    @classmethod
    def from_finetuned(cls, model_name_or_path, model_class=None, use_fp16: bool = False, trust_remote_code=None,
                       **kwargs):
        klass, _ = cls._pick(model_name_or_path, model_class)
        passed = {k: v for k, v in (("use_fp16", use_fp16), ("trust_remote_code", trust_remote_code))
                  if v != {"use_fp16": False, "trust_remote_code": None}[k]}
        return klass(model_name_or_path, **passed, **kwargs)
