"""What a server holds: its settings, and per bundle the model, its engine worker and what its API can do."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from runtimes.backends import get_backend_class
from runtimes.batcher import Padding
from runtimes.errors import InputError
from runtimes.loader import load_bundle, open_checked
from runtimes.server.engine import EngineWorker
from runtimes.server.metrics import Metrics
from runtimes.service import Call


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServerSettings:
    """The limits and resources of one server (``bge-export serve --help`` explains each)."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_batch_tokens: int | None = None  # None: each bundle's engine's own (Backend.batch_tokens), >= its max_length
    min_padding_efficiency: float = Padding.min_efficiency
    max_concurrent_requests: int = 512
    max_client_batch_size: int = 32
    payload_limit: int = 2_000_000
    threads: int | None = None  # engine threads per bundle; None: the cores divided among the bundles
    tokenization_workers: int | None = None
    auto_truncate: bool = False
    options: dict = field(default_factory=dict)  # served name ("" for every bundle) -> runtime constructor options
    backend_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_concurrent_requests", "max_client_batch_size", "payload_limit"):
            value = getattr(self, name)
            if value is None and name == "max_batch_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive int, got {value!r}")
        e = self.min_padding_efficiency
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= 1:
            raise InputError(f"--min-padding-efficiency must be a number from 0 to 1, got {e!r}")
        for name in ("threads", "tokenization_workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"--{name.replace('_', '-')} must be a positive int, got {value!r}")

    def batch_tokens(self, model) -> int:
        """The token budget of one bundle's engine batches: --max-batch-tokens, or its engine's default raised to
        the model's max_length (so that any one input fits)."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return max(int(model.batcher.backend.batch_tokens), int(model.max_length))

    def engine_threads(self, bundles: int) -> int:
        return self.threads or max(1, available_cores() // max(1, bundles))


class ServedModel:
    """One bundle behind the server: its runtime model, its engine worker, and what its FlagEmbedding API offers
    (as its runtime class declares it: ``calls``, ``per_call_options``; so no family is named here)."""

    def __init__(self, name: str, path: Path, model, worker: EngineWorker, threads: int):
        self.name, self.path, self.model, self.worker, self.threads = name, path, model, worker, threads
        m = model.manifest
        self.api, self.family, self.target = m.runtime["api"], m.family, m.target
        self.calls: dict[str, Call] = dict(model.calls)
        self.embeds = "encode" in self.calls
        self.reranks = "compute_score" in self.calls and not self.embeds
        self.heads = list(self.calls["encode"].heads) if self.embeds else []
        self.per_call_options = sorted(model.per_call_options)

    @property
    def kind(self) -> str:
        return "embedding" if self.embeds else "reranker"

    def info(self) -> dict:
        m = self.model.manifest
        return {
            "model_id": self.name, "model_type": {self.kind: {"api": self.api}}, "family": self.family,
            "target": self.target, "api": self.api, "path": str(self.path),
            "model_dtype": m.data.get("build", {}).get("precision") or m.engine.get("precision"),
            "max_input_length": int(self.model.max_length), "engine": m.engine.get("kind"),
            "engine_threads": self.threads, "max_batch_tokens": self.worker.max_batch_tokens,
            "calls": sorted(self.calls), "heads": self.heads,
            "per_call_options": self.per_call_options,
            "truncation_side": self.model.tokenizer.truncation_side,
            "padding_side": self.model.tokenizer.padding_side,
        }


class ServerState:
    """The served bundles (by name, in the order given), the shared tokenization pool and the metrics."""

    def __init__(self, settings: ServerSettings, models: dict[str, ServedModel], metrics: Metrics, workers: int):
        self.settings, self.models, self.metrics = settings, models, metrics
        self.tokenization_workers = workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")
        self.in_flight = 0  # inputs holding a permit (changed on the event loop only)

    @classmethod
    def load(cls, bundles: list[str | Path], settings: ServerSettings, names: list[str] | None = None,
             progress=None) -> "ServerState":
        """Open every bundle (its engine with ``settings.engine_threads`` threads) and start its worker."""
        if not bundles:
            raise InputError("give at least one bundle folder to serve")
        names = list(names or [])
        if len(names) > len(bundles):
            raise InputError(f"{len(names)} --name values for {len(bundles)} bundles; give at most one per bundle")
        paths = [Path(b) for b in bundles]
        names += [p.resolve().name for p in paths[len(names):]]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputError(f"two bundles would be served as {dupes}; give each a distinct --name")
        unknown = sorted(set(settings.options) - set(names) - {""})
        if unknown:
            raise InputError(f"--option names {unknown}, which no bundle is served as (served: {', '.join(names)})")
        metrics = Metrics()
        threads = settings.engine_threads(len(paths))
        models: dict[str, ServedModel] = {}
        try:
            for name, path in zip(names, paths):
                if progress:
                    progress(f"loading {path} as '{name}' ({threads} engine threads)")
                bundle = open_checked(path)
                backend_cls = get_backend_class(bundle.manifest.engine["kind"])
                backend_options = dict(settings.backend_options)
                if backend_cls.threads_option and backend_cls.threads_option not in backend_options:
                    backend_options[backend_cls.threads_option] = threads
                options = {**settings.options.get("", {}), **settings.options.get(name, {})}
                try:
                    model = load_bundle(bundle, backend_options=backend_options, **options)
                except InputError as exc:
                    raise InputError(f"bundle '{name}' ({path}): {exc}") from None
                model.batcher.rule = Padding(min_efficiency=float(settings.min_padding_efficiency))
                worker = EngineWorker(model, max_batch_tokens=settings.batch_tokens(model), name=name, metrics=metrics,
                                      strict=settings.max_batch_tokens is not None)
                models[name] = ServedModel(name, path, model, worker, threads)
        except BaseException:
            for served in models.values():
                served.worker.stop()
            raise
        workers = settings.tokenization_workers or max(1, min(4, available_cores()))
        return cls(settings, models, metrics, workers)

    def get(self, name: str | None) -> ServedModel:
        if name is None or name == "":
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise LookupError(f"this server serves {len(self.models)} models ({', '.join(self.models)}); say which "
                              "one in the request's 'model' field")
        served = self.models.get(name)
        if served is None:
            if len(self.models) == 1:  # as text-embeddings-inference: one model answers whatever it is called
                return next(iter(self.models.values()))
            raise LookupError(f"model '{name}' is not served here (served: {', '.join(self.models)})")
        return served

    def close(self) -> None:
        """Stop every engine worker after what it queued, then the tokenization pool (safe to call twice)."""
        for served in self.models.values():
            served.worker.stop()
        self.pool.shutdown(wait=True)
