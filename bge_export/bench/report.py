"""A bench run's outputs: bench.jsonl (one row per contender, mode and cell, with the environment), bench.md (speed-ups,
the fastest bundle per cell against each peer, every row) and bench.png (tokens/s per cell)."""
from __future__ import annotations

import json
from pathlib import Path

from runtimes._optional import available


def short_name(contender: str) -> str:
    """'bge-export ort-cpu' -> 'ort-cpu', 'optimum ONNX export (ORT CPU)' -> 'optimum ONNX export'."""
    return contender.removeprefix("bge-export ").split(" (")[0]


MODE_ORDER = ("e2e", "e2e-queries", "engine")
MODE_TITLES = {"e2e": "end to end: encode(texts) / compute_score(pairs)", "e2e-queries": "end to end: encode_queries",
               "engine": "engine only (pre-tokenized)"}


def modes_of(rows: list[dict]) -> list[str]:
    present = {r["mode"] for r in rows}
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def summary_markdown(rows: list[dict]) -> str:
    """Speed-ups of each bundle over the FlagEmbedding reference and optimum per cell (median latency ratios)."""
    ours = list(dict.fromkeys(r["contender"] for r in rows if r["contender"].startswith("bge-export")))
    cells = sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda c: (c[1], c[0]))
    modes = modes_of(rows)
    refs = [("FlagEmbedding", "speedup_vs_reference")]
    if any(r.get("speedup_vs_optimum") is not None for r in rows):
        refs.append(("optimum", "speedup_vs_optimum"))
    head = ["batch x seq"] + [f"{name.split()[-1]} {mode} vs {ref}" for name in ours for mode in modes
                              for ref, _ in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, s in cells:
        vals = []
        for name in ours:
            for mode in modes:
                r = next((r for r in rows if (r["contender"], r["mode"], r["batch"], r["seq"]) == (name, mode, b, s)), {})
                for _, key in refs:
                    vals.append("-" if r.get(key) is None else f"{r[key]:.2f}")
        lines.append(f"| {b} x {s} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


PEER_COLUMNS = (("ort-cpu", "bge-export ort-cpu"), ("torch bf16", "torch bf16"),
                ("optimum-intel bf16", "optimum-intel OpenVINO export (bf16)"),
                ("optimum ONNX", "optimum ONNX export"), ("FlagEmbedding", "FlagEmbedding"))


def best_markdown(rows: list[dict]) -> str:
    """Per mode and cell: the fastest bge-export bundle, its latency ratio over ``ort-cpu`` and each peer present,
    and its fraction of its precision's peak (the issue-12 goals read off this table)."""
    present = [(label, prefix) for label, prefix in PEER_COLUMNS
               if any(r["contender"].startswith(prefix) for r in rows)]
    head = ["mode", "batch x seq", "fastest bge-export", "ms"] + [f"x {label}" for label, _ in present] + ["% of peak"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(head) - 3)]
    for mode in modes_of(rows):
        for b, s in sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda c: (c[1], c[0])):
            cell = [r for r in rows if (r["mode"], r["batch"], r["seq"]) == (mode, b, s)]
            ours = [r for r in cell if r["contender"].startswith("bge-export")]
            if not ours:
                continue
            best = min(ours, key=lambda r: r["median_ms"])
            vals = []
            for _, prefix in present:
                peer = next((r for r in cell if r["contender"].startswith(prefix)), None)
                vals.append("-" if peer is None else f"{peer['median_ms'] / best['median_ms']:.2f}")
            lines.append(f"| {mode} | {b} x {s} | {short_name(best['contender'])} | {best['median_ms']:.1f} | "
                         + " | ".join(vals) + f" | {100 * best['peak_fraction']:.0f} |")
    return "\n".join(lines) + "\n"


def check_text(r: dict) -> str:
    if "check_max_abs" not in r:
        return "-"
    extra = (f" (rel. spread {r['check_rel_spread']:.1e})" if "check_rel_spread" in r else
             f" (cos min {r['check_cosine_min']:.6f})" if "check_cosine_min" in r else "")
    return f"{r['check_max_abs']:.1e}{extra}"


UNSTABLE_P95 = 1.3  # a row whose p95 exceeds its median by more than this factor is flagged in bench.md


def markdown(rows: list[dict], env: dict) -> str:
    m = env["model"]
    shape = (f"Model: {m.get('model_type')} {m.get('num_hidden_layers')} layers, hidden {m.get('hidden_size')}"
             + (f", {m['num_attention_heads']} heads / {m['num_key_value_heads']} KV heads, FFN "
                f"{m['intermediate_size']}, {m['layers_in_graph']} layers in the graph"
                if "layers_in_graph" in m else "")
             + ".")
    if env.get("gpu"):
        machine = f"GPU: {env['gpu']}, measured fp16 GEMM peak {env['gpu_fp16_peak_gflops'] / 1000:.0f} TFLOP/s."
        peak = "% of fp16 GEMM peak"
    else:
        machine = (f"Machine: {env['processor']}, {env['cpus']} cores. Measured peaks: "
                   + "; ".join(f"{env['peak_kinds'][k]}: {v} GFLOP/s" for k, v in env["peaks_gflops"].items())
                   + ". Each row is divided by the peak of its own precision.")
        peak = "% of its precision's peak"
    lines = [f"{machine} {shape} \"(unstable)\": p95 above {UNSTABLE_P95}x the median.", "",
             f"| mode | batch x seq | contender | median ms | p95 ms | tokens/s | GFLOP/s (work done) | {peak} | x FlagEmbedding | x optimum | max abs diff vs FlagEmbedding |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    order = {mode: i for i, mode in enumerate(modes_of(rows))}
    for r in sorted(rows, key=lambda r: (order[r["mode"]], r["seq"], r["batch"], -r["tokens_per_s"])):
        unstable = " (unstable)" if r["p95_ms"] > UNSTABLE_P95 * r["median_ms"] else ""
        lines.append(f"| {r['mode']} | {r['batch']} x {r['seq']} | {r['contender']} | {r['median_ms']:.1f} | "
                     f"{r['p95_ms']:.1f}{unstable} | {r['tokens_per_s']:.0f} | {r['gflops']:.1f} | "
                     f"{100 * r['peak_fraction']:.0f} | {fmt(r.get('speedup_vs_reference'))} | "
                     f"{fmt(r.get('speedup_vs_optimum'))} | {check_text(r)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> bool:
    """tokens/s bars per cell, one panel per mode; rows with a "group" key (several models in one file) get one
    line of panels per group."""
    if not available("matplotlib"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r.get("group") for r in rows))
    ncols = max(len(modes_of([r for r in rows if r.get("group") == g])) for g in groups)
    fig, axes = plt.subplots(len(groups), ncols, figsize=(7 * ncols, 5 if len(groups) == 1 else 4 * len(groups)),
                             sharey=False, squeeze=False)
    # one color per contender across all panels; with several groups the FlagEmbedding classes share one entry
    label_of = (lambda n: "FlagEmbedding (torch fp32)" if n.startswith("FlagEmbedding") else n) if len(groups) > 1 \
        else (lambda n: n)
    colors = {lab: f"C{i}" for i, lab in enumerate(dict.fromkeys(label_of(r["contender"]) for r in rows))}
    legend = {}
    for gi, group in enumerate(groups):
        grows = [r for r in rows if r.get("group") == group]
        modes = modes_of(grows)
        for ax in axes[gi][len(modes):]:
            ax.axis("off")
        for ax, mode in zip(axes[gi], modes):
            sel = [r for r in grows if r["mode"] == mode]
            cells = sorted({(r["batch"], r["seq"]) for r in sel}, key=lambda c: (c[1], c[0]))
            names = list(dict.fromkeys(r["contender"] for r in sel))
            width = 0.8 / max(1, len(names))
            for j, name in enumerate(names):
                ys = [next((r["tokens_per_s"] for r in sel if r["contender"] == name and (r["batch"], r["seq"]) == c), 0)
                      for c in cells]
                label = label_of(name)
                bars = ax.bar([i + j * width for i in range(len(cells))], ys, width, label=label, color=colors[label])
                legend.setdefault(label, bars)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cells))])
            ax.set_xticklabels([f"{b}x{s}" for b, s in cells], rotation=0 if len(groups) > 1 else 45)
            ax.set_xlabel("batch x tokens")
            ax.set_ylabel("tokens/s")
            title = MODE_TITLES.get(mode, mode)
            ax.set_title(title if group is None else f"{group}: {mode}", fontsize=10 if group else None)
            ax.grid(axis="y", alpha=0.3)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(legend), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if len(groups) == 1 else 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(rows: list[dict], env: dict, out: Path) -> tuple[str, bool]:
    """bench.jsonl, bench.md and bench.png into the existing folder ``out``; returns the markdown and whether the
    plot was written (it needs matplotlib)."""
    with open(out / "bench.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({**r, "env": env}) + "\n")
    md = ("## Speed-up (median latency ratios)\n\n" + summary_markdown(rows)
          + "\n## The fastest bundle per cell, against ort-cpu and the peers (latency ratios)\n\n" + best_markdown(rows)
          + "\n## All rows\n\n" + markdown(rows, env))
    (out / "bench.md").write_text(md)
    return md, plot(rows, out / "bench.png")
