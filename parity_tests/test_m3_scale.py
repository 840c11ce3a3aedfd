"""bge-m3 at scale: 8192-token inputs end to end, and a full-size (> 2 GB) model with external data."""
from __future__ import annotations

import resource
import time

import numpy as np
import pytest

import runtimes
from bge_export.compile import compile_bundle
from bge_export.parity import cosine_rows
from bge_export.parity_run import quiet_stderr
from parity_tests import checkpoints as ck

LONG = " ".join(f"token{i % 997} word{i % 13}" for i in range(9000))  # far beyond 8192 tokens


def test_8192_token_input_end_to_end(tmp_path):
    """A checkpoint with bge-m3's 8194 positions serves max_length=8192 and matches FlagEmbedding there."""
    from FlagEmbedding import BGEM3FlagModel

    ckpt = ck.tiny_m3(tmp_path / "bge-m3", max_positions=8194, seed=7)
    res = compile_bundle(ckpt, "ort-cpu", tmp_path / "b", parity=False, quiet=True)
    model = runtimes.load(res.bundle, max_length=8192)
    assert model.passage_max_length == 8192 and res.manifest.data["profiles"]["sequence"]["max"] == 8192
    texts = [LONG, "short"]
    got = model.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    ref_model = BGEM3FlagModel(str(ckpt), use_fp16=False, devices="cpu")
    with quiet_stderr():
        want = ref_model.encode(texts, max_length=8192, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    assert got["colbert_vecs"][0].shape == want["colbert_vecs"][0].shape == (8191, 32)  # 8192 tokens minus CLS
    assert cosine_rows(got["dense_vecs"], want["dense_vecs"]).min() >= 0.99999
    np.testing.assert_allclose(got["colbert_vecs"][0], want["colbert_vecs"][0], atol=1e-4)
    assert set(got["lexical_weights"][0]) == set(want["lexical_weights"][0])


@pytest.mark.slow
def test_full_size_m3_over_2gb_exports_with_external_data(tmp_path, capsys):
    """Random weights in the real bge-m3 shape (XLM-R large: 24 layers, hidden 1024, vocab 250002, 8194 positions,
    about 2.3 GB fp32): the export writes external data, ONNX Runtime loads it, and it matches torch."""
    from FlagEmbedding import BGEM3FlagModel

    start = time.perf_counter()
    ckpt = ck.tiny_m3(tmp_path / "bge-m3", hidden=1024, layers=24, heads=16, intermediate=4096,
                      max_positions=8194, vocab_size=250002, initializer_range=0.02, seed=11)
    built = time.perf_counter()
    res = compile_bundle(ckpt, "onnx", tmp_path / "b", parity=False, quiet=True)
    exported = time.perf_counter()
    files = res.manifest.data["files"]
    assert res.manifest.data["build"]["export"]["external_data"] is True
    assert files["model.onnx.data"]["size"] > 2_000_000_000 and files["model.onnx"]["size"] < 50_000_000
    assert res.manifest.data["build"]["export"]["check_vs_torch"]["max_relative_error"] <= 1e-4
    model = runtimes.load(res.bundle, verify=False)
    texts = ["BGE-M3 supports more than 100 languages.", "短文本", "a " * 700]
    got = model.encode(texts, return_dense=True, return_colbert_vecs=True)
    ref = BGEM3FlagModel(str(ckpt), use_fp16=False, devices="cpu")
    with quiet_stderr():
        want = ref.encode(texts, return_dense=True, return_colbert_vecs=True)
    assert cosine_rows(got["dense_vecs"], want["dense_vecs"]).min() >= 0.99999
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    with capsys.disabled():
        print(f"\nfull-size m3: checkpoint {built - start:.0f}s, export+check+bundle {exported - built:.0f}s, "
              f"model.onnx.data {files['model.onnx.data']['size'] / 1e9:.2f} GB, peak RSS {peak_gb:.1f} GB")
