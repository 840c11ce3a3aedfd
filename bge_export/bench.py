"""`bge-export bench`: bundles against FlagEmbedding (fp32, CPU) and optimum's ONNX export, one process.

Every contender gets the same texts (exactly ``seq`` tokens each) and the same batch; runs are interleaved
(round-robin, rotating order) after warm-up. Every ONNX Runtime contender (ours and optimum's graph) runs with
the same session settings and thread spinning off, so one contender's idle spinning threads never steal the
cores from the next one. Two timings per contender:
  e2e     the public call: ``encode(texts)`` (tokenize + batch + run + pool + normalise)
  engine  the model alone on pre-tokenized, pre-padded tensors
Rows: median / p95 / p99 latency, tokens/s, model GFLOP/s and the fraction of this machine's measured fp32
GEMM peak, and the speed-up over FlagEmbedding. Output: bench.jsonl, bench.md, bench.png.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bge_export.errors import BgeExportError
from bge_export.families import family_from_manifest, get_family
from runtimes._optional import available, require

DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_SEQS = (16, 128, 512)


def add_arguments(p) -> None:
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundles of the same checkpoint to time together")
    p.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCHES)), help="default: 1,8,32")
    p.add_argument("--seq-lens", default=",".join(map(str, DEFAULT_SEQS)), help="tokens per text, default: 16,128,512")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per contender and cell (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="extra untimed runs per contender and cell (default 1)")
    p.add_argument("--no-flagmodel", action="store_true", help="leave out FlagEmbedding")
    p.add_argument("--no-optimum", action="store_true", help="leave out optimum's ONNX export")
    p.add_argument("--out", default="bench-results", help="folder for bench.jsonl, bench.md, bench.png")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        raise BgeExportError(f"{what} must be a comma-separated list of positive ints, got {text!r}")
    return vals


@dataclass
class Contender:
    name: str
    e2e: Callable[[list[str], int, int], object]  # (texts, batch, seq)
    engine: Callable[[list[str], int, int], Callable[[], object]]  # prepares inputs, returns the timed call


def exact_length_texts(tokenize: Callable[[str], int], words: list[str], n: int, seq: int) -> list[str]:
    """``n`` distinct texts of exactly ``seq`` tokens (special tokens included) under ``tokenize``."""
    out = []
    for i in range(n):
        ws = words[(i * 37) % len(words):] + words
        lo, hi = 0, min(len(ws), seq)
        while lo < hi:  # largest prefix that fits
            mid = (lo + hi + 1) // 2
            if tokenize(" ".join(ws[:mid])) <= seq:
                lo = mid
            else:
                hi = mid - 1
        text = " ".join(ws[:lo])
        while tokenize(text) < seq:
            text += " a"
        if tokenize(text) != seq:
            raise BgeExportError(f"could not build a text of exactly {seq} tokens")
        out.append(text)
    return out


def gemm_peak_gflops(seconds: float = 1.0) -> float:
    """This machine's practical fp32 peak: numpy (BLAS) 1024^3 matmuls with the default threads."""
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    a @ a
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        n += 1
    return n * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


# How each FlagEmbedding API is driven, for our runtime and for the reference alike: the workload of a cell,
# the public call (e2e), and the pre-tokenized tensors + bare model call (engine). m3 runs all three heads.
_ALL_HEADS = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
API_CALLS = {
    "FlagModel": {
        "inputs": lambda texts, b, s: texts(b, s),
        "call": lambda obj, x, b, s: obj.encode(x, batch_size=b, max_length=s),
        "runtime_encode": lambda model, x, s: model.tokenizer.encode(x, s),
        "ref_tensors": lambda ref, x, s: ref.tokenizer(x, padding=True, truncation=True, max_length=s, return_tensors="pt"),
        "ref_forward": lambda ref, enc: ref.model(**enc, return_dict=True).last_hidden_state[:, 0],
    },
    "BGEM3FlagModel": {
        "inputs": lambda texts, b, s: texts(b, s),
        "call": lambda obj, x, b, s: obj.encode(x, batch_size=b, max_length=s, **_ALL_HEADS),
        "runtime_encode": lambda model, x, s: model.tokenizer.encode(x, s),
        "ref_tensors": lambda ref, x, s: ref.tokenizer(x, padding=True, truncation=True, max_length=s, return_tensors="pt"),
        "ref_forward": lambda ref, enc: ref.model(enc, **_ALL_HEADS),
    },
    "FlagReranker": {  # pairs of a query of s/4 tokens and a passage filling the rest: s tokens per pair
        "inputs": lambda texts, b, s: [list(p) for p in zip(texts(b, s // 4), texts(b, s - s // 4, offset=5))],
        "call": lambda obj, x, b, s: obj.compute_score(x, batch_size=b, max_length=s),
        "runtime_encode": lambda model, x, s: model.tokenizer.encode_pairs([q for q, _ in x], [p for _, p in x],
                                                                         s * 3 // 4, s),
        "ref_tensors": lambda ref, x, s: ref.tokenizer([q for q, _ in x], [p for _, p in x], padding=True,
                                                       truncation="only_second", max_length=s, return_tensors="pt"),
        "ref_forward": lambda ref, enc: ref.model(**enc, return_dict=True).logits,
    },
}


def _bundle_contender(path: Path, log) -> tuple[Contender, dict]:
    import runtimes

    model = runtimes.load(path, backend_options={"allow_spinning": False})
    m = model.manifest
    api = API_CALLS[m.runtime["api"]]

    def engine(x, b, s):
        feeds = model.feeds_for(api["runtime_encode"](model, x, s))
        return lambda: model.backend.infer(feeds)

    return Contender(f"bge-export {m.target}", lambda x, b, s: api["call"](model, x, b, s), engine), m.data


def _reference_contender(family) -> Contender:
    torch = require("torch")
    from bge_export.parity import quiet_stderr

    ref = family.reference()  # the parity reference: fp32 on CPU
    api = API_CALLS[family.reference_api]

    def engine(x, b, s):
        enc = api["ref_tensors"](ref, x, s)
        ref.model.eval()

        def call():
            with torch.no_grad():
                return api["ref_forward"](ref, enc)
        return call

    def e2e(x, b, s):
        with quiet_stderr():  # FlagEmbedding's tqdm bars
            return api["call"](ref, x, b, s)

    return Contender(f"FlagEmbedding {family.reference_api} (torch fp32)", e2e, engine)


def _optimum_contender(ckpt_path: str, workdir: Path) -> Contender:
    ort_mod = require("optimum.onnxruntime")
    transformers = require("transformers")
    ort = require("onnxruntime")
    ort_mod.ORTModelForFeatureExtraction.from_pretrained(ckpt_path, export=True).save_pretrained(str(workdir / "optimum"))
    # optimum's exported graph, run with exactly the session settings our bundles get in this benchmark
    from runtimes.backends.ort import session_options

    session = ort.InferenceSession(str(workdir / "optimum" / "model.onnx"), session_options(ort, allow_spinning=False),
                                   providers=["CPUExecutionProvider"])
    tok = transformers.AutoTokenizer.from_pretrained(ckpt_path)
    names = [i.name for i in session.get_inputs()]

    def feeds(texts, s):
        enc = tok(texts, padding=True, truncation=True, max_length=s, return_tensors="np")
        return {k: enc[k].astype(np.int64) for k in names}

    def e2e(texts, b, s):
        outs = []
        for i in range(0, len(texts), b):
            h = session.run(None, feeds(texts[i:i + b], s))[0][:, 0]
            outs.append(h / np.linalg.norm(h, axis=-1, keepdims=True))
        return np.concatenate(outs)

    def engine(texts, b, s):
        f = feeds(texts, s)
        return lambda: session.run(None, f)

    return Contender("optimum ONNX export (ORT CPU)", e2e, engine)


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def run_bench(bundles: list[Path], *, batches=DEFAULT_BATCHES, seqs=DEFAULT_SEQS, repeats=5, warmup=1,
              flagmodel=True, optimum=True, log=print) -> tuple[list[dict], dict]:
    contenders, metas = [], []
    for b in bundles:
        c, meta = _bundle_contender(Path(b), log)
        contenders.append(c)
        metas.append(meta)
    sources = {m["source"]["weights_sha256"] for m in metas}
    if len(sources) != 1:
        raise BgeExportError("bench compares bundles of ONE checkpoint; these bundles come from different weights")
    if len({m["runtime"]["api"] for m in metas}) != 1 or metas[0]["runtime"]["api"] not in API_CALLS:
        raise BgeExportError(f"bench times bundles of one family with one of the APIs {sorted(API_CALLS)}; got "
                             f"{sorted({m['runtime']['api'] for m in metas})}")
    meta = metas[0]
    family = None
    if flagmodel or optimum:
        try:
            family = family_from_manifest(meta)
        except BgeExportError as exc:
            raise BgeExportError(f"{exc}; the comparison needs the source checkpoint, or pass --no-flagmodel "
                                 "--no-optimum to time the bundles alone") from None
    with tempfile.TemporaryDirectory(prefix="bge-bench-") as workdir:
        return _run(contenders, meta, family, Path(workdir), bundles, batches, seqs, repeats, warmup, flagmodel,
                    optimum, log)


def _run(contenders, meta, family, workdir, bundles, batches, seqs, repeats, warmup, flagmodel, optimum, log):
    ckpt = meta["source"]["checkpoint"]
    flops_of = get_family(meta["family"]).flops
    if flagmodel:
        log(f"loading FlagEmbedding {family.reference_api} (fp32, CPU)")
        contenders.append(_reference_contender(family))
    if optimum and meta["runtime"]["api"] != "FlagModel":
        log("optimum: compared with encoder bundles only in this version; skipped")
    elif optimum:
        log("exporting the checkpoint with optimum (its default ONNX export, ORT CPU)")
        contenders.append(_optimum_contender(ckpt, workdir))
    from runtimes.tokenizer import Tokenizer

    tok = Tokenizer(Path(bundles[0]) / meta["tokenizer"]["dir"], pad_token_id=meta["tokenizer"]["pad_token_id"],
                    padding_side=meta["tokenizer"]["padding_side"])
    from bge_export.parity import parity_texts

    words = " ".join(parity_texts()["corpus"]).split()
    n_tok = lambda text: len(tok.encode([text], 100_000)[0].ids)  # noqa: E731
    peak = gemm_peak_gflops()
    env = {"machine": platform.machine(), "processor": platform.processor() or _cpu_name(), "cpus": os.cpu_count(),
           "fp32_gemm_peak_gflops": round(peak, 1), "source": ckpt, "model": meta["model"],
           "threads": "ONNX Runtime and torch defaults (all cores); ORT thread spinning off for every ORT contender"}
    log(f"measured fp32 GEMM peak of this machine: {peak:.0f} GFLOP/s")
    rows = []
    for s in seqs:
        if s > meta["profiles"]["sequence"]["max"]:
            log(f"skip seq {s}: above the model's {meta['profiles']['sequence']['max']} positions")
            continue
        for b in batches:
            workload = API_CALLS[meta["runtime"]["api"]]["inputs"](
                lambda n, length, offset=0: exact_length_texts(n_tok, words[offset * 101:] + words, n, length), b, s)
            timed = {}
            for c in contenders:
                timed[(c.name, "e2e")] = (lambda c=c: c.e2e(workload, b, s))
                timed[(c.name, "engine")] = c.engine(workload, b, s)
            samples = {k: [] for k in timed}
            keys = list(timed)
            for _ in range(warmup):
                for k in keys:
                    timed[k]()
            for r in range(repeats):
                for k in keys[r % len(keys):] + keys[: r % len(keys)]:  # rotate the order each round
                    # One untimed switch-in call: the previous contender's thread pool may still be spinning
                    # on the cores (ONNX Runtime and OpenMP both spin after a call), which would bill its
                    # tail to whoever runs next. Calls over a second make that tail negligible: no switch-in.
                    if not samples[k] or samples[k][-1] < 1.0:
                        timed[k]()
                    t0 = time.perf_counter()
                    timed[k]()
                    samples[k].append(time.perf_counter() - t0)
            flops = flops_of(meta["model"], b, s)
            cell = []
            for (name, mode), xs in samples.items():
                med = statistics.median(xs)
                cell.append({"contender": name, "mode": mode, "batch": b, "seq": s, "median_ms": med * 1e3,
                             "p95_ms": _percentile(xs, 95) * 1e3, "p99_ms": _percentile(xs, 99) * 1e3,
                             "tokens_per_s": b * s / med, "gflops": flops / med / 1e9,
                             "peak_fraction": flops / med / 1e9 / peak, "repeats": len(xs)})
            for mode in ("e2e", "engine"):
                ref = next((r for r in cell if r["mode"] == mode and r["contender"].startswith("FlagEmbedding")), None)
                opt = next((r for r in cell if r["mode"] == mode and r["contender"].startswith("optimum")), None)
                for r in cell:
                    if r["mode"] != mode:
                        continue
                    r["speedup_vs_reference"] = ref["median_ms"] / r["median_ms"] if ref else None
                    r["speedup_vs_optimum"] = opt["median_ms"] / r["median_ms"] if opt else None
            rows += cell
            best = max((r for r in cell if r["mode"] == "e2e"), key=lambda r: r["tokens_per_s"])
            log(f"batch {b:>3} x {s:>3} tokens: fastest e2e {best['contender']} {best['median_ms']:.1f} ms")
    return rows, env


def summary_markdown(rows: list[dict]) -> str:
    """Speed-ups of each bundle over the FlagEmbedding reference and optimum per cell (median latency ratios)."""
    ours = list(dict.fromkeys(r["contender"] for r in rows if r["contender"].startswith("bge-export")))
    cells = sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda c: (c[1], c[0]))
    refs = [("FlagEmbedding", "speedup_vs_reference")]
    if any(r.get("speedup_vs_optimum") is not None for r in rows):
        refs.append(("optimum", "speedup_vs_optimum"))
    head = ["batch x seq"] + [f"{name.split()[-1]} {mode} vs {ref}" for name in ours for mode in ("e2e", "engine")
                              for ref, _ in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, s in cells:
        vals = []
        for name in ours:
            for mode in ("e2e", "engine"):
                r = next((r for r in rows if (r["contender"], r["mode"], r["batch"], r["seq"]) == (name, mode, b, s)), {})
                for _, key in refs:
                    vals.append("-" if r.get(key) is None else f"{r[key]:.2f}")
        lines.append(f"| {b} x {s} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"Machine: {env['processor']}, {env['cpus']} cores, measured fp32 GEMM peak "
             f"{env['fp32_gemm_peak_gflops']} GFLOP/s. Model: {env['model'].get('model_type')} "
             f"{env['model'].get('num_hidden_layers')} layers, hidden {env['model'].get('hidden_size')}.", "",
             "| mode | batch x seq | contender | median ms | p95 ms | tokens/s | model GFLOP/s | % of fp32 GEMM peak | x FlagEmbedding | x optimum |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in sorted(rows, key=lambda r: (r["mode"], r["seq"], r["batch"], -r["tokens_per_s"])):
        lines.append(f"| {r['mode']} | {r['batch']} x {r['seq']} | {r['contender']} | {r['median_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['gflops']:.1f} | "
                     f"{100 * r['peak_fraction']:.0f} | {fmt(r.get('speedup_vs_reference'))} | {fmt(r.get('speedup_vs_optimum'))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    if not available("matplotlib"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=False)
    for ax, mode in zip(axes, ("e2e", "engine")):
        sel = [r for r in rows if r["mode"] == mode]
        cells = sorted({(r["batch"], r["seq"]) for r in sel}, key=lambda c: (c[1], c[0]))
        names = list(dict.fromkeys(r["contender"] for r in sel))
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            ys = [next((r["tokens_per_s"] for r in sel if r["contender"] == name and (r["batch"], r["seq"]) == c), 0)
                  for c in cells]
            ax.bar([i + j * width for i in range(len(cells))], ys, width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cells))])
        ax.set_xticklabels([f"{b}x{s}" for b, s in cells], rotation=45)
        ax.set_xlabel("batch x tokens")
        ax.set_ylabel("tokens/s")
        ax.set_title({"e2e": "end to end: encode(texts)", "engine": "engine only (pre-tokenized)"}[mode])
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def run_from_args(args, log=print) -> int:
    batches = _ints(args.batch_sizes, "--batch-sizes")
    seqs = _ints(args.seq_lens, "--seq-lens")
    if args.repeats < 1 or args.warmup < 0:
        raise BgeExportError("--repeats must be >= 1 and --warmup >= 0")
    from runtimes.bundle import open_bundle

    for b in args.bundles:
        open_bundle(b, verify=False)  # clear errors before any heavy work
    rows, env = run_bench([Path(b) for b in args.bundles], batches=batches, seqs=seqs, repeats=args.repeats,
                          warmup=args.warmup, flagmodel=not args.no_flagmodel, optimum=not args.no_optimum, log=log)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BgeExportError(f"--out {out} is a file; pass a folder for bench.jsonl, bench.md and bench.png")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BgeExportError(f"--out {out}: cannot write there ({exc.strerror})") from None
    with open(out / "bench.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "env": env}) + "\n")
    md = "## Speed-up (median latency ratios)\n\n" + summary_markdown(rows) + "\n## All rows\n\n" + markdown(rows, env)
    (out / "bench.md").write_text(md)
    png = plot(rows, out / "bench.png")
    if args.json:
        print(json.dumps({"env": env, "rows": rows}, indent=2))
    else:
        print(md)
    log(f"wrote {out / 'bench.jsonl'}, {out / 'bench.md'}" + (f", {out / 'bench.png'}" if png else
                                                               " (no plot: pip install 'bge-export[dev]')"))
    return 0
