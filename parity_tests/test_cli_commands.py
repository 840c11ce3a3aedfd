"""The other commands on real bundles: parity (full and offline), bench, inspect --json."""
from __future__ import annotations

import json
import shutil

from bge_export.cli import main
from runtimes._optional import available
from runtimes.cpu import has_bf16
from parity_tests import checkpoints as ck


def test_parity_command_full(bundle, capsys):
    res = bundle("tiny-bert", "ort-cpu")
    assert main(["parity", str(res.bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["reference"].startswith("FlagEmbedding FlagModel")
    assert {c["metric"] for c in report["checks"]} >= {"cosine_min", "max_abs", "mismatched_texts"}


def test_parity_command_offline_uses_the_stored_sample(tmp_path, capsys):
    """On a serving host without the checkpoint, parity checks the bundle against its stored reference sample."""
    ckpt = ck.tiny_bert(tmp_path / "bge-small-en-v1.5")
    out = tmp_path / "bundle"
    assert main(["--model", str(ckpt), "--target", "ort-cpu", "--out", str(out), "--quiet"]) == 0
    shutil.rmtree(ckpt)
    capsys.readouterr()
    assert main(["parity", str(out)]) == 0
    captured = capsys.readouterr()
    assert "reference sample stored in the bundle" in captured.err and "PASSED" in captured.out
    assert "cosine_min" in captured.out


def test_bench_smoke(bundle, tmp_path, capsys):
    res = bundle("tiny-bert", "ort-cpu")
    out = tmp_path / "bench"
    assert main(["bench", str(res.bundle), "--batch-sizes", "2", "--seq-lens", "16", "--repeats", "1",
                 "--warmup", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    names = {r["contender"] for r in rows}
    expected = {"bge-export ort-cpu", "FlagEmbedding FlagModel (torch fp32)", "optimum ONNX export (ORT CPU)"}
    if has_bf16():  # the model cast to bf16 in plain torch: timed where the CPU has bf16 instructions
        expected.add("torch bf16 (FlagEmbedding's model cast to bf16)")
    if available("optimum.intel"):  # the benchmark venv (benchmarks/bench_venv.sh); not in the test venv
        expected |= {"optimum-intel OpenVINO export (fp32)"} | ({"optimum-intel OpenVINO export (bf16)"}
                                                              if has_bf16() else set())
    assert names == expected
    assert {r["mode"] for r in rows} == {"e2e", "engine"}
    assert all(r["batch"] == 2 and r["seq"] == 16 and r["tokens_per_s"] > 0 for r in rows)
    md = (out / "bench.md").read_text()
    assert md.count("| e2e |") == len(expected) + 1 and (out / "bench.png").stat().st_size > 1000  # + best table
    assert "| e2e | 2 x 16 | ort-cpu |" in md  # the fastest-bundle table (one bundle here)
    assert "(unstable)\": p95 above" in md


def test_bench_quick_mode(bundle, tmp_path):
    res = bundle("tiny-bert", "ort-cpu")
    out = tmp_path / "quick"
    assert main(["bench", str(res.bundle), "--quick", "--no-flagmodel", "--no-optimum", "--no-torch-bf16",
                 "--no-optimum-intel", "--warmup", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert {(r["batch"], r["seq"]) for r in rows} == {(1, 16), (8, 16), (1, 128), (8, 128)}
    assert {r["contender"] for r in rows} == {"bge-export ort-cpu"} and all(r["repeats"] == 3 for r in rows)


def test_best_table_compares_the_fastest_bundle_with_each_peer():
    from bge_export.bench import best_markdown

    def row(name, ms, mode="engine"):
        return {"contender": name, "mode": mode, "batch": 32, "seq": 128, "median_ms": ms, "peak_fraction": 0.5}

    md = best_markdown([row("bge-export ort-cpu", 600), row("bge-export ov-cpu-bf16", 200),
                        row("torch bf16 (FlagEmbedding's model cast to bf16)", 250),
                        row("optimum-intel OpenVINO export (bf16)", 220), row("FlagEmbedding FlagModel (torch fp32)", 700)])
    assert "x optimum ONNX" not in md  # only the peers that ran
    assert "| engine | 32 x 128 | ov-cpu-bf16 | 200.0 | 3.00 | 1.25 | 1.10 | 3.50 | 50 |" in md, md


def test_inspect_json_and_text(bundle, capsys):
    res = bundle("tiny-xlmr", "ort-cpu-int8")
    assert main(["inspect", str(res.bundle), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["family"] == "encoder" and d["target"] == "ort-cpu-int8" and d["build"]["quantization"]["per_channel"]
    assert main(["inspect", str(res.bundle)]) == 0
    text = capsys.readouterr().out
    assert "fusions" in text and "int8" in text and "PASSED" in text


def test_rows_with_a_long_tail_are_marked_unstable():
    from bge_export.bench import markdown

    def row(name, p95):
        return {"contender": name, "mode": "engine", "batch": 8, "seq": 128, "median_ms": 10.0, "p95_ms": p95,
                "tokens_per_s": 1.0, "gflops": 1.0, "peak_fraction": 0.5}

    env = {"model": {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384}, "processor": "cpu", "cpus": 2,
           "peaks_gflops": {"fp32": 100.0}, "peak_kinds": {"fp32": "ORT MatMul"}}
    md = markdown([row("bge-export ort-cpu", 12.0), row("bge-export ov-cpu", 20.0)], env)
    assert "| 20.0 (unstable) |" in md and "| 12.0 |" in md
