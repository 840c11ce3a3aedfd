"""Every case x target against its FlagEmbedding reference (fp32, CPU): FlagModel, FlagReranker."""
from __future__ import annotations

import json

import numpy as np
import pytest

import runtimes
from bge_export.build.targets import targets
from parity_tests.conftest import CASE_VARIANTS, CASES, TEST_CASES


# Random weights at initializer_range 0.5 with hidden 48 / 3 heads give attention logits so large that softmax is
# near-argmax: fp32 weights plus int8-sized noise (one per-channel step) alone drop its cosine mean to 0.957
# (MiniLM: 0.997). Dynamic int8 reaches 0.984 there, below the 0.99 gate, and the gate must say so.
HYPERSENSITIVE = {("bert-48h3-l3-pos128", "ort-cpu-int8")}


# The targets a case opts into (TestCase.targets); every case runs the CPU targets no case opts into (onnx, ort-cpu,
# ort-cpu-int8, ov-cpu: the fp32 gates and dynamic int8).
OPTED = {t for case in TEST_CASES.values() for t in case.targets}
EVERY_CASE = tuple(t for t in targets(device="cpu") if t not in OPTED)
# The ONNX Runtime targets' graphs a case opts into (the GPU targets' and the graphs TensorRT compiles), parity-checked
# here on ONNX Runtime CPU (the CUDA kernels need a GPU: test_gpu_engines.py), on the cases whose TestCase.targets
# name them: one case per family, two for the encoders (real weights gate retrieval). The Gemma-based cases have no
# fp16 targets (bf16 instead, which ONNX Runtime CPU cannot run); their int8 QDQ graph is checked like the others.
GPU_GRAPH = tuple(t for t in targets(engine_kind="onnxruntime") if t in OPTED)
GPU_GRAPH_CASES = {name: tuple(t for t in case.targets if t in GPU_GRAPH) for name, case in TEST_CASES.items()
                   if set(case.targets) & set(GPU_GRAPH)}
# Measured limits on these random-weight checkpoints, each asserted by its own test below instead:
# - the fused fp16 cross-encoder graph on ONNX Runtime CPU reaches 5.9e-3 of the score spread (gate 5e-3; the
#   standard-op onnx-fp16 graph passes at 4e-3);
# - static QDQ int8 on the tiny m3 keeps dense / colbert / scores but its sparse top-10 ids overlap 0.86 (< 0.9).
MEASURED_LIMITS = {("tiny-reranker-xlmr", "ort-cuda-fp16"), ("tiny-m3", "onnx-int8")}
# The OpenVINO targets: ov-cpu on every case (the fp32 gates, like ort-cpu); int8 and bf16 on the cases whose
# TestCase.targets name them (one case per family and the real MiniLM: the retrieval gate). bf16 parity runs on CPUs with bf16 (AMX / AVX512-BF16); elsewhere
# the build must say why it skipped parity (test_ov_bf16_parity_or_a_clear_skip).
OV_CASES = tuple(name for name, case in TEST_CASES.items() if "ov-cpu-int8" in case.targets)
OWN_TEST = {"ov-cpu-bf16"}  # opted targets checked by a test of their own (test_ov_bf16_parity_or_a_clear_skip)
# The real MiniLM's fp32 graphs besides ort-cpu (the unfused export, OpenVINO fp32, and the ort-cuda graph, which is
# the ort-cpu graph run on ONNX Runtime CPU here) compute what ort-cpu computes to ~1e-6: cosine mean 1.000000 and
# FlagModel's recall@10 / MRR exactly, in every run so far. Each costs a retrieval evaluation of 1,600 real texts
# (~40 s on 2 cores), so they run with -m slow; the default run checks those targets' gates on every tiny case, and
# the real weights on ort-cpu, the int8 and the half-precision targets, where the numbers move.
REAL_FP32_SLOW = {("minilm-real", t) for t in ("onnx", "ov-cpu", "ort-cuda")}


def _param(case: str, target: str):
    return pytest.param(case, target, marks=pytest.mark.slow) if (case, target) in REAL_FP32_SLOW else (case, target)


# every case on the targets no case opts into, then each case on the targets it names
PARITY_PARAMS = [_param(c, t) for c in CASES for t in EVERY_CASE] + [
    _param(c, t) for c, case in TEST_CASES.items() for t in case.targets
    if t not in OWN_TEST and (c, t) not in MEASURED_LIMITS]


@pytest.mark.parametrize("case, target", PARITY_PARAMS)
def test_parity(bundle, case, target):
    if (case, target) in HYPERSENSITIVE:
        pytest.skip("covered by test_gate_fails_on_a_hypersensitive_checkpoint")
    result = bundle(case, target)
    print(result.parity_text)
    assert result.parity_ok, result.parity_text
    assert result.manifest.parity["passed"]


# bf16 keeps 8 mantissa bits. On real weights that passes the half-precision gates: all-MiniLM-L6-v2 in OpenVINO
# bf16 on an Intel Xeon with AMX (issue 12): cosine min 0.999982, recall@10 and MRR unchanged (0.329 / 0.217).
# The random-weight checkpoints at large initializer ranges amplify rounding on purpose, and there bf16 misses the
# half bounds in any engine: OpenVINO bf16 on the AMX Xeon gave tiny-xlmr cosine min 0.9932, m3 dense 0.9983 and
# scores 2.8e-2 of their spread, the rerankers 1.3e-2 to 0.11 of theirs, the ICL embedder 0.9980; torch's own bf16
# autocast of the same checkpoints misses too (AMD EPYC, torch 2.13, 64 texts: tiny-bert 0.9960, tiny-xlmr 0.9984,
# rerankers 1.2e-2 to 3.3e-2 of the spread). In a one-off probe, keeping every non-MatMul node of the tiny
# reranker in fp32 (the IR's "precise" mark) did not help: the rounding of the MatMul inputs dominates. Gated at
# the half bounds: the real MiniLM and the Gemma2 embedder (cosine min 0.99957 on the AMX Xeon). Elsewhere the
# build reports the failing gate (and exits 1), and this test checks that bf16 really ran and stayed within the
# int8 sanity bounds.
BF16_GATED = {"minilm-real", "tiny-gemma2-embedder"}


@pytest.mark.parametrize("case", OV_CASES)
def test_ov_bf16_parity_or_a_clear_skip(bundle, case):
    from runtimes.backends.openvino import openvino_bf16

    result = bundle(case, "ov-cpu-bf16")
    print(result.parity_text)
    if not openvino_bf16():  # OpenVINO would run the bundle in fp32 here: parity must not pretend to check bf16
        assert result.parity_ok is None and "no bf16 instructions" in result.parity_text, result.parity_text
        return
    report = result.manifest.parity
    assert report is not None and "bf16" in report["device"], report
    if case in BF16_GATED:
        assert result.parity_ok, result.parity_text
        return
    values = {(c["output"], c["metric"]): c["value"] for c in report["checks"]}
    sanity = {k: v for k, v in values.items() if k[1] in ("cosine_mean", "spearman")}
    assert sanity, values
    for (output, metric), v in sanity.items():
        assert v >= (0.99 if metric == "cosine_mean" else 0.95), (output, metric, v)


def _values(result):
    return {(c["output"], c["metric"]): c["value"] for c in result.manifest.parity["checks"]}


def test_real_minilm_meets_the_issue_gates(bundle):
    """The Done-when numbers on the real all-MiniLM-L6-v2 weights."""
    fp32 = _values(bundle("minilm-real", "ort-cpu"))
    assert fp32[("dense", "cosine_min")] >= 0.99999
    int8 = _values(bundle("minilm-real", "ort-cpu-int8"))
    assert int8[("dense", "cosine_mean")] >= 0.99
    # what users feel, on the labelled retrieval set: at most 1 point of recall@10 and MRR lost against FlagModel
    assert int8[("dense", "recall@10_drop")] <= 0.01 and int8[("dense", "mrr_drop")] <= 0.01
    assert int8[("dense", "recall@10_reference")] == fp32[("dense", "recall@10_reference")] > 0.3  # 0.329
    assert abs(fp32[("dense", "recall@10_drop")]) <= 0.0025 and abs(fp32[("dense", "mrr_drop")]) <= 1e-3


def test_retrieval_gate_is_gated_for_int8_and_fails_when_quality_drops():
    """recall@10_drop and mrr_drop are gates of the int8 row (on trained weights), and a 2-point drop fails."""
    from bge_export.parity import gate

    good = {"cosine_mean": 0.995, "recall@10_drop": 0.005, "mrr_drop": -0.002, "top10_overlap": 0.85}
    checks = {c.metric: c for c in gate("encoder", "dense", "int8", good)}
    assert all(c.passed for c in checks.values())
    assert checks["top10_overlap"].bound is None  # reported, not gated (near 0.89 on real text, recall unchanged)
    bad = {c.metric: c for c in gate("encoder", "dense", "int8", {**good, "recall@10_drop": 0.02})}
    assert not bad["recall@10_drop"].passed and bad["mrr_drop"].passed
    off = {c.metric: c for c in gate("encoder", "dense", "int8", {"cosine_mean": 0.995}, gate_retrieval=False)}
    assert set(off) == {"cosine_mean"}  # random weights: no retrieval signal, the set is not run


def test_int8_really_is_quantized(bundle):
    """int8 is not allowed to pass parity by being the fp32 graph: it must differ and hold integer ops."""
    import onnx

    res = bundle("minilm-real", "ort-cpu-int8")
    ops = {n.op_type for n in onnx.load(str(res.bundle / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLinear"}, ops
    assert _values(res)[("dense", "max_abs")] > 1e-4


def test_fusions_fired_on_ort_cpu(bundle):
    fusions = bundle("minilm-real", "ort-cpu").manifest.data["build"]["fusions"]
    # 6 layers: the last runs the CLS-only path, the other 5 fuse into contrib Attention
    assert fusions.get("attention") == 5 and fusions.get("skip_layer_normalization", 0) >= 10, fusions


def test_mean_pooling_variant(checkpoint_dir, tmp_path):
    from bge_export.compile import compile_bundle

    res = compile_bundle(checkpoint_dir("tiny-bert"), "ort-cpu", tmp_path / "mean", pooling="mean",
                         log=lambda m: None, quiet=True)
    assert res.manifest.data["variant"]["pooling"] == "mean"
    assert res.parity_ok, res.parity_text


def test_tiny_checkpoints_are_not_degenerate(bundle):
    """With initializer_range 0.5 different texts must give clearly different embeddings."""
    import runtimes

    for case in ("tiny-bert", "tiny-xlmr"):
        model = runtimes.load(bundle(case, "onnx").bundle)
        v = model.encode(["a cat sat on the mat", "quarterly tax filing deadline", "火山喷发"])
        cos = v @ v.T
        assert cos[np.triu_indices(3, 1)].max() < 0.95, (case, cos)


def test_gate_fails_on_a_hypersensitive_checkpoint(bundle):
    """The int8 gate is not a formality: on a checkpoint int8 cannot serve, parity fails and says by how much."""
    (case, target), = HYPERSENSITIVE
    result = bundle(case, target)
    assert result.parity_ok is False and result.manifest.parity["passed"] is False
    assert "FAIL dense    cosine_mean" in result.parity_text
    assert "would pass with cosine_mean >= 0.9" in result.parity_text


def test_main_job_exits_non_zero_on_parity_failure(checkpoint_dir, exported, tmp_path, capsys):
    from bge_export.cli import main

    out = tmp_path / "b"
    rc = main(["--model", str(checkpoint_dir("bert-48h3-l3-pos128")), "--target", "ort-cpu-int8", "--out", str(out),
               "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "parity failed" in captured.err and "would pass with" in captured.out
    assert (out / "manifest.json").is_file()  # complete bundle, failing report inside, for inspection


def test_failed_parity_never_replaces_a_working_bundle(checkpoint_dir, exported, tmp_path, capsys):
    from bge_export.cli import main

    case = "bert-48h3-l3-pos128"
    out = tmp_path / "b"
    assert main(["--model", str(checkpoint_dir(case)), "--target", "ort-cpu", "--out", str(out), "--quiet"]) == 0
    rc = main(["--model", str(checkpoint_dir(case)), "--target", "ort-cpu-int8", "--out", str(out), "--overwrite",
               "--quiet"])
    assert rc == 1, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["target"] == "ort-cpu"  # the working one stays
    failed = tmp_path / "b.parity-failed"
    assert json.loads((failed / "manifest.json").read_text())["target"] == "ort-cpu-int8"
    with pytest.warns(RuntimeWarning, match="FAILED parity"):
        runtimes.load(failed)


def _failed(result):
    return {(c["output"], c["metric"]) for c in result.manifest.parity["checks"] if not c["passed"]}


def test_fused_fp16_reranker_on_cpu_is_near_the_gate(bundle):
    """See MEASURED_LIMITS: only the score bound fails, by less than 1.5x, and the ranking is intact."""
    res = bundle("tiny-reranker-xlmr", "ort-cuda-fp16")
    values = _values(res)
    assert _failed(res) <= {("score", "max_abs_rel_spread")}, res.parity_text
    assert values[("score", "max_abs_rel_spread")] < 7.5e-3 and values[("score", "spearman")] > 0.999


def test_m3_qdq_int8_sparse_limit_is_reported(bundle):
    """See MEASURED_LIMITS: the gate catches the sparse top-10 loss and nothing else fails."""
    res = bundle("tiny-m3", "onnx-int8")
    assert res.parity_ok is False
    assert _failed(res) == {("sparse", "top10_key_overlap")}, res.parity_text
    values = _values(res)
    assert values[("dense", "cosine_mean")] >= 0.99 and values[("colbert", "cosine_mean")] >= 0.99


def test_gpu_graphs_really_are_half_and_int8(bundle):
    """The fp16 bundles hold fp16 weights with fp32 norm islands; the QDQ bundle holds symmetric int8 Q/DQ."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m16 = onnx.load(str(bundle("minilm-real", "onnx-fp16").bundle / "model.onnx"))
    types = {t.data_type for t in m16.graph.initializer if len(t.dims) == 2}
    assert TensorProto.FLOAT16 in types
    assert sum(n.op_type == "LayerNormalization" for n in m16.graph.node) == 13
    assert [i.type.tensor_type.elem_type for i in m16.graph.output] == [TensorProto.FLOAT]
    q = onnx.load(str(bundle("minilm-real", "onnx-int8").bundle / "model.onnx"))
    zps = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("zero_point")]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) >= 24
    info = bundle("minilm-real", "onnx-int8").manifest.data["build"]["qdq"]
    assert info["kept_float"]["activation_x_activation"] == 12 and info["kept_float"]["feed_forward"] == 12


def test_gpu_bundle_parity_says_where_it_ran(bundle):
    from runtimes.backends.ort import cuda_usable

    device = bundle("tiny-qwen3-reasoner", "ort-cuda").manifest.parity["device"]
    if cuda_usable():
        assert device == "CUDAExecutionProvider"
    else:
        assert device.startswith("CPUExecutionProvider (no CUDA here")


def test_reference_results_are_shared_between_runs_but_state_is_not(checkpoint_dir):
    """Parity of several targets runs FlagEmbedding once per checkpoint (cached_reference); a run that changed the
    reference's state (FlagICLModel.set_examples) does not leak it into the next run."""
    from bge_export.compile import prepare
    from bge_export.families.llm_embedder import ICL_EXAMPLES
    from bge_export.parity_run import cached_reference

    family, _ = prepare(checkpoint_dir("tiny-icl"), "onnx", **CASE_VARIANTS.get("tiny-icl", {}))
    queries = ["what is the capital of France?", "how do volcanoes form"]
    first = cached_reference(family)
    plain = first.encode_queries(queries)
    first.set_examples(ICL_EXAMPLES)
    with_examples = first.encode_queries(queries)
    assert np.abs(plain - with_examples).max() > 1e-3  # the examples change the query embeddings
    second = cached_reference(family)
    again = second.encode_queries(queries)
    assert second._obj is None  # answered from the first run's results, without building FlagEmbedding again
    np.testing.assert_array_equal(again, plain)
    again[:] = 0  # callers get copies
    np.testing.assert_array_equal(second.encode_queries(queries), plain)
