"""Embed a corpus shard by shard: in-process on all cores, or on Ray Data (an actor pool, one engine per actor).

Each shard is read, embedded with the bundle's own API call (``runtimes.load(bundle).encode`` and its options,
batched by a token budget), and written atomically; the manifest records each finished shard. A run that stops
at any point leaves finished shards and temporary files; ``--resume`` deletes the temporary files and embeds the
shards the manifest does not list, so every input row ends up in the output exactly once.
"""
from __future__ import annotations

import json
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtimes import errors as runtime_errors
from runtimes.backends import get_backend_class
from runtimes.corpus.output import read_manifest, remove_partials, shard_table, write_atomic_table, write_manifest
from runtimes.corpus.sources import Shard, input_files, input_fingerprint, plan_shards, read_shard
from runtimes.errors import BgeError, InputError
from runtimes.loader import load_bundle, open_checked
from runtimes.manifest import file_digest
from runtimes.ray_cluster import connect
from runtimes.registry import RUNTIME_APIS, runtime_class

FORMAT = "bge-export-embeddings/1"
METHODS = ("encode", "encode_corpus", "encode_queries")


@dataclass
class EmbedSettings:
    bundle: str
    input: str
    output: str
    text_column: str = "text"
    id_column: str | None = "id"
    method: str = "encode"
    colbert: bool = False
    options: dict = field(default_factory=dict)
    batch_tokens: int = 2048
    shard_rows: int = 10_000
    resume: bool = False
    ray: str | None = None
    workers: int | None = None


class ShardEmbedder:
    """Embeds shards and writes them. In-process it is one object; on Ray Data each actor of the pool holds one
    (``__call__`` takes a batch of shard descriptors) with its engine threads set to the actor's CPUs."""

    def __init__(self, settings: dict, threads: int | None = None):
        self.s = EmbedSettings(**settings)
        bundle = open_checked(self.s.bundle)
        backend_options = {}
        option = get_backend_class(bundle.manifest.engine["kind"]).threads_option
        if threads and option:
            backend_options[option] = int(threads)
        self.model = load_bundle(bundle, backend_options=backend_options, **self.s.options)
        self.heads = heads_of(bundle.manifest.runtime.get("api"), self.s.colbert)

    def embed(self, shard: Shard, has_ids: bool) -> dict:
        ids, texts = read_shard(shard, self.s.text_column, self.s.id_column, has_ids)
        kwargs = {}
        if self.heads["sparse"]:  # BGEM3FlagModel: dense + sparse, ColBERT when asked
            kwargs = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": self.heads["colbert"]}
        try:
            job = self.model.job(self.s.method, texts, **kwargs)
        except InputError as exc:  # one text at fault (say, no tokens): name its file and row, as read_shard does
            if exc.item is None:
                raise
            raise InputError(f"{shard.file} row {shard.start + exc.item + 1}: {exc}") from None
        result = self.model.batcher.execute(job, max_tokens=self.s.batch_tokens or None)
        table = shard_table(ids, result, self.heads)
        digest = write_atomic_table(table, Path(self.s.output) / shard.name)
        return {"index": shard.index, "name": shard.name, "rows": len(ids), "sha256": digest,
                "tokens": job.tokens}

    def __call__(self, batch: dict) -> dict:  # Ray Data map_batches, batch_format="numpy"
        done = []
        for descriptor in batch["shard"]:
            d = json.loads(str(descriptor))
            done.append(json.dumps(self.embed(Shard(**d["shard"]), d["has_ids"])))
        return {"done": np.array(done)}


def heads_of(api: str, colbert: bool) -> dict:
    """What a bundle's encode() gives besides dense vectors, as its runtime class declares its heads
    (``calls["encode"]``): BGEM3FlagModel's sparse weights (always written) and ColBERT vectors (with --colbert)."""
    encode = runtime_class(api).calls.get("encode") if api in RUNTIME_APIS else None
    if encode is None:
        raise InputError(f"{api} bundles score pairs, they do not embed texts; give an embedding bundle (FlagModel, "
                         "BGEM3FlagModel, FlagLLMModel, FlagICLModel)")
    sparse = "return_sparse" in encode.heads
    if colbert and not sparse:
        raise InputError(f"--colbert needs a bundle with ColBERT vectors (bge-m3); this one is {api}")
    return {"sparse": sparse, "colbert": bool(colbert)}


class Progress:
    """rows/s and ETA on stderr (one updating line on a terminal, a line every few seconds otherwise)."""

    def __init__(self, total: int, done: int = 0):
        self.total, self.done, self.start, self.first = total, done, time.perf_counter(), done
        self.tty, self.last = sys.stderr.isatty(), 0.0

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if not self.tty and now - self.last < 5 and self.done < self.total:
            return
        self.last = now
        rate = (self.done - self.first) / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = (f"embedded {self.done:,}/{self.total:,} rows ({100 * self.done / max(self.total, 1):.1f}%), "
                f"{rate:,.1f} rows/s, ETA {eta:,.0f} s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def embed_corpus(settings: EmbedSettings, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Plan, resume, embed the pending shards (in-process or on Ray), and return the finished manifest."""
    if settings.method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}, got {settings.method!r}")
    if settings.batch_tokens < 0:
        raise InputError(f"--batch-tokens must be >= 0 (0: encode's own batching), got {settings.batch_tokens}")
    bundle = open_checked(settings.bundle)
    files = input_files(settings.input)
    shards, has_ids = plan_shards(files, settings.shard_rows, settings.text_column, settings.id_column)
    out = Path(settings.output)
    manifest = start_manifest(settings, bundle, files, shards, has_ids)
    previous = read_manifest(out) if out.exists() else None
    if out.exists() and any(out.iterdir()):
        if previous is None:
            raise InputError(f"--output {out} exists and holds files that are not an embedding run; give a new or "
                             "empty folder")
        if not settings.resume:
            raise InputError(f"--output {out} holds an earlier run ({len(previous.get('shards', {}))} of "
                             f"{previous.get('shard_count')} shards); add --resume to finish it, or give a new folder")
        for key in ("input_fingerprint", "build_key", "method", "options", "heads", "batch_tokens"):
            if previous.get(key) != manifest.get(key):
                raise InputError(f"--resume: the run in {out} was made with another {key.replace('_', ' ')} "
                                 f"({previous.get(key)!r}, now {manifest.get(key)!r}); resume it with the same "
                                 "input, bundle and options, or give a new folder")
        removed = remove_partials(out)
        kept = {}
        for name, entry in previous.get("shards", {}).items():  # a listed shard whose file is intact is kept
            path = out / name
            if path.exists() and path.stat().st_size == entry.get("bytes") and file_digest(path) == entry["sha256"]:
                kept[name] = entry
        manifest["shards"] = kept
        log(f"resuming: {len(kept)} of {len(shards)} shards done, {removed} partial files removed")
    else:
        out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, manifest)
    pending = [s for s in shards if s.name not in manifest["shards"]]
    total_rows = sum(s.rows for s in shards)
    progress = Progress(total_rows, sum(e["rows"] for e in manifest["shards"].values()))

    def finished(result: dict) -> None:
        result["bytes"] = (out / result["name"]).stat().st_size
        manifest["shards"][result["name"]] = {k: v for k, v in result.items() if k != "name"}
        write_manifest(out, manifest)
        progress.add(result["rows"])

    plain = asdict(settings)
    if settings.ray:
        run_on_ray(plain, pending, has_ids, settings, finished, log)
    elif pending:
        embedder = ShardEmbedder(plain, threads=settings.workers)
        for shard in pending:
            finished(embedder.embed(shard, has_ids))
    progress.close()
    missing = [s.name for s in shards if s.name not in manifest["shards"]]
    if missing:
        raise InputError(f"{len(missing)} shards were not embedded ({', '.join(missing[:5])}); run again with --resume")
    manifest["rows"] = total_rows
    manifest["complete"] = True
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_manifest(out, manifest)
    return manifest


def start_manifest(settings: EmbedSettings, bundle, files, shards, has_ids: bool) -> dict:
    m = bundle.manifest
    build = m.data.get("build", {})
    heads = heads_of(m.runtime.get("api"), settings.colbert)
    return {
        "format": FORMAT, "bundle": str(Path(settings.bundle).resolve()), "build_key": build.get("key"),
        "api": m.runtime.get("api"), "family": m.family, "target": m.target, "method": settings.method,
        "options": settings.options, "heads": heads, "batch_tokens": settings.batch_tokens,
        "columns": ["id", "vector"] + (["sparse"] if heads["sparse"] else []) + (["colbert"] if heads["colbert"] else []),
        "dimension": settings.options.get("truncate_dim") or m.data.get("model", {}).get("hidden_size"),
        "input": {"files": [str(f) for f in files], "text_column": settings.text_column,
                  "id_column": settings.id_column if has_ids else None, "shard_rows": settings.shard_rows},
        "input_fingerprint": input_fingerprint(files, settings.shard_rows, settings.text_column, settings.id_column),
        "shard_count": len(shards), "shards": {}, "rows": None, "complete": False,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_on_ray(plain: dict, pending: list[Shard], has_ids: bool, settings: EmbedSettings, finished, log) -> None:
    """Ray Data: one row per shard, map_batches over an actor pool of ``workers`` actors (each one engine with
    threads = its CPUs); actors that die (a node removed) are restarted and their shards retried; a shard's file is
    written atomically, so a retry only replaces it with the same rows."""
    ray = connect(settings.ray)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # this command prints its own progress
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = settings.workers or max(1, cpus)
    per_actor = max(1, cpus // workers)
    log(f"ray: {cpus} CPUs in the cluster, {workers} actors x {per_actor} CPU (engine threads {per_actor})")
    if not pending:
        return
    ds = ray.data.from_items([{"shard": json.dumps({"shard": s.to_json(), "has_ids": has_ids})} for s in pending],
                             override_num_blocks=len(pending))
    ds = ds.map_batches(ShardEmbedder, batch_size=1, batch_format="numpy",
                        fn_constructor_kwargs={"settings": plain, "threads": per_actor},
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers), num_cpus=per_actor,
                        max_restarts=-1, max_task_retries=-1)
    try:
        for row in ds.iter_rows():
            finished(json.loads(str(row["done"])))
    except Exception as exc:  # an actor's InputError (a bad row) reaches here as the text of a remote traceback
        error = remote_user_error(exc)
        if error is None:
            raise
        raise error from None


_REMOTE_ERROR = re.compile(r"runtimes\.errors\.(\w+): (.+)")


def remote_user_error(exc: BaseException) -> BgeError | None:
    """The user's mistake (a runtimes.errors type and its one-line message) inside a Ray task's traceback, if any."""
    found = _REMOTE_ERROR.findall("".join(traceback.format_exception(exc)))
    if not found:
        return None
    name, message = found[-1]
    cls = getattr(runtime_errors, name, None)
    return (cls if isinstance(cls, type) and issubclass(cls, BgeError) else InputError)(message.strip())
