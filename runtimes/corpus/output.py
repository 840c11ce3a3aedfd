"""The output of `bge-export embed`: Parquet shards written atomically, and a manifest of what was embedded.

Columns: ``id`` (int64, or string ids as the input gave them), ``vector`` (list<float32>); bge-m3 also ``sparse``
(list<struct<index: int32, value: float32>>) and, with --colbert, ``colbert`` (list<list<float32>>). Plain Arrow
types: pandas, pyarrow, DuckDB or Spark read them without Ray or bge-export.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from runtimes._optional import require
from runtimes.errors import InputError
from runtimes.manifest import file_digest

MANIFEST = "_manifest.json"  # a leading _ : pyarrow, pandas and Spark skip it when they read the folder


def shard_table(ids: list, result, heads: dict):
    """The Arrow table of one shard from an encode() result (an array, or BGEM3FlagModel's dict)."""
    pa = require("pyarrow")
    dense = result["dense_vecs"] if isinstance(result, dict) else result
    dense = np.asarray(dense, dtype=np.float32).reshape(len(ids), -1)
    id_type = pa.string() if ids and isinstance(ids[0], str) else pa.int64()
    columns = {"id": pa.array(ids, type=id_type),
               "vector": pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), dense.shape[1]).cast(
                   pa.list_(pa.float32()))}
    if heads.get("sparse"):
        entry = pa.struct([("index", pa.int32()), ("value", pa.float32())])
        columns["sparse"] = pa.array([[{"index": int(k), "value": float(v)} for k, v in w.items()]
                                      for w in result["lexical_weights"]], type=pa.list_(entry))
    if heads.get("colbert"):
        columns["colbert"] = pa.array([np.asarray(c, dtype=np.float32).tolist() for c in result["colbert_vecs"]],
                                      type=pa.list_(pa.list_(pa.float32())))
    return pa.table(columns)


def write_atomic_table(table, path: Path) -> str:
    """Write ``table`` to ``path`` through a temporary name and a rename; the file's sha256."""
    pq = require("pyarrow.parquet")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    digest = file_digest(tmp)
    os.replace(tmp, path)
    return digest


def write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable manifest ({exc}); give a new --output folder") from None


def remove_partials(out: Path) -> int:
    """Delete temporary files an interrupted run left; how many."""
    n = 0
    for p in out.glob(".*.tmp-*"):
        p.unlink(missing_ok=True)
        n += 1
    return n
