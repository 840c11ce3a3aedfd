"""Open an engine bundle: check the manifest against the files on disk and this machine."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtimes.errors import BundleError
from runtimes.manifest import Manifest, file_digest


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def engine_file(self) -> Path:
        return self.path / self.manifest.engine["file"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / self.manifest.tokenizer["dir"]


def open_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read and check a bundle.

    ``verify=True`` hashes every file against the manifest (a few seconds for multi-GB models);
    ``verify=False`` only checks that the files exist with the recorded sizes.
    """
    if not isinstance(path, (str, Path)):
        raise BundleError(f"a bundle path must be a str or Path, got {type(path).__name__}")
    root = Path(path).expanduser()
    if not root.exists():
        raise BundleError(f"bundle {root} does not exist; build one with `bge-export --model ... --out {root}`")
    if not root.is_dir():
        raise BundleError(f"bundle {root} is a file, not a folder; pass the folder that holds manifest.json")
    manifest = Manifest.read(root)
    problems = []
    for name, meta in manifest.data["files"].items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"bundle {root}: the manifest lists a file outside the bundle ({name!r}); refusing it")
        p = root / name
        if not p.is_file():
            problems.append(f"{name} is missing")
            continue
        size = p.stat().st_size
        if size != meta["size"]:
            problems.append(f"{name} has {size} bytes, the manifest recorded {meta['size']} (truncated or replaced)")
        elif verify and file_digest(p) != meta["sha256"]:
            problems.append(f"{name} does not match its recorded sha256 (modified after the build)")
    if problems:
        src = manifest.data["source"].get("checkpoint", "CHECKPOINT")
        raise BundleError(
            f"bundle {root} is damaged: {'; '.join(problems)}; rebuild it with "
            f"`bge-export --model {src} --target {manifest.target} --out {root} --overwrite`"
        )
    return Bundle(root.resolve(), manifest)
