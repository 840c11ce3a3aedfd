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

from runtimes.bundle import open_bundle
from runtimes.errors import IncompatibleBundleError, InputError
from runtimes.loader import checked_options, open_checked
from runtimes.registry import RUNTIME_APIS, runtime_class

# FlagEmbedding 1.4.2's constructor parameters after model_name_or_path, with their defaults: the building blocks
# of the runtime classes' ``flag_signature`` (each API class declares its own, with ``auto_model_class`` and
# ``loads_half_on_cpu``; runtimes/service.py BundleModel)
RERANK = [("use_fp16", False), ("query_instruction_for_rerank", None), ("query_instruction_format", "{}{}"),
          ("passage_instruction_for_rerank", None), ("passage_instruction_format", "{}{}"),
          ("trust_remote_code", False), ("cache_dir", None), ("devices", None), ("batch_size", 128),
          ("query_max_length", None), ("max_length", 512), ("normalize", False)]
LLM_RERANK = [("peft_path", None), ("use_fp16", False), ("use_bf16", False), ("query_instruction_for_rerank", "A: "),
              ("query_instruction_format", "{}{}"), ("passage_instruction_for_rerank", "B: "),
              ("passage_instruction_format", "{}{}"), ("cache_dir", None), ("trust_remote_code", False),
              ("devices", None)]
LLM_RERANK_TAIL = [("prompt", None), ("batch_size", 128), ("query_max_length", None), ("max_length", 512),
                   ("normalize", False)]
EMBED_HEAD = [("normalize_embeddings", True), ("use_fp16", True), ("use_bf16", False),
              ("query_instruction_for_retrieval", None)]
EMBED_TAIL = [("batch_size", 256), ("query_max_length", 512), ("passage_max_length", 512)]


def flag_signature(api: str) -> list[tuple[str, Any]]:
    """FlagEmbedding's constructor parameters of ``api`` (its runtime class declares them)."""
    return list(runtime_class(api).flag_signature)


def auto_classes(kind: str) -> dict[str, str]:
    """FlagAutoModel (kind "embedder") / FlagAutoReranker ("reranker") model_class values -> the API they pick."""
    out = {}
    for api in RUNTIME_APIS:
        declared = runtime_class(api).auto_model_class
        if declared is not None and declared[0] == kind:
            out[declared[1]] = api
    return out


def _signature(api: str) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", kind), inspect.Parameter("model_name_or_path", kind)]
    params += [inspect.Parameter(name, kind, default=default) for name, default in flag_signature(api)]
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
        known = [n for n, _ in flag_signature(api)]
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
    auto_kind: str  # the runtime classes' auto_model_class kind this class picks among

    @classmethod
    def classes(cls) -> dict[str, str]:
        return auto_classes(cls.auto_kind)

    def __init__(self, *args, **kwargs):
        raise InputError(f"{type(self).__name__} is built with {type(self).__name__}.from_finetuned(bundle_path, ...)")

    @classmethod
    def _pick(cls, model_name_or_path, model_class) -> tuple[type, Any]:
        bundle = open_bundle(model_name_or_path, verify=False)  # the class opens (verifies, warns) it again
        api = bundle.manifest.runtime.get("api")
        if api not in cls.classes().values():
            raise IncompatibleBundleError(
                f"{cls.__name__}.from_finetuned({model_name_or_path!r}): this bundle serves FlagEmbedding's {api} "
                f"API, not {cls.kind}; use runtimes.load(path) or `from runtimes import {api}`")
        if model_class is not None:
            value = getattr(model_class, "value", model_class)
            classes = cls.classes()
            if value not in classes:
                raise InputError(f"model_class={value!r}: expected one of {', '.join(classes)}")
            if classes[value] != api:
                raise InputError(f"model_class={value!r} picks {classes[value]}, but this bundle serves {api}; "
                                 "drop model_class (the bundle knows its class)")
        return dropin(api), bundle


class FlagAutoModel(_Auto):
    """``FlagAutoModel.from_finetuned(bundle_path, ...)``: the embedder class the bundle's API names."""

    kind = "an embedder"
    auto_kind = "embedder"

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
    auto_kind = "reranker"

    @classmethod
    def from_finetuned(cls, model_name_or_path, model_class=None, use_fp16: bool = False, trust_remote_code=None,
                       **kwargs):
        klass, _ = cls._pick(model_name_or_path, model_class)
        passed = {k: v for k, v in (("use_fp16", use_fp16), ("trust_remote_code", trust_remote_code))
                  if v != {"use_fp16": False, "trust_remote_code": None}[k]}
        return klass(model_name_or_path, **passed, **kwargs)
