"""`bge-export embed`: JSONL / Parquet / text in, Parquet out that pyarrow and DuckDB read, equal to the in-process
runtime; resume after an interruption gives every row exactly once; bad input is a one-line error naming the file
and row; the same on a Ray cluster on loopback, including a worker node removed mid-run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import runtimes
from bge_export.cli import main
from bge_export.parity_run import parity_texts

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

CORPUS = parity_texts()["corpus"] + parity_texts()["queries"] + ["", "emoji 🙂 中文"]


def write_jsonl(path: Path, texts, ids=True, start=0):
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"d{start + i}", "text": t} if ids else {"text": t}) + "\n")
    return path


def read_output(out: Path) -> dict:
    table = pq.read_table(out)  # the folder: every shard, as pandas / DuckDB / Spark would read it
    return {k: table.column(k).to_pylist() for k in table.column_names}


def embed(*args) -> int:
    return main(["embed", *map(str, args)])


@pytest.fixture(scope="module")
def encoder(bundle):
    return bundle("tiny-bert", "ort-cpu").bundle


@pytest.fixture(scope="module")
def m3(bundle):
    return bundle("tiny-m3", "ort-cpu").bundle


def test_jsonl_parquet_and_text_equal_in_process_encode(encoder, tmp_path):
    model = runtimes.load(encoder)
    src = tmp_path / "in"
    src.mkdir()
    write_jsonl(src / "a.jsonl", CORPUS[:150])
    pq.write_table(pa.table({"id": [f"d{150 + i}" for i in range(100)], "text": CORPUS[150:250]}), src / "b.parquet",
                   row_group_size=30)
    assert embed(encoder, "--input", src, "--output", tmp_path / "out", "--shard-rows", "64") == 0
    got = read_output(tmp_path / "out")
    assert sorted(got["id"]) == sorted(f"d{i}" for i in range(250))  # every row exactly once
    by_id = dict(zip(got["id"], got["vector"]))
    texts = CORPUS[:250]
    want = model.encode(texts)
    vecs = np.array([by_id[f"d{i}"] for i in range(250)], dtype=np.float32)
    np.testing.assert_allclose(vecs, want, atol=1e-6, rtol=0)  # other batch compositions: float rounding only
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 250 and manifest["shard_count"] == 5
    assert manifest["build_key"] == runtimes.open_bundle(encoder).manifest.data["build"]["key"]
    # plain text, no ids: the row numbers; one shard in one batch is bit for bit encode()
    (src2 := tmp_path / "txt").mkdir()
    (src2 / "lines.txt").write_text("\n".join(CORPUS[:20]) + "\n")
    assert embed(encoder, "--input", src2 / "lines.txt", "--output", tmp_path / "out2") == 0
    got = read_output(tmp_path / "out2")
    assert got["id"] == list(range(20))
    assert np.array_equal(np.array(got["vector"], dtype=np.float32), model.encode(CORPUS[:20]))
    duckdb = pytest.importorskip("duckdb")
    n, dim = duckdb.sql(f"SELECT count(*), max(len(vector)) FROM '{tmp_path / 'out'}/*.parquet'").fetchall()[0]
    assert (n, dim) == (250, want.shape[1])


def test_m3_sparse_and_colbert_columns(m3, tmp_path):
    model = runtimes.load(m3, truncate_dim=8)
    write_jsonl(tmp_path / "c.jsonl", CORPUS[:40])
    assert embed(m3, "--input", tmp_path / "c.jsonl", "--output", tmp_path / "o", "--colbert", "--option",
                 "truncate_dim=8", "--batch-tokens", "0") == 0
    got = read_output(tmp_path / "o")
    schema = pq.read_schema(next((tmp_path / "o").glob("part-*.parquet")))
    assert str(schema.field("sparse").type) == "list<element: struct<index: int32, value: float>>"
    want = model.encode(CORPUS[:40], return_dense=True, return_sparse=True, return_colbert_vecs=True)
    order = [int(i[1:]) for i in got["id"]]
    assert np.array_equal(np.array(got["vector"], dtype=np.float32), want["dense_vecs"][order])
    for row, i in enumerate(order):
        assert {str(e["index"]): e["value"] for e in got["sparse"][row]} == {
            k: float(np.float32(v)) for k, v in want["lexical_weights"][i].items()}
        assert np.array_equal(np.array(got["colbert"][row], dtype=np.float32).reshape(want["colbert_vecs"][i].shape),
                              want["colbert_vecs"][i])


def test_interrupted_run_resumes_with_every_row_once(encoder, tmp_path):
    write_jsonl(tmp_path / "big.jsonl", (CORPUS * 4)[:1000])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bge_export.cli", "embed", str(encoder), "--input", str(tmp_path / "big.jsonl"),
           "--output", str(out), "--shard-rows", "50", "--batch-tokens", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once a few shards are done, mid-shard
        m = out / "_manifest.json"
        if m.exists() and len(json.loads(m.read_text())["shards"]) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = json.loads((out / "_manifest.json").read_text())
    assert not before["complete"] and 3 <= len(before["shards"]) < 20
    (out / ".part-00019.parquet.tmp-1").write_bytes(b"partial")  # what a kill mid-write leaves
    assert embed(encoder, "--input", tmp_path / "big.jsonl", "--output", out, "--shard-rows", "50") == 2  # no --resume
    assert embed(encoder, "--input", tmp_path / "big.jsonl", "--output", out, "--shard-rows", "50", "--batch-tokens",
                 "256", "--resume") == 0
    got = read_output(out)
    assert sorted(got["id"]) == sorted(f"d{i}" for i in range(1000)) and len(got["id"]) == 1000
    assert not list(out.glob(".*tmp*"))
    want = runtimes.load(encoder).encode((CORPUS * 4)[:1000])
    by_id = dict(zip(got["id"], got["vector"]))
    np.testing.assert_allclose(np.array([by_id[f"d{i}"] for i in range(1000)]), want, atol=1e-6, rtol=0)


def test_bad_input_is_one_line_and_leaves_no_finished_shard(encoder, bundle, tmp_path, capsys):
    def fails(*args, expect: str) -> str:
        rc = embed(encoder, *args)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error" in line]  # progress lines may precede it
        assert rc == 2 and expect in err and "Traceback" not in err and len(errors) == 1, err
        return err

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "body": "x"}) + "\n")
    fails("--input", bad, "--output", tmp_path / "o1", expect="bad.jsonl row 1: no field 'text'")
    rows = [json.dumps({"id": i, "text": f"text {i}"}) for i in range(30)]
    rows[17] = json.dumps({"id": 17, "text": 17})
    bad.write_text("\n".join(rows) + "\n")
    fails("--input", bad, "--output", tmp_path / "o2", "--shard-rows", "10", expect="bad.jsonl row 18: 'text' is int")
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["_manifest.json", "part-00000.parquet"]
    assert list(json.loads((tmp_path / "o2" / "_manifest.json").read_text())["shards"]) == ["part-00000.parquet"]
    (tmp_path / "empty.jsonl").write_text("")
    fails("--input", tmp_path / "empty.jsonl", "--output", tmp_path / "o3", expect="empty.jsonl is empty")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    fails("--input", tmp_path / "broken.parquet", "--output", tmp_path / "o4", expect="cannot read")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "cols.parquet")
    fails("--input", tmp_path / "cols.parquet", "--output", tmp_path / "o5", expect="no column 'text'")
    good = write_jsonl(tmp_path / "good.jsonl", CORPUS[:5])
    fails("--input", good, "--output", tmp_path / "o2", expect="--resume")  # an earlier run is there
    (tmp_path / "o9").mkdir()
    (tmp_path / "o9" / "_manifest.json").write_text("{not json")
    fails("--input", good, "--output", tmp_path / "o9", "--resume", expect="not a readable manifest")
    fails("--input", tmp_path / "nope.jsonl", "--output", tmp_path / "o6", expect="does not exist")
    fails("--input", good, "--output", tmp_path / "o7", "--colbert", expect="--colbert needs")
    rc = embed(bundle("tiny-reranker-xlmr", "ort-cpu").bundle, "--input", good, "--output", tmp_path / "o8")
    assert rc == 2 and "score pairs" in capsys.readouterr().err


# --- Ray ---------------------------------------------------------------------------------------------------

def test_on_ray_equals_in_process(encoder, tmp_path, capsys):
    ray = pytest.importorskip("ray")  # here, not at the top: the tests above need no Ray
    write_jsonl(tmp_path / "c.jsonl", CORPUS[:200])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert embed(encoder, "--input", tmp_path / "c.jsonl", "--output", tmp_path / "ray", "--shard-rows", "40",
                     "--ray", "local", "--workers", "2") == 0
        # a bad row inside an actor: the same one-line error as in-process, not Ray's traceback
        rows = [json.dumps({"id": i, "text": f"text {i}"}) for i in range(30)]
        rows[17] = json.dumps({"id": 17, "text": 17})
        (tmp_path / "bad.jsonl").write_text("\n".join(rows) + "\n")
        assert embed(encoder, "--input", tmp_path / "bad.jsonl", "--output", tmp_path / "bad", "--shard-rows", "10",
                     "--ray", "local", "--workers", "1") == 2
        err = capsys.readouterr().err
        assert "bad.jsonl row 18: 'text' is int" in err and "Traceback" not in err, err[-2000:]
    finally:
        ray.shutdown()
    assert embed(encoder, "--input", tmp_path / "c.jsonl", "--output", tmp_path / "local", "--shard-rows", "40") == 0
    a, b = read_output(tmp_path / "ray"), read_output(tmp_path / "local")
    assert sorted(a["id"]) == sorted(b["id"]) == sorted(f"d{i}" for i in range(200))
    va, vb = dict(zip(a["id"], a["vector"])), dict(zip(b["id"], b["vector"]))
    assert all(np.array_equal(va[k], vb[k]) for k in va)  # the same shards, batched the same way: bit for bit


@pytest.mark.slow
def test_a_worker_node_removed_mid_run(bundle, tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    encoder = bundle("minilm-real", "ort-cpu").bundle  # real sizes: the run lasts long enough to lose a node in it
    write_jsonl(tmp_path / "c.jsonl", (CORPUS * 5)[:1200])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    result = {}
    out = tmp_path / "out"

    def run():
        result["rc"] = embed(encoder, "--input", tmp_path / "c.jsonl", "--output", out, "--shard-rows", "40",
                             "--ray", cluster.address, "--workers", "2")

    t = threading.Thread(target=run)
    started = time.time()
    t.start()
    try:
        while time.time() - started < 300:
            m = out / "_manifest.json"
            if m.exists() and len(json.loads(m.read_text())["shards"]) >= 2:
                break
            time.sleep(0.1)
        done_at_removal = len(json.loads((out / "_manifest.json").read_text())["shards"])
        cluster.remove_node(worker)
        removed = time.time()
        t.join(600)
        print(f"\nnode removed after {done_at_removal} of 30 shards; the run finished {time.time() - removed:.1f} s "
              f"later (rc {result.get('rc')})")
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert result.get("rc") == 0
    got = read_output(out)
    assert sorted(got["id"]) == sorted(f"d{i}" for i in range(1200)) and len(got["id"]) == 1200
    assert done_at_removal < 30, "the run was over before the node went"
