"""Servers head to head: `bge-export serve` (ort-cpu, ort-cpu-int8 and the fastest CPU target) against
infinity-emb 0.0.78 (--engine torch, and --engine optimum on its own ONNX export) and a FastAPI + FlagModel server
(one encode per request), all serving the real all-MiniLM-L6-v2 on this machine's CPU.

    bash benchmarks/infinity_venv.sh                  # once: infinity-emb in its own venv (/work/inf-venv)
    .venv/bin/python -m benchmarks.run_server [--infinity-venv /work/inf-venv] [--duration 10]

Every server runs at once, idle while another is measured (their idle CPU is recorded); cells run interleaved, each
server in turn for --duration seconds after a warm-up, on OpenAI's /v1/embeddings JSON:

* ``mixed`` (realistic traffic, benchmarks/traffic.py): real queries and passages, half the requests one query,
  half 1 to 8 passages; closed loop at 1, 8, 32 and 64 clients, then open loop (Poisson arrivals) at one fixed
  rate for every server: --open-load times the first bge-export server's closed-loop rate at 32 clients;
* ``single``: one text per request, a query or a passage with equal odds; closed loop at 1 and 32 clients;
* ``fixed``: texts of exactly 16 or 256 tokens, one per request; closed loop at 1, 8 and 64 clients.

Every row has requests, texts and tokens per second, p50 / p99 latency, and the **padding efficiency** of the
batches that ran (real tokens / padded tokens: from /metrics for bge-export; from each request's own lengths for
FastAPI + FlagModel, which pads every request alone; infinity does not report it). --baseline-tree serves an older
checkout's ort-cpu server in the same run (`git worktree add /tmp/base COMMIT`); --variant adds servers with other
options. Clients are a raw asyncio load generator (benchmarks/loadgen.py) in this process, on the same two cores.
Writes server.jsonl, server.md and server.png to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LENGTHS = (16, 256)
CONCURRENCY = (1, 8, 64)
MIXED_CONCURRENCY = (1, 8, 32, 64)
SINGLE_CONCURRENCY = (1, 32)
MAX_LENGTH = 256  # all-MiniLM-L6-v2's (sentence-transformers) max_seq_length; the traffic's texts are below it


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children that were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in [pid] + [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                      text=True).stdout.split()]:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


class Server:
    def __init__(self, name: str, kind: str, cmd: list[str], port: int, path: str, model_field: str,
                 env: dict | None = None, cwd: Path | None = None):
        self.name, self.kind, self.port, self.path, self.model_field = name, kind, port, path, model_field
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(f"/tmp/bench-server-{name}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True, cwd=cwd)

    def wait(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                self.embed(["warm up"], timeout=30)  # urlopen raises for anything but a 2xx answer
                return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"{self.name} did not answer in {timeout} s")

    def embed(self, texts: list[str], timeout: float = 60) -> np.ndarray:
        import urllib.request

        body = json.dumps({"input": texts, "model": self.model_field}).encode()
        req = urllib.request.Request(self.url + self.path, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = json.loads(r.read())["data"]
        return np.array([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float32)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def build_bundles(work: Path) -> dict[str, Path]:
    from bge_export.build.targets import default_cpu_target
    from bge_export.cli import main as cli

    targets = list(dict.fromkeys(["ort-cpu", "ort-cpu-int8", default_cpu_target()[0]]))
    out = {}
    for target in targets:
        bundle = work / f"all-MiniLM-L6-v2-mean-{target}"
        if not (bundle / "manifest.json").exists():  # mean pooling: the model's own, as infinity computes it
            rc = cli(["--target", target, "--pooling", "mean", "--out", str(bundle), "--quiet", "--overwrite"])
            if rc:
                raise SystemExit(f"building {target} failed ({rc})")
        out[target] = bundle
    return out


def optimum_export(model: Path, work: Path) -> Path:
    """The model folder plus optimum's own ONNX export (model.onnx), as infinity's optimum engine expects."""
    out = work / "all-MiniLM-L6-v2-optimum-onnx"
    if not (out / "model.onnx").exists():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(model, out)
        from optimum.exporters.onnx import main_export

        main_export(str(model), output=str(out / "onnx-export"), task="feature-extraction", no_post_process=True,
                    library_name="transformers")  # last_hidden_state, as infinity reads it
        shutil.move(str(out / "onnx-export" / "model.onnx"), out / "model.onnx")
        shutil.rmtree(out / "onnx-export")
    return out


def texts_of(length: int, n: int = 256) -> list[str]:
    from bge_export.bench.texts import exact_length_texts
    from bge_export.checkpoint import embedded_default_path
    from bge_export.parity_run import parity_texts
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(embedded_default_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    words = " ".join(parity_texts()["corpus"]).split()
    return exact_length_texts(lambda t: len(tok.encode(t).ids), words, n, length)


def metric_sum(url: str, series: str) -> float | None:
    """A Prometheus series summed over its labels (None when the server has no /metrics or no such series)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
            text = r.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(series + " ") or line.startswith(series + "{")]
    return sum(values) if values else None


class PaddingMeter:
    """The padding efficiency of the batches a server ran during one cell: bge-export's /metrics (real input tokens
    over the padded tokens of its engine batches); FastAPI + FlagModel pads each request alone, so its figure
    comes from the requests' own lengths; None for infinity (it reports no such figure)."""

    def __init__(self, server: "Server", reqs):
        self.server, self.reqs = server, reqs
        self.before = self._read()

    def _read(self):
        if self.server.kind != "ours":
            return None
        return (metric_sum(self.server.url, "te_request_input_length_sum"),
                metric_sum(self.server.url, "te_batch_next_tokens_sum"))

    def efficiency(self) -> float | None:
        if self.server.kind == "flagmodel" and self.reqs is not None:
            real = sum(sum(r.tokens) for r in self.reqs)
            return real / sum(len(r.tokens) * max(r.tokens) for r in self.reqs)
        after = self._read()
        if after is None or None in after or None in self.before or after[1] == self.before[1]:
            return None
        return (after[0] - self.before[0]) / (after[1] - self.before[1])


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--infinity-venv", default="/work/inf-venv", help="venv with infinity-emb[server,torch,optimum]")
    p.add_argument("--work", default="/tmp/bge-server-bench", help="bundles and exports are built here once")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/server-minilm-<cpu>)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell (default 2)")
    p.add_argument("--only", default=None, help="comma-separated server names to run (default: all)")
    p.add_argument("--traffic", default="mixed,single,fixed",
                   help="which cells: any of mixed, single, fixed (default all three)")
    p.add_argument("--open-load", type=float, default=0.8,
                   help="the open-loop arrival rate, as a fraction of the first bge-export server's closed-loop "
                        "requests/s at 32 clients (default 0.8: near saturation)")
    p.add_argument("--baseline-tree", default=None, metavar="DIR",
                   help="a checkout of an older commit: its ort-cpu server joins the run as 'bge-export ort-cpu (NAME)'")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:TARGET:ARGS",
                   help="one more bge-export server: its label, target and extra serve arguments "
                        "(e.g. 'ort-cpu e=0:ort-cpu:--min-padding-efficiency 0')")
    args = p.parse_args()
    traffic = [t for t in args.traffic.split(",") if t]
    unknown = set(traffic) - {"mixed", "single", "fixed"}
    if unknown:
        p.error(f"--traffic takes mixed, single, fixed; not {sorted(unknown)}")

    from benchmarks import traffic as tr
    from benchmarks.loadgen import load, load_open
    from benchmarks.run_cpu_targets import cpu_kind
    from bge_export.checkpoint import embedded_default_path
    from runtimes.cpu import capabilities

    out = Path(args.out or HERE / "results" / f"server-minilm-{cpu_kind()}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = embedded_default_path()
    bundles = build_bundles(work)
    bge = [str(Path(sys.executable).with_name("bge-export")), "serve"]
    servers: list[Server] = []
    port = 18700
    ours = [(f"bge-export {t}", t, [], None) for t in bundles]
    for v in args.variant:
        label, target, extra = (v.split(":", 2) + [""])[:3]
        ours.append((f"bge-export {label}", target, extra.split(), None))
    if args.baseline_tree:
        base = Path(args.baseline_tree).resolve()
        ours.append((f"bge-export ort-cpu ({base.name})", "ort-cpu", [], base))
    for name, target, extra, tree in ours:
        port += 1
        cmd = bge + [str(bundles[target]), "--port", str(port), "--auto-truncate", "--log-level", "warning"] + extra
        env, cwd = None, None
        if tree is not None:  # the old tree's code first on the path (and as the working folder)
            cmd = [sys.executable, "-c", "import sys; from bge_export.cli import main; sys.exit(main())"] + cmd[1:]
            env, cwd = {"PYTHONPATH": str(tree)}, tree
        servers.append(Server(name, "ours", cmd, port, "/v1/embeddings", bundles[target].name, env, cwd))
    inf = Path(args.infinity_venv) / "bin" / "infinity_emb"
    if inf.exists():
        hf_home = work / "hf-home"
        env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        port += 1
        servers.append(Server("infinity torch", "infinity", [str(inf), "v2", "--model-id", str(model), "--engine",
                                                             "torch", "--device", "cpu", "--port", str(port),
                                                             "--no-model-warmup", "--pooling-method", "mean"],
                              port, "/embeddings", str(model), env))
        onnx_model = optimum_export(model, work)
        port += 1
        # run from the export folder with --model-id "." : infinity 0.0.78 passes optimum 2.x an absolute ONNX file
        # name for a local folder, which optimum's file lookup (by name) does not find
        servers.append(Server("infinity optimum", "infinity", [str(inf), "v2", "--model-id", ".", "--engine",
                                                               "optimum", "--device", "cpu", "--port", str(port),
                                                               "--no-model-warmup", "--pooling-method", "mean"],
                              port, "/embeddings", ".", env, cwd=onnx_model))
    else:
        print(f"infinity-emb not found at {inf}: run `bash benchmarks/infinity_venv.sh`; timing without it",
              file=sys.stderr)
    port += 1
    servers.append(Server("FastAPI + FlagModel", "flagmodel", [sys.executable, "-m", "benchmarks.flagmodel_server",
                                                              str(model), "--port", str(port), "--pooling", "mean"],
                          port, "/v1/embeddings", "flagmodel", {"PYTHONPATH": str(ROOT)}))
    if args.only:
        keep = set(args.only.split(","))
        for s in servers:
            if s.name not in keep:
                s.stop()
        servers = [s for s in servers if s.name in keep]
    count = tr.counter(str(model / "tokenizer.json"), 512)
    shapes = {"mixed": tr.requests(4000, count, shape="mixed"), "single": tr.requests(4000, count, shape="single")}
    rows: list[dict] = []
    try:
        for s in servers:
            s.wait()
        # sanity: every server embeds like the in-process runtime (cosine), and its idle CPU
        import runtimes

        reference = runtimes.load(bundles["ort-cpu"]).encode(["a sanity check sentence", "another one"])
        meta = {}
        for s in servers:
            got = s.embed(["a sanity check sentence", "another one"])
            got = got / np.linalg.norm(got, axis=1, keepdims=True)
            before = tree_cpu_seconds(s.proc.pid)
            time.sleep(2)
            meta[s.name] = {"cosine_vs_ort_cpu": float((got * reference).sum(1).min()),
                            "idle_cpu_percent": round((tree_cpu_seconds(s.proc.pid) - before) / 2 * 100, 1)}
            print(f"{s.name}: {meta[s.name]}", file=sys.stderr)
        cpu = capabilities()["cpu"]

        def cell(s: Server, shape: str, reqs, fixed_tokens: int | None = None, **how) -> dict:
            bodies = [r.body(s.model_field) for r in reqs]
            weights = [(len(r.texts), sum(r.tokens)) for r in reqs]
            padding = PaddingMeter(s, reqs)
            before = tree_cpu_seconds(s.proc.pid)
            if "rate" in how:
                r = load_open(s.url, s.path, bodies, duration=args.duration, warmup=args.warmup, weights=weights,
                              **how)
                r["concurrency"] = "open"
            else:
                r = load(s.url, s.path, bodies, duration=args.duration, warmup=args.warmup, weights=weights, **how)
            r.update({"server": s.name, "kind": s.kind, "traffic": shape, "tokens": fixed_tokens, "cpu": cpu,
                      "inputs_per_s": r["texts_per_s"], "padding_efficiency": padding.efficiency(),
                      "server_cpu_s": round(tree_cpu_seconds(s.proc.pid) - before, 2), **meta[s.name]})
            eff = r["padding_efficiency"]
            print(f"{shape:>6} {fixed_tokens or '':>4} c={r['concurrency']!s:<4} {s.name:<34} {r['requests_per_s']:7.1f} "
                  f"req/s {r['texts_per_s']:7.1f} texts/s {r['tokens_per_s']:8.0f} tok/s  p50 {r['p50_ms']:7.1f} "
                  f"p99 {r['p99_ms']:7.1f} ms  pad-eff {'-' if eff is None else f'{eff:.2f}'}  {r['statuses']}",
                  file=sys.stderr)
            rows.append(r)
            return r

        for shape, concs in (("mixed", MIXED_CONCURRENCY), ("single", SINGLE_CONCURRENCY)):
            if shape not in traffic:
                continue
            for conc in concs:
                for s in (servers if conc % 2 else list(reversed(servers))):  # alternate to spread drift
                    cell(s, shape, shapes[shape], concurrency=conc)
        if "mixed" in traffic:
            first = next(s.name for s in servers if s.kind == "ours")
            ref = next(r for r in rows if r["server"] == first and r["traffic"] == "mixed" and r["concurrency"] == 32)
            rate = max(0.1, round(args.open_load * ref["requests_per_s"], 1))
            print(f"open loop: {rate} requests/s ({args.open_load} x {ref['server']} at 32 clients)", file=sys.stderr)
            for s in servers:
                cell(s, "mixed", shapes["mixed"], rate=rate)
        if "fixed" in traffic:
            for length in LENGTHS:
                fixed = [tr.Request((t,), (length,), "fixed") for t in texts_of(length)]
                for conc in CONCURRENCY:
                    for s in (servers if (conc + length) % 2 else list(reversed(servers))):
                        cell(s, "fixed", fixed, length, concurrency=conc)
    finally:
        for s in servers:
            s.stop()
    with open(out / "server.jsonl", "w") as f:
        f.write(json.dumps({"traffic": {k: tr.describe(v) for k, v in shapes.items()}}) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out / "server.md").write_text(report(rows))
    plot(rows, out / "server.png")
    print(report(rows))
    return 0


def _cell_text(r: dict | None, eff: bool = True) -> str:
    if r is None:
        return "-"
    text = f"{r['requests_per_s']:.1f} ({r['p50_ms']:.0f} / {r['p99_ms']:.0f})"
    if eff and r.get("padding_efficiency") is not None:
        text += f" e={r['padding_efficiency']:.2f}"
    if set(r["statuses"]) != {"200"}:
        text += f" errors {r['statuses']}"
    return text


def report(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["server"] for r in rows))
    cell = {(r["server"], r["traffic"], r["tokens"], r["concurrency"]): r for r in rows}
    lines = [f"CPU: {rows[0]['cpu']}", ""]
    mixed = [c for c in [*MIXED_CONCURRENCY, "open"] if any(k[1] == "mixed" and k[3] == c for k in cell)]
    if mixed:
        rate = next((r["rate"] for r in rows if r["concurrency"] == "open"), None)
        lines += ["Realistic traffic (mixed: half the requests one query, half 1-8 passages): requests/s "
                  "(p50 / p99 ms), e = padding efficiency of the batches that ran"
                  + (f"; open loop at {rate} requests/s" if rate else ""), "",
                  "| server | " + " | ".join(f"c={c}" if c != "open" else "open loop" for c in mixed)
                  + " | c=32 / c=1 | c=64 / c=1 |", "|---|" + "---|" * (len(mixed) + 2)]
        for n in names:
            vals = [_cell_text(cell.get((n, "mixed", None, c))) for c in mixed]
            one = cell.get((n, "mixed", None, 1))
            for c in (32, 64):
                r = cell.get((n, "mixed", None, c))
                vals.append(f"{r['requests_per_s'] / one['requests_per_s']:.2f}x" if r and one else "-")
            lines.append(f"| {n} | " + " | ".join(vals) + " |")
        lines.append("")
    single = [c for c in SINGLE_CONCURRENCY if any(k[1] == "single" and k[3] == c for k in cell)]
    if single:
        lines += ["One text per request (a query or a passage): requests/s (p50 / p99 ms), e = padding efficiency", "",
                  "| server | " + " | ".join(f"c={c}" for c in single) + " | ratio |", "|---|" + "---|" * (len(single) + 1)]
        for n in names:
            rs = [cell.get((n, "single", None, c)) for c in single]
            ratio = (f"{rs[-1]['requests_per_s'] / rs[0]['requests_per_s']:.2f}x" if all(rs) and len(rs) > 1 else "-")
            lines.append(f"| {n} | " + " | ".join(_cell_text(r) for r in rs) + f" | {ratio} |")
        lines.append("")
    fixed = [(t, c) for t in LENGTHS for c in CONCURRENCY if any(k[1] == "fixed" and k[2] == t and k[3] == c for k in cell)]
    if fixed:
        lines += ["Fixed-length texts (every text exactly 16 or 256 tokens), one per request: inputs/s (p50 / p99 ms)", "",
                  "| server | " + " | ".join(f"{t} tok, c={c}" for t, c in fixed) + " |", "|---|" + "---|" * len(fixed)]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(_cell_text(cell.get((n, "fixed", t, c)), eff=False)
                                                   for t, c in fixed) + " |")
        lines.append("")
    for shape, t, c in [("mixed", None, c) for c in mixed] + [("fixed", t, c) for t, c in fixed]:
        ours = [r for r in rows if r["kind"] == "ours" and (r["traffic"], r["tokens"], r["concurrency"]) == (shape, t, c)]
        peers = [r for r in rows if r["kind"] == "infinity" and (r["traffic"], r["tokens"], r["concurrency"]) == (shape, t, c)]
        if ours and peers and c == "open":  # the same arrivals for every server: compare latency
            best, peer = min(ours, key=lambda r: r["p99_ms"]), min(peers, key=lambda r: r["p99_ms"])
            lines.append(f"- {shape}, open loop at {best.get('rate')} requests/s: p99 {best['server']} "
                         f"{best['p99_ms']:.0f} ms vs {peer['server']} {peer['p99_ms']:.0f} ms (p50 {best['p50_ms']:.0f} "
                         f"vs {peer['p50_ms']:.0f})")
        elif ours and peers:
            best, peer = max(ours, key=lambda r: r["tokens_per_s"]), max(peers, key=lambda r: r["tokens_per_s"])
            what = f"{shape}" + (f" {t} tokens" if t else "") + f", {'open loop' if c == 'open' else f'concurrency {c}'}"
            lines.append(f"- {what}: {best['server']} {best['requests_per_s']:.1f} req/s vs {peer['server']} "
                         f"{peer['requests_per_s']:.1f} = **{best['tokens_per_s'] / peer['tokens_per_s']:.2f}x**; "
                         f"p99 {best['p99_ms']:.0f} vs {peer['p99_ms']:.0f} ms")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    panels = [("mixed", None, "realistic traffic: texts/s", "texts_per_s"),
              ("mixed", None, "realistic traffic: p99 latency (ms)", "p99_ms"),
              ("mixed", None, "realistic traffic: padding efficiency", "padding_efficiency")]
    panels += [("fixed", t, f"{t}-token texts: inputs/s", "inputs_per_s") for t in LENGTHS]
    panels = [pn for pn in panels if any(r["traffic"] == pn[0] and r["tokens"] == pn[1] for r in rows)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (shape, t, title, key) in zip(axes[0], panels):
        for name in dict.fromkeys(r["server"] for r in rows):
            sel = sorted((r for r in rows if r["server"] == name and r["traffic"] == shape and r["tokens"] == t
                          and r["concurrency"] != "open" and r.get(key) is not None), key=lambda r: r["concurrency"])
            ax.plot([r["concurrency"] for r in sel], [r[key] for r in sel], "o-", label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log", base=2)
        if key == "padding_efficiency":
            ax.set_ylim(0, 1.05)
        else:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"all-MiniLM-L6-v2 servers on {rows[0]['cpu']} (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(run())
