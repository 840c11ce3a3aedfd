"""BuildSettings: everything an engine is decided from, and the key that names a build (recorded in the manifest)."""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field, fields
from importlib import metadata
from typing import TYPE_CHECKING, Callable

from bge_export import __version__
from bge_export.build.targets import Target, target_precision
from runtimes.cpu import capabilities

if TYPE_CHECKING:
    from bge_export.families.base import Family

TOOLS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf",
         "tensorrt", "tokenizers", "FlagEmbedding")


def tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in TOOLS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def host_facts() -> dict:
    """What the builders read from the build machine: the machine type and the CPU's int8 / bf16 instructions
    (ort-cpu-int8 picks signed or unsigned weights by VNNI)."""
    cpu = capabilities()
    return {"machine": platform.machine(), "vnni": str(bool(cpu["vnni"])), "bf16": str(bool(cpu["bf16"]))}


def bundle_precision(family: Family, tgt: Target) -> str:
    """The precision the parity tolerances apply to: the export dtype for half-precision graphs, else the target's."""
    dtype = family.export_dtype()
    return dtype if dtype != "fp32" else target_precision(tgt, family.half_dtype())


def _json_values(pairs: tuple) -> dict:
    return {k: json.loads(v) for k, v in pairs}


def _sorted_items(d: dict) -> tuple:
    return tuple(sorted(d.items()))


def _frozen(d: dict) -> tuple:
    """A dict as sorted (name, JSON value) pairs, None values left out (defaults apply)."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in d.items() if v is not None))


def engine_input(to_json: Callable | None = None, **kwargs):
    """A field that decides the engine: it goes into ``key()`` (and the manifest's build settings), written by
    ``to_json`` (default: as it is). Every field of BuildSettings is one; one that did not decide the engine would be
    a plain field, and left out of the key."""
    return field(metadata={"engine_input": True, "to_json": to_json}, **kwargs)


@dataclass(frozen=True, kw_only=True)
class BuildSettings:
    """Everything bge-export decides an engine from: the checkpoint's weights, the family and its export-time
    variant, the target, the precision and export dtype, the builder's options, the versions of bge-export and the
    tools, and the host facts the builders read (the CPU's int8 and bf16 instructions). ``key()`` hashes them and
    the manifest records both: two builds with equal keys are the same build (the way Torch-TensorRT keys its
    engine cache). A TensorRT engine also depends on the GPU it was built on, which its manifest's engine section
    records. Builder options left at None are not part of it (defaults apply)."""

    family: str = engine_input()
    weights_sha256: str = engine_input()
    variant: tuple[tuple[str, str], ...] = engine_input(_json_values)  # (option, JSON value), sorted
    target: str = engine_input()
    precision: str = engine_input()
    export_dtype: str = engine_input()
    # the builder's options that were set: (name, JSON value), sorted
    options: tuple[tuple[str, str], ...] = engine_input(_json_values, default=())
    tools: tuple[tuple[str, str], ...] = engine_input(dict, default_factory=lambda: _sorted_items(tool_versions()))
    host: tuple[tuple[str, str], ...] = engine_input(dict, default_factory=lambda: _sorted_items(host_facts()))
    bge_export_version: str = engine_input(default=__version__)

    @classmethod
    def of(cls, family: Family, target: Target, options: dict) -> BuildSettings:
        return cls(family=family.name, weights_sha256=family.ckpt.weights_sha256(), variant=_frozen(family.variant),
                   target=target.name, precision=bundle_precision(family, target), export_dtype=family.export_dtype(),
                   options=_frozen(options))

    def to_json(self) -> dict:
        """The engine inputs, as the manifest records them (variant and options as JSON values)."""
        out = {}
        for f in fields(self):
            if f.metadata.get("engine_input"):
                convert = f.metadata["to_json"]
                value = getattr(self, f.name)
                out[f.name] = convert(value) if convert else value
        return out

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()
