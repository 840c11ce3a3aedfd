"""The bundle manifest: the contract between the compiler (bge_export) and the runtime.

The schema lives here, in the runtime, so that the exporter depends on the runtime and never the reverse.
A manifest is plain JSON. It carries a checksum over its own canonical content, so an edited manifest is
detected on load, and a size + sha256 for every file of the bundle, so a truncated or swapped model file is
detected too.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimes.errors import BundleError, IncompatibleBundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Top-level fields every manifest must have, with their JSON types.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "bge_export_version": str,
    "family": str,
    "variant": dict,
    "target": str,
    "precision": str,
    "engine": dict,
    "source": dict,
    "model": dict,
    "io": dict,
    "profiles": dict,
    "tokenizer": dict,
    "runtime": dict,
    "build": dict,
    "tools": dict,
    "files": dict,
    "parity": (dict, type(None)),
    "checksum": str,
}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_checksum(data: dict) -> str:
    body = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def describe_files(root: Path, names: list[str]) -> dict[str, dict]:
    """Size and sha256 of each bundle file, keyed by its path relative to the bundle root."""
    out = {}
    for name in sorted(names):
        p = root / name
        out[name] = {"size": p.stat().st_size, "sha256": file_digest(p)}
    return out


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``data`` is the raw JSON object."""

    data: dict

    # --- convenient read-only views -------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.data["family"]

    @property
    def target(self) -> str:
        return self.data["target"]

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def engine(self) -> dict:
        return self.data["engine"]

    @property
    def tokenizer(self) -> dict:
        return self.data["tokenizer"]

    @property
    def runtime(self) -> dict:
        return self.data["runtime"]

    @property
    def io(self) -> dict:
        return self.data["io"]

    @property
    def parity(self) -> dict | None:
        return self.data["parity"]

    # --- (de)serialisation ----------------------------------------------------------------------
    @staticmethod
    def build(fields: dict) -> "Manifest":
        """Seal ``fields`` (everything but the checksum) into a manifest."""
        data = dict(fields)
        data["schema_version"] = SCHEMA_VERSION
        data.pop("checksum", None)
        data["checksum"] = content_checksum(data)
        validate(data, source="<new manifest>")
        return Manifest(data)

    def with_updates(self, **fields: Any) -> "Manifest":
        data = {k: v for k, v in self.data.items() if k != "checksum"}
        data.update(fields)
        return Manifest.build(data)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @staticmethod
    def read(folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise BundleError(
                f"{folder} is not an engine bundle: {MANIFEST_NAME} is missing; "
                "pass a folder written by `bge-export --model ... --target ...`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path} is not valid JSON ({exc}); rebuild the bundle with bge-export") from None
        validate(data, source=str(path))
        return Manifest(data)


def validate(data: Any, *, source: str) -> None:
    """Check the schema and the checksum; name every problem found."""
    if not isinstance(data, dict):
        raise BundleError(f"{source}: the manifest must be a JSON object; rebuild the bundle with bge-export")
    problems = []
    for key, typ in REQUIRED_FIELDS.items():
        if key not in data:
            problems.append(f"missing field '{key}'")
        elif not isinstance(data[key], typ):
            problems.append(f"field '{key}' has type {type(data[key]).__name__}")
    if problems:
        raise BundleError(f"{source}: invalid manifest ({'; '.join(problems)}); rebuild the bundle with bge-export")
    if data["schema_version"] != SCHEMA_VERSION:
        raise IncompatibleBundleError(
            f"{source}: manifest schema version {data['schema_version']} is not supported by this runtime "
            f"(supports {SCHEMA_VERSION}); rebuild the bundle with this version of bge-export"
        )
    if content_checksum(data) != data["checksum"]:
        src = data["source"].get("checkpoint", "CHECKPOINT")
        raise BundleError(
            f"{source}: the manifest was modified after the build (checksum mismatch); rebuild the bundle instead "
            f"of editing manifest.json: `bge-export --model {src} --target {data['target']} --out DIR`"
        )
