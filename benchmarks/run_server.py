"""Servers head to head: `bge-export serve` (ort-cpu, ort-cpu-int8 and the fastest CPU target) against
infinity-emb 0.0.78 (--engine torch, and --engine optimum on its own ONNX export) and a FastAPI + FlagModel server
(one encode per request), all serving the real all-MiniLM-L6-v2 on this machine's CPU.

    bash benchmarks/infinity_venv.sh                  # once: infinity-emb in its own venv (/work/inf-venv)
    .venv/bin/python -m benchmarks.run_server [--infinity-venv /work/inf-venv] [--duration 10]

Every server runs at once, idle while another is measured (their idle CPU is recorded); cells run interleaved:
for each text length (16, 256 tokens) and concurrency (1, 8, 64 closed-loop clients, one text per request,
OpenAI's /v1/embeddings JSON), each server in turn for --duration seconds after a warm-up. Clients are a raw
asyncio load generator (benchmarks/loadgen.py) in this process, on the same two cores. Writes server.jsonl,
server.md and server.png to --out.
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


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--infinity-venv", default="/work/inf-venv", help="venv with infinity-emb[server,torch,optimum]")
    p.add_argument("--work", default="/tmp/bge-server-bench", help="bundles and exports are built here once")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/server-minilm-<cpu>)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell (default 2)")
    p.add_argument("--only", default=None, help="comma-separated server names to run (default: all)")
    args = p.parse_args()

    from benchmarks.loadgen import load
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
    for target, bundle in bundles.items():
        port += 1
        servers.append(Server(f"bge-export {target}", "ours", bge + [str(bundle), "--port", str(port),
                                                                      "--auto-truncate", "--log-level", "warning"],
                              port, "/v1/embeddings", bundle.name))
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
    rows = []
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
        for length in LENGTHS:
            bodies_texts = texts_of(length)
            for conc in CONCURRENCY:
                order = servers if (conc + length) % 2 else list(reversed(servers))  # alternate to spread drift
                for s in order:
                    bodies = [json.dumps({"input": [t], "model": s.model_field}).encode() for t in bodies_texts]
                    before = tree_cpu_seconds(s.proc.pid)
                    r = load(s.url, s.path, bodies, concurrency=conc, duration=args.duration, warmup=args.warmup)
                    r.update({"server": s.name, "kind": s.kind, "tokens": length, "inputs_per_s": r["requests_per_s"],
                              "tokens_per_s": r["requests_per_s"] * length, "cpu": cpu,
                              "server_cpu_s": round(tree_cpu_seconds(s.proc.pid) - before, 2), **meta[s.name]})
                    rows.append(r)
                    print(f"{length:>4} tok  c={conc:<3} {s.name:<26} {r['inputs_per_s']:8.1f} inputs/s  "
                          f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  {r['statuses']}", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()
    with open(out / "server.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out / "server.md").write_text(report(rows))
    plot(rows, out / "server.png")
    print(report(rows))
    return 0


def report(rows: list[dict]) -> str:
    lines = [f"CPU: {rows[0]['cpu']}; one text per request, closed-loop clients; inputs/s (p50 / p99 ms)", ""]
    names = list(dict.fromkeys(r["server"] for r in rows))
    cols = [(t, c) for t in LENGTHS for c in CONCURRENCY]
    lines.append("| server | " + " | ".join(f"{t} tok, c={c}" for t, c in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    cell = {(r["server"], r["tokens"], r["concurrency"]): r for r in rows}
    for n in names:
        vals = []
        for t, c in cols:
            r = cell.get((n, t, c))
            vals.append("-" if r is None else f"{r['inputs_per_s']:.0f} ({r['p50_ms']:.0f} / {r['p99_ms']:.0f})"
                        + ("" if set(r["statuses"]) == {"200"} else f" errors {r['statuses']}"))
        lines.append(f"| {n} | " + " | ".join(vals) + " |")
    lines.append("")
    for t in LENGTHS:
        for c in CONCURRENCY:
            ours = [r for r in rows if r["kind"] == "ours" and r["tokens"] == t and r["concurrency"] == c]
            peers = [r for r in rows if r["kind"] == "infinity" and r["tokens"] == t and r["concurrency"] == c]
            if ours and peers:
                best, peer = max(ours, key=lambda r: r["inputs_per_s"]), max(peers, key=lambda r: r["inputs_per_s"])
                lines.append(f"- {t} tokens, concurrency {c}: {best['server']} {best['inputs_per_s']:.0f}/s vs "
                             f"{peer['server']} {peer['inputs_per_s']:.0f}/s = **{best['inputs_per_s'] / peer['inputs_per_s']:.2f}x**;"
                             f" p99 {best['p99_ms']:.0f} vs {peer['p99_ms']:.0f} ms")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(LENGTHS) * 2, figsize=(16, 4))
    for i, t in enumerate(LENGTHS):
        for name in dict.fromkeys(r["server"] for r in rows):
            sel = sorted((r for r in rows if r["server"] == name and r["tokens"] == t), key=lambda r: r["concurrency"])
            axes[2 * i].plot([r["concurrency"] for r in sel], [r["inputs_per_s"] for r in sel], "o-", label=name)
            axes[2 * i + 1].plot([r["concurrency"] for r in sel], [r["p99_ms"] for r in sel], "o-", label=name)
        axes[2 * i].set_title(f"{t}-token texts: inputs/s")
        axes[2 * i + 1].set_title(f"{t}-token texts: p99 latency (ms)")
        for ax in axes[2 * i:2 * i + 2]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
    axes[1].set_yscale("log")
    axes[3].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"all-MiniLM-L6-v2 servers on {rows[0]['cpu']} (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(run())
