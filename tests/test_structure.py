"""The structure stays readable: size limits, and the server's API mapping declared by the runtime classes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from runtimes.errors import InputError
from runtimes.registry import RUNTIME_APIS, runtime_class
from runtimes.service import HEADS, Call

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 80


def _sources():
    for package in ("bge_export", "runtimes"):
        yield from sorted((ROOT / package).rglob("*.py"))


def test_no_file_over_400_lines_and_no_function_over_80():
    long_files, long_functions = [], []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{rel} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name} ({size} lines)")
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


@pytest.mark.parametrize("api", sorted(RUNTIME_APIS))
def test_every_runtime_class_declares_what_a_server_calls(api):
    cls = runtime_class(api)
    assert cls.calls, f"{cls.__name__} declares no calls: a server could not route to it"
    for name, call in cls.calls.items():
        assert name in cls.api_methods and callable(getattr(cls, f"{name}_job"))
        assert set(call.heads) <= set(HEADS)
    embeds, reranks = "encode" in cls.calls, "compute_score" in cls.calls
    assert embeds or reranks


def test_a_renamed_parameter_fails_the_class_not_the_http_api_silently():
    encoder = runtime_class("FlagModel")

    with pytest.raises(TypeError, match=r"encode_job takes no \['texts'\]"):
        type("Renamed", (encoder,), {"calls": {**encoder.calls, "encode": Call("texts")}})
    with pytest.raises(TypeError, match="no set_pooling"):
        type("Unsettable", (encoder,), {"per_call_options": ("pooling",)})
    with pytest.raises(TypeError, match="not one of its batched API methods"):
        type("Unknown", (encoder,), {"calls": {**encoder.calls, "colbert_score": Call("q_reps")}})


def test_with_options_takes_only_the_declared_per_call_options(bundle_free_model):
    model = bundle_free_model
    assert model.with_options(truncate_dim=4).truncate_dim == 4 and model.truncate_dim is None
    with pytest.raises(InputError, match="cannot be set per call.*normalize_embeddings, truncate_dim"):
        model.with_options(batch_size=2)


@pytest.fixture
def bundle_free_model():
    """An EncoderModel without a bundle: with_options only copies the object and calls its setters."""
    cls = runtime_class("FlagModel")
    model = cls.__new__(cls)
    model.__dict__.update(truncate_dim=None, truncate_limit=8, normalize_embeddings=True,
                          manifest=type("M", (), {"runtime": {"api": "FlagModel"}})())
    return model
