"""The timing loop: every contender on every cell (batch x seq) of the grid, interleaved round-robin after
warm-up, with the sanity check of each public call against FlagEmbedding's, and the peaks the rows divide by."""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bge_export.bench.contenders import Contender, bundle_contender, peer_contenders
from bge_export.bench.peaks import PEAK_SIZES, PEAKS, gpu_peak_gflops, peak_gflops
from bge_export.bench.recipe import BenchRecipe, Workload, recipe_for
from bge_export.bench.report import short_name
from bge_export.bench.settings import BenchSettings
from bge_export.bench.texts import bundle_workload
from bge_export.errors import BgeExportError
from bge_export.families import FAMILIES, family_from_manifest, get_family
from runtimes._optional import require
from runtimes.bundle import open_bundle
from runtimes.cpu import cpu_flags, cpu_name


@dataclass
class Subject:
    """The bundles under test: their contenders, and what the first one gives the whole run."""
    contenders: list[Contender]
    meta: dict  # the first bundle's manifest data (all share checkpoint, API and variant)
    path: Path  # the first bundle (its tokenizer counts the tokens of the texts)
    model: object  # the first bundle's runtime model (builds the tensors every engine contender runs on)
    recipe: BenchRecipe


def _manifest_recipe(meta: dict) -> BenchRecipe | None:
    """The recipe of the family a bundle was built from (its class: no checkpoint needed)."""
    return recipe_for(get_family(meta["family"]))


def run_bench(bundles: list[Path], settings: BenchSettings = BenchSettings(), log=print) -> tuple[list[dict], dict]:
    """Time ``bundles`` (of one checkpoint, API and variant) and the peers ``settings`` asks for; returns the rows
    and the environment they were measured in."""
    subject = _open_subject(bundles)
    meta = subject.meta
    family = None
    if settings.peers.any():
        try:
            family = family_from_manifest(meta)
        except BgeExportError as exc:
            raise BgeExportError(f"{exc}; the comparison needs the source checkpoint, or pass --no-flagmodel "
                                 "--no-optimum to time the bundles alone") from None
    with tempfile.TemporaryDirectory(prefix="bge-bench-") as workdir:
        return _run(settings, subject, family, Path(workdir), log)


def _open_subject(bundles: list[Path]) -> Subject:
    """Every bundle loaded as a contender; raises unless they share checkpoint, API (with a recipe) and variant."""
    contenders, metas, models, recipes = [], [], [], []
    for b in bundles:
        manifest = open_bundle(Path(b), verify=False).manifest
        recipe = _manifest_recipe(manifest.data)
        c, model = bundle_contender(Path(b), manifest, recipe)
        contenders.append(c)
        metas.append(manifest.data)
        models.append(model)
        recipes.append(recipe)
    sources = {m["source"]["weights_sha256"] for m in metas}
    if len(sources) != 1:
        raise BgeExportError("bench compares bundles of ONE checkpoint; these bundles come from different weights")
    if len({m["runtime"]["api"] for m in metas}) != 1 or recipes[0] is None:
        raise BgeExportError("bench times bundles of one family with a bench recipe (families: "
                             f"{', '.join(sorted(n for n, f in FAMILIES.items() if recipe_for(f)))}); got the APIs "
                             f"{sorted({m['runtime']['api'] for m in metas})}")
    variants = {json.dumps(m["variant"], sort_keys=True) for m in metas}
    if len(variants) != 1:
        raise BgeExportError("bench compares bundles built with the same variant (cutoff layers, compression, API, "
                             f"attention, export dtype); these differ: {sorted(variants)}")
    return Subject(contenders, metas[0], Path(bundles[0]), models[0], recipes[0])


def _run(settings: BenchSettings, subject: Subject, family, workdir: Path, log) -> tuple[list[dict], dict]:
    meta, recipe = subject.meta, subject.recipe
    contenders = subject.contenders + peer_contenders(settings.peers, family, recipe, meta["source"]["checkpoint"],
                                                      workdir, settings.reference_device, log)
    work = bundle_workload(subject.path, meta, subject.model)
    peaks = _first_peaks(settings, contenders)
    env = _environment(settings, meta, peaks)
    log("measured peaks: " + ", ".join(f"{env['peak_kinds'][k]}: {v:.0f} GFLOP/s" for k, v in peaks.items())
        + ("" if settings.gpu else " (measured again after the timings; the larger value counts)"))
    rows = []
    for s in settings.seqs:
        if s > meta["profiles"]["sequence"]["max"]:
            log(f"skip seq {s}: above the model's {meta['profiles']['sequence']['max']} positions")
            continue
        for b in settings.batches:
            cell = _time_cell(settings, recipe, contenders, work, b, s, meta, peaks)
            rows += cell
            best = max((r for r in cell if r["mode"] == "e2e"), key=lambda r: r["tokens_per_s"])
            checks = ", ".join(f"{short_name(r['contender'])} {r['mode']} max|d| {r['check_max_abs']:.2e}"
                               for r in cell if "check_max_abs" in r)
            log(f"batch {b:>3} x {s:>3} tokens: fastest e2e {best['contender']} {best['median_ms']:.1f} ms"
                + (f"; vs FlagEmbedding: {checks}" if checks else ""))
    if not settings.gpu:  # the peak again after the grid, when the machine may be quieter: a peak is a maximum
        # first release every contender (models, sessions and their arenas), so that the GEMMs' buffers come on
        # top of the bundles and peers no longer
        subject.contenders.clear()
        subject.model = None
        contenders.clear()
        del work
        gc.collect()
        for kind in peaks:
            peaks[kind] = max(peaks[kind], peak_gflops(kind))
        env["peaks_gflops"] = {k: round(v, 1) for k, v in peaks.items()}
        for r in rows:
            r["peak_fraction"] = r["gflops"] / peaks[r["peak"]]
    return rows, env


def _first_peaks(settings: BenchSettings, contenders: list[Contender]) -> dict[str, float]:
    """The peak of each precision the contenders run in (GPU: every contender is divided by its fp16 peak)."""
    if settings.gpu:
        peak = gpu_peak_gflops()
        return {c.peak: peak for c in contenders} | {"gpu-fp16": peak}
    return {kind: peak_gflops(kind) for kind in sorted({c.peak for c in contenders})}


def _environment(settings: BenchSettings, meta: dict, peaks: dict[str, float]) -> dict:
    gpu = settings.gpu
    return {"machine": platform.machine(), "processor": cpu_name(), "cpus": os.cpu_count(),
            "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c"))),
            "gpu": require("torch").cuda.get_device_name() if gpu else None,
            "peaks_gflops": {k: round(v, 1) for k, v in peaks.items()},
            "peak_kinds": {"gpu-fp16": "torch fp16 8192^3 GEMM on the GPU"} if gpu
            else {k: f"{PEAKS[k]}, best of {'/'.join(map(str, PEAK_SIZES))}^3" for k in peaks},
            "gpu_fp16_peak_gflops": round(peaks["gpu-fp16"], 1) if gpu else None,
            "source": meta["source"]["checkpoint"], "model": meta["model"],
            "family": meta["family"], "api": meta["runtime"]["api"], "variant": meta["variant"],
            "threads": "ONNX Runtime and torch defaults (all cores); ORT thread spinning off for every ORT contender"}


def _time_cell(settings: BenchSettings, recipe: BenchRecipe, contenders: list[Contender], work: Workload, b: int,
               s: int, meta: dict, peaks: dict[str, float]) -> list[dict]:
    """One cell: every contender's calls warmed up, then timed round-robin; one row per contender and mode."""
    modes = recipe.modes
    workload = recipe.inputs(work, b, s)
    tokens = recipe.tokens(work, workload, b, s) if recipe.tokens else dict.fromkeys(modes, b * s)
    timed = {}
    for c in contenders:
        for mode in modes[:-1] if c.e2e else ():  # engine-only contenders have no public call
            timed[(c.name, mode)] = (lambda c=c, mode=mode: c.e2e(mode, workload, b, s))
        timed[(c.name, "engine")] = c.engine(workload, b, s, work)
    samples = {k: [] for k in timed}
    keys = list(timed)
    results = {}  # the first result of every public call: the sanity check against FlagEmbedding
    for i in range(max(settings.warmup, 1)):
        for k in keys:
            if i < settings.warmup or k[1] != "engine":
                out = timed[k]()
                if i == 0 and k[1] != "engine":
                    results[k] = out
    for r in range(settings.repeats):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotate the order each round
            # One untimed switch-in call: the previous contender's thread pool may still be spinning
            # on the cores (ONNX Runtime and OpenMP both spin after a call), which would bill its
            # tail to whoever runs next. Calls over a second make that tail negligible: no switch-in.
            if not samples[k] or samples[k][-1] < 1.0:
                timed[k]()
            t0 = time.perf_counter()
            timed[k]()
            samples[k].append(time.perf_counter() - t0)
    flops_of = get_family(meta["family"]).flops
    peak_of = {c.name: c.peak for c in contenders}
    variant_of = {c.name: c.variant for c in contenders}
    cell = []
    for (name, mode), xs in samples.items():
        med = statistics.median(xs)
        flops = flops_of(meta["model"], b, tokens[mode] / b, variant_of[name])
        row = {"contender": name, "mode": mode, "batch": b, "seq": s, "tokens": tokens[mode],
               "median_ms": med * 1e3, "p95_ms": _percentile(xs, 95) * 1e3,
               "p99_ms": _percentile(xs, 99) * 1e3, "tokens_per_s": tokens[mode] / med,
               "gflops": flops / med / 1e9, "peak": peak_of[name],
               "peak_fraction": flops / med / 1e9 / peaks[peak_of[name]], "repeats": len(xs)}
        ref_key = next((k for k in results if k[1] == mode and k[0].startswith("FlagEmbedding")), None)
        if mode != "engine" and ref_key and ref_key[0] != name:
            row.update(output_check(recipe, results[(name, mode)], results[ref_key]))
        cell.append(row)
    for mode in modes:
        ref = next((r for r in cell if r["mode"] == mode and r["contender"].startswith("FlagEmbedding")), None)
        opt = next((r for r in cell if r["mode"] == mode and r["contender"].startswith("optimum ONNX")), None)
        for r in cell:
            if r["mode"] != mode:
                continue
            r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"] if ref else None
            r["speedup_vs_optimum"] = opt["median_ms"] / r["median_ms"] if opt else None
    return cell


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def _as_array(out, pick=None) -> np.ndarray | None:
    """A public call's result (the part ``pick`` takes, where the recipe says) as a float array, or None."""
    if pick is not None:
        out = pick(out)
    try:
        return np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def output_check(recipe: BenchRecipe, got, ref) -> dict:
    """How far a contender's public-call result is from FlagEmbedding's on the same inputs."""
    kind = recipe.check
    g, r = _as_array(got, recipe.check_value), _as_array(ref, recipe.check_value)
    if g is None or r is None or g.shape != r.shape:
        return {}
    out = {"check_max_abs": float(np.abs(g - r).max())}
    if kind == "scores":
        out["check_rel_spread"] = out["check_max_abs"] / max(float(r.max() - r.min()), 1e-12)
    else:
        g2, r2 = g.reshape(-1, g.shape[-1]), r.reshape(-1, r.shape[-1])
        cos = (g2 * r2).sum(-1) / np.maximum(np.linalg.norm(g2, axis=-1) * np.linalg.norm(r2, axis=-1), 1e-30)
        out["check_cosine_min"] = float(cos.min())
    return out
