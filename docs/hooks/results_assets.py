"""MkDocs hook: the plots of benchmarks/results/ served as site files under assets/results/, at build time.

The benchmark scripts write their plots next to their raw rows (benchmarks/results/<run>/*.png); the pages embed
them as ``assets/results/<run>/<name>.png``. Nothing is copied into docs/, so a rerun of a benchmark updates the
site with no second copy to keep in step, and ``mkdocs build --strict`` fails on a plot that does not exist.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

RESULTS = Path("benchmarks") / "results"
DEST = "assets/results"


def on_files(files, config, **kwargs):
    root = Path(config.config_file_path).resolve().parent
    results = root / RESULTS
    if not results.is_dir():
        raise PluginError(f"results_assets: {results} is missing")
    for png in sorted(results.rglob("*.png")):
        rel = png.relative_to(results).as_posix()
        if rel.startswith("tmp/"):  # scratch output of benchmark runs (git-ignored)
            continue
        files.append(File.generated(config, f"{DEST}/{rel}", abs_src_path=str(png)))
    return files
