"""The GPU engines. What runs anywhere runs here on CPU: the IO-binding / shape-bucket path of the ORT backend on
every family, and the TensorRT lint on every family's graphs. What needs the hardware is marked and skips with
the reason: ORT-CUDA parity (``gpu``) and the TensorRT engines (``trt``)."""
from __future__ import annotations

import numpy as np
import pytest

import runtimes
from bge_export.build.targets import targets
from bge_export.families import FAMILIES
from parity_tests.conftest import FAMILY_OF_CASE
from parity_tests.test_parity import GPU_GRAPH_CASES
from runtimes._optional import available
from runtimes.errors import InputError

ONE_CASE_PER_FAMILY = {f: next(c for c in GPU_GRAPH_CASES if FAMILY_OF_CASE[c] == f) for f in FAMILIES}
TEXTS = ["what is the capital of France?", "", "中文 😀 " * 3, "a long passage about pandas " * 30, "short"] * 3


def call_api(model, family: str):
    """The family's FlagEmbedding call on mixed lengths, as one array."""
    if family == "m3":
        out = model.encode(TEXTS, return_dense=True, return_sparse=True, return_colbert_vecs=True)
        return np.concatenate([out["dense_vecs"].ravel(), np.concatenate([c.ravel() for c in out["colbert_vecs"]]),
                               np.array([w for d in out["lexical_weights"] for w in d.values()], dtype=np.float32)])
    if "dense" in FAMILIES[family].parity_outputs:  # the embedders
        try:
            return model.encode(TEXTS)
        except InputError:  # "" has no tokens where the tokenizer adds none (Qwen): the other texts
            return model.encode([t for t in TEXTS if t])
    return np.asarray(model.compute_score([[TEXTS[0], t] for t in TEXTS]), dtype=np.float32)


@pytest.mark.parametrize("family", list(ONE_CASE_PER_FAMILY))
def test_io_binding_with_shape_buckets_matches_plain_runs(bundle, family):
    """The CUDA backend's path (fixed per-bucket buffers, padding up to buckets, slicing back), on CPU buffers."""
    path = bundle(ONE_CASE_PER_FAMILY[family], "ort-cpu").bundle
    plain = call_api(runtimes.load(path, batch_size=4), family)
    model = runtimes.load(path, batch_size=4, backend_options={"io_binding": True, "buckets": True})
    bound = call_api(model, family)
    bound_again = call_api(model, family)
    assert model.backend.bound_buckets >= 2  # several lengths -> several buckets, each bound once and reused
    np.testing.assert_allclose(bound, plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(bound_again, bound)


def test_io_binding_model_shared_between_threads(bundle):
    """Bound buffers are reused per bucket, so calls on one model from several threads must not interleave:
    every thread gets its own texts' vectors (batches of 3 and 4 rows share the 4-row bucket)."""
    from concurrent.futures import ThreadPoolExecutor

    model = runtimes.load(bundle("minilm-real", "ort-cpu").bundle,
                          backend_options={"io_binding": True, "buckets": True, "intra_op_num_threads": 1})
    batches = [[f"{word} number {i}" for i in range(n)] for word, n in
               (("apple", 3), ("river", 4), ("中文", 3), ("piano", 4))]
    want = [model.encode(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        jobs = [(k, pool.submit(model.encode, batches[k])) for k in range(len(batches)) for _ in range(12)]
        for k, job in jobs:
            np.testing.assert_array_equal(job.result(), want[k])
    assert model.backend.exclusive


def test_io_binding_results_are_not_views_on_the_bound_buffers(bundle):
    """A result must survive the next call in the same bucket: a CPU OrtValue's numpy() is a view on the bound
    buffer, so unpad_output hands back a copy."""
    model = runtimes.load(bundle("minilm-real", "ort-cpu").bundle, backend_options={"io_binding": True})
    backend = model.backend

    def feeds(first_id):
        ids = np.full((2, 8), 100, dtype=np.int64)
        ids[:, 0] = 101
        ids[:, 1] = first_id
        return {s["name"]: (ids if s["name"] == "input_ids" else
                            np.ones_like(ids) if s["name"] == "attention_mask" else np.zeros_like(ids))
                for s in backend.input_specs}

    first = backend.infer(feeds(2000))
    kept = {k: v.copy() for k, v in first.items()}
    second = backend.infer(feeds(3000))
    assert backend.bound_buckets == 1
    assert not all(np.array_equal(second[k], kept[k]) for k in kept)  # different inputs, different outputs
    for k in kept:
        np.testing.assert_array_equal(first[k], kept[k])


@pytest.mark.parametrize("family", list(ONE_CASE_PER_FAMILY))
def test_tensorrt_lint_passes_our_graphs(exported, bundle, family):
    """Every family's exported graph and the graphs trt-* compile are parseable by TensorRT; the fused ORT graph
    is not (contrib ops), and the lint says so."""
    from bge_export.lint import lint_trt

    case = ONE_CASE_PER_FAMILY[family]
    graphs = [exported(case).path] + [bundle(case, t).bundle / "model.onnx" for t in ("onnx-fp16", "onnx-int8")
                                      if t in GPU_GRAPH_CASES[case]]
    for g in graphs:
        report = lint_trt(g)
        assert report.ok, report.format_text()
    fused = lint_trt(bundle(case, "ort-cpu").bundle / "model.onnx")
    if any(k.startswith("com.microsoft") for k in fused.op_counts):
        assert not fused.ok and any(f.code == "contrib-op" for f in fused.findings)


def test_lint_command(bundle, capsys):
    import json

    from bge_export.cli import main

    assert main(["lint", str(bundle("minilm-real", "onnx-fp16").bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["lint", str(bundle("minilm-real", "ort-cpu").bundle)]) == 1
    assert "contrib-op" in capsys.readouterr().out


# --- on an NVIDIA GPU -------------------------------------------------------------------------------------------

def _cuda_reason() -> str | None:
    from runtimes.backends.ort import cuda_usable

    if not cuda_usable():
        return "ONNX Runtime cannot run on CUDA here: needs onnxruntime-gpu and an NVIDIA GPU"
    return None


gpu = pytest.mark.skipif(_cuda_reason() is not None, reason=_cuda_reason() or "")
trt = pytest.mark.skipif(not available("tensorrt"), reason="TensorRT is not installed (pip install 'bge-export[trt]' "
                         "on an NVIDIA GPU machine)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("target", targets(device="gpu", engine_kind="onnxruntime"))
@pytest.mark.parametrize("case", list(GPU_GRAPH_CASES))
def test_ort_cuda_parity_on_gpu(bundle, case, target):
    """On the CUDA kernels: ort-cuda at the fp32 gates, ort-cuda-fp16 at the GPU gates (dense cosine >= 0.999,
    scores within 5e-3 of their spread; the Gemma cases run in bf16)."""
    res = bundle(case, target)
    print(res.parity_text)
    assert res.manifest.parity["device"] == "CUDAExecutionProvider"
    assert res.parity_ok, res.parity_text


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", ["tiny-xlmr", "tiny-icl"])
def test_cuda_graphs_replay_the_same_numbers(bundle, case):
    path = bundle(case, "ort-cuda-fp16").bundle
    plain = runtimes.load(path, batch_size=8).encode(TEXTS)
    graphs = runtimes.load(path, batch_size=8, backend_options={"cuda_graph": True})
    first, again = graphs.encode(TEXTS), graphs.encode(TEXTS)
    np.testing.assert_allclose(first, plain, atol=1e-3)
    np.testing.assert_array_equal(again, first)


@pytest.mark.trt
@trt
@pytest.mark.parametrize("case, target", [("minilm-real", "trt-fp16"), ("minilm-real", "trt-int8"),
                                          ("tiny-m3", "trt-fp16"), ("tiny-layerwise", "trt-fp16"),
                                          ("tiny-gemma2-embedder", "trt-bf16")])
def test_tensorrt_engine_parity(bundle, case, target):
    res = bundle(case, target)
    engine = res.manifest.engine
    assert engine["kind"] == "tensorrt" and engine["tensorrt_version"] and engine["compute_capability"]
    assert (res.bundle / engine["file"]).stat().st_size > 0
    assert res.parity_ok, res.parity_text


def test_bf16_bundle_parity_is_skipped_on_cpu_with_the_reason(bundle, capsys):
    """A Gemma model's ort-cuda-fp16 bundle is bf16: built and recorded, its parity skipped here with the reason,
    and `bge-export parity` refuses it on this machine instead of failing inside ONNX Runtime."""
    from bge_export.cli import main
    from runtimes.backends.ort import cuda_usable

    if cuda_usable():
        pytest.skip("CUDA is usable here: the bf16 bundle's parity runs (test_ort_cuda_fp16_parity_on_gpu)")
    res = bundle("tiny-gemma2-embedder", "ort-cuda-fp16")
    assert res.manifest.precision == "bf16" and res.parity_ok is None and res.manifest.parity is None
    assert "no bf16 kernels" in res.parity_text
    assert main(["parity", str(res.bundle)]) == 2
    assert "no bf16 kernels" in capsys.readouterr().err
