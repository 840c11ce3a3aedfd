"""The input of `bge-export embed`: JSONL, Parquet or plain-text files (or a folder of them), cut into shards.

A shard is a run of consecutive rows of one file (``file``, ``start`` row, ``rows``, and for line files the byte
``offset`` where it starts), found in one streaming pass over the input: nothing is held in memory but the plan.
Reading a shard yields its (id, text) rows; bad input is an InputError that names the file and the row.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from runtimes._optional import require
from runtimes.errors import InputError

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "text",
            ".text": "text"}


@dataclass(frozen=True)
class Shard:
    index: int
    file: str
    kind: str  # jsonl | parquet | text
    start: int  # first row of the file in this shard (0-based)
    rows: int
    offset: int = 0  # byte offset of the first row (line files)
    first_id: int = 0  # the global row number of its first row (the id when the input has no id column)

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    def to_json(self) -> dict:
        return asdict(self)


def input_files(path: str | Path) -> list[Path]:
    """The files to embed: ``path`` itself, or the JSONL / Parquet / text files of a folder (sorted, recursive)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--input {p} does not exist; give a .jsonl, .parquet or .txt file or a folder of them")
    if p.is_file():
        if p.suffix.lower() not in SUFFIXES:
            raise InputError(f"--input {p}: unknown file type '{p.suffix}'; use .jsonl, .parquet or .txt (one text a "
                             "line)")
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
    if not files:
        raise InputError(f"--input {p} holds no .jsonl, .parquet or .txt files")
    return files


def _parquet(path: Path):
    pq = require("pyarrow.parquet")
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"cannot read {path} as Parquet ({exc})") from None


def plan_shards(files: list[Path], shard_rows: int, text_column: str, id_column: str | None) -> tuple[list[Shard], bool]:
    """One pass over the input: the shards, and whether ids come from ``id_column`` (True) or are the row numbers.
    Checks that every file has rows and the columns; rows themselves are checked when they are read."""
    if shard_rows < 1:
        raise InputError(f"--shard-rows must be a positive int, got {shard_rows}")
    shards: list[Shard] = []
    has_ids: bool | None = None
    total = 0
    for f in files:
        kind = SUFFIXES[f.suffix.lower()]
        if kind == "parquet":
            pf = _parquet(f)
            names = pf.schema_arrow.names
            if text_column not in names:
                raise InputError(f"{f}: no column '{text_column}' (columns: {', '.join(names)}); pick one with "
                                 "--text-column")
            file_has_ids = id_column is not None and id_column in names
            n = pf.metadata.num_rows
            offsets = [0] * (-(-n // shard_rows))
        else:  # line files (a text file has no ids)
            n, offsets, file_has_ids = _scan_lines(f, shard_rows, kind, text_column, id_column)
        if n == 0:
            raise InputError(f"{f} is empty (no rows); remove it or fill it")
        if has_ids is None:
            has_ids = file_has_ids
        elif file_has_ids != has_ids:
            raise InputError(f"{f}: {'has' if file_has_ids else 'lacks'} the id column '{id_column}' while "
                             f"{files[0]} {'has' if has_ids else 'lacks'} it; give every file ids or none")
        for k, start in enumerate(range(0, n, shard_rows)):
            shards.append(Shard(len(shards), str(f), kind, start, min(shard_rows, n - start), offsets[k], total + start))
        total += n
    return shards, bool(has_ids)


def _scan_lines(f: Path, shard_rows: int, kind: str, text_column: str, id_column: str | None):
    """Row count, the byte offset of every shard start, and (JSONL) whether the first row has the id column."""
    n, offsets, pos, has_ids = 0, [], 0, False
    try:
        with open(f, "rb") as fh:
            for line in fh:
                if kind == "jsonl" and not line.strip():
                    pos += len(line)
                    continue  # blank lines between JSON rows are not rows
                if n % shard_rows == 0:
                    offsets.append(pos)
                if kind == "jsonl" and n == 0:
                    row = _json_row(line, f, 1)
                    if text_column not in row:
                        raise InputError(f"{f} row 1: no field '{text_column}' (fields: {', '.join(row)}); pick one "
                                         "with --text-column")
                    has_ids = id_column is not None and id_column in row
                pos += len(line)
                n += 1
    except OSError as exc:
        raise InputError(f"cannot read {f} ({exc.strerror})") from None
    return n, offsets, has_ids


def _json_row(line: bytes, f, row: int) -> dict:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{f} row {row}: not a JSON object ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{f} row {row}: a JSON {type(value).__name__}, expected an object with the text field")
    return value


def read_shard(shard: Shard, text_column: str, id_column: str | None, has_ids: bool) -> tuple[list, list[str]]:
    """The shard's ids and texts. A missing field or a non-string text names the file and its row (1-based)."""
    ids: list = []
    texts: list[str] = []
    f = shard.file

    def add(row_number: int, text, rid) -> None:
        if not isinstance(text, str):
            raise InputError(f"{f} row {row_number}: '{text_column}' is {type(text).__name__} ({text!r:.40}), "
                             "expected a string")
        if has_ids:
            if rid is None:
                raise InputError(f"{f} row {row_number}: no '{id_column}' (the other rows have ids)")
            if not isinstance(rid, (str, int)) or isinstance(rid, bool):
                raise InputError(f"{f} row {row_number}: '{id_column}' is {type(rid).__name__}, expected a string or "
                                 "an integer")
        ids.append(rid if has_ids else shard.first_id + len(texts))
        texts.append(text)

    if shard.kind == "parquet":
        pf = _parquet(Path(f))
        columns = [text_column] + ([id_column] if has_ids else [])
        row = 0
        for g in range(pf.metadata.num_row_groups):  # the row groups that overlap the shard
            n = pf.metadata.row_group(g).num_rows
            lo, hi = max(shard.start, row), min(shard.start + shard.rows, row + n)
            if lo < hi:
                try:
                    table = pf.read_row_group(g, columns=columns).slice(lo - row, hi - lo)
                except Exception as exc:
                    raise InputError(f"cannot read {f} row group {g} ({exc})") from None
                cols = table.to_pydict()
                for k in range(hi - lo):
                    add(lo + k + 1, cols[text_column][k], cols[id_column][k] if has_ids else None)
            row += n
        return ids, texts
    try:
        with open(f, "rb") as fh:
            fh.seek(shard.offset)
            row = shard.start
            while len(texts) < shard.rows:
                line = fh.readline()
                if not line:
                    raise InputError(f"{f} ended at row {row}, before the {shard.rows} rows planned: it changed "
                                     "while it was read; run again")
                if shard.kind == "jsonl":
                    if not line.strip():
                        continue
                    row += 1
                    value = _json_row(line, f, row)
                    if text_column not in value:
                        raise InputError(f"{f} row {row}: no field '{text_column}'")
                    add(row, value[text_column], value.get(id_column) if has_ids else None)
                else:
                    row += 1
                    try:
                        add(row, line.decode("utf-8").rstrip("\r\n"), None)
                    except UnicodeDecodeError as exc:
                        raise InputError(f"{f} row {row}: not UTF-8 text ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot read {f} ({exc.strerror})") from None
    return ids, texts


def input_fingerprint(files: list[Path], shard_rows: int, text_column: str, id_column: str | None) -> str:
    """What --resume compares: the files (path, size, mtime) and the way they are cut into shards."""
    h = hashlib.sha256(json.dumps([shard_rows, text_column, id_column]).encode())
    for f in files:
        st = os.stat(f)
        h.update(json.dumps([str(f), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()
