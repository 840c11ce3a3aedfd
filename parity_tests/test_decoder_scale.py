"""Decoders at scale: a > 2 GB (fp32) decoder exports with external data and matches torch; half-precision exports."""
from __future__ import annotations

import gc
import resource
import time

import numpy as np
import pytest

from bge_export.compile import prepare
from bge_export.export.onnx import CHECK_TOLERANCE, example_feeds, export_onnx, ort_runner
from bge_export.parity import cosine_rows
from parity_tests import tiny_checkpoints as dck


def _peak_rss_gb() -> tuple[float, float]:
    """(this process, its waited-for children) peak resident set size in GB (ru_maxrss is in KiB on Linux)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9)


@pytest.mark.slow
def test_decoder_over_2gb_exports_with_external_data(tmp_path, capsys):
    """Random weights in the bge-en-icl layout (MistralModel: hidden 2048, 16 heads / 8 KV heads, intermediate
    5632, 12 layers, vocab 32000; about 632M parameters, 2.5 GB fp32) with the tiny Llama tokenizer: the export
    writes external data, passes onnx.checker and its own check against torch in ONNX Runtime, and the graph's
    output depends on the input."""
    start = time.perf_counter()
    ckpt = dck.tiny_mistral_icl(tmp_path / "bge-en-icl", hidden_size=2048, num_hidden_layers=12,
                                intermediate_size=5632, num_attention_heads=16, num_key_value_heads=8,
                                vocab_size=32000, initializer_range=0.02, seed=31)
    gc.collect()  # the HF model the builder made is garbage now
    built = time.perf_counter()
    family, _ = prepare(ckpt, "onnx")
    assert family.name == "llm-embedder" and family.variant["export_dtype"] == "fp32"
    lines: list[str] = []
    res = export_onnx(family, tmp_path / "onnx", log=lines.append)
    exported = time.perf_counter()
    gc.collect()
    out = res.path.parent
    data = out / "model.onnx.data"
    assert res.external_data is True
    assert data.exists() and "model.onnx.data" in res.files
    assert data.stat().st_size > 2_000_000_000 and res.path.stat().st_size < 50_000_000
    assert res.check["max_relative_error"] <= CHECK_TOLERANCE["fp32"] == 1e-4
    assert set(res.check["shapes"]) == {"1x5", "2x17", "3x64", "4x9"}
    # initializer_range 0.02 keeps the numbers tame; the graph must still tell inputs apart
    run = ort_runner(res.path, family)
    a, b = (run(example_feeds(family, 3, 24, seed=s))[0] for s in (1, 2))
    assert a.shape == (3, 2048) and np.isfinite(a).all()
    assert cosine_rows(a, b).max() < 0.99, cosine_rows(a, b)
    del run
    gc.collect()
    self_gb, children_gb = _peak_rss_gb()
    with capsys.disabled():
        print(f"\ndecoder over 2 GB: checkpoint {built - start:.0f}s, export+check {exported - built:.0f}s "
              f"(export_onnx's own {res.seconds:.0f}s before its check), model.onnx.data {data.stat().st_size / 1e9:.2f}"
              f" GB, model.onnx {res.path.stat().st_size / 1e6:.2f} MB, max relative error "
              f"{res.check['max_relative_error']:.2g}, cos(a,b) max {cosine_rows(a, b).max():.3f}, "
              f"peak RSS {self_gb:.1f} GB (children {children_gb:.1f} GB)")
        for line in lines:
            print("  " + line)


def test_half_precision_decoder_exports(tmp_path, capsys):
    """The tiny Gemma2 embedder: the fp16 graph runs on ONNX Runtime CPU and agrees with the fp32 graph; the bf16
    graph exports and its check is recorded as skipped (ORT CPU has no bf16 kernels)."""
    ckpt = dck.tiny_gemma2_embedder(tmp_path / "bge-multilingual-gemma2")
    results = {}
    for dtype in ("fp32", "fp16", "bf16"):
        family, _ = prepare(ckpt, "onnx", export_dtype=dtype)
        assert family.variant["export_dtype"] == dtype
        results[dtype] = (family, export_onnx(family, tmp_path / dtype, log=lambda _: None))
    fam32, r32 = results["fp32"]
    fam16, r16 = results["fp16"]
    _, r_bf = results["bf16"]
    assert r32.check["max_relative_error"] <= CHECK_TOLERANCE["fp32"]
    assert r16.check["max_relative_error"] <= CHECK_TOLERANCE["fp16"]  # fp16 graph vs the fp16 torch module
    assert not r_bf.check.get("max_relative_error") and r_bf.check.get("skipped")
    assert "bf16" in r_bf.check["skipped"] and r_bf.path.exists()

    import onnx

    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(r16.path)).graph.initializer)
    assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in onnx.load(str(r_bf.path)).graph.initializer)
    run32, run16 = ort_runner(r32.path, fam32), ort_runner(r16.path, fam16)
    worst = 1.0
    for b, s in ((1, 7), (3, 40), (4, 128)):
        feeds = example_feeds(fam32, b, s, seed=5)
        p32, p16 = run32(feeds)[0], run16(feeds)[0]
        assert p16.dtype == np.float32 and p16.shape == p32.shape == (b, 64) and np.isfinite(p16).all()
        worst = min(worst, float(cosine_rows(p32, p16).min()))
    assert worst >= 0.999
    with capsys.disabled():
        print(f"\nhalf-precision gemma2 embedder: fp32 check {r32.check['max_relative_error']:.2g}, fp16 check "
              f"{r16.check['max_relative_error']:.2g} (tolerance {CHECK_TOLERANCE['fp16']}), min cos(fp16, fp32) "
              f"{worst:.6f}, bf16 skipped: {r_bf.check['skipped']!r}")
