"""The TensorRT lint on small real ONNX graphs: each rule fires on the graph that breaks it and stays quiet on the
graph that does not. No TensorRT, no torch: graphs are built with onnx.helper and saved like exports are."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bge_export.lint import SUPPORTED_OPS, Finding, LintReport, lint_trt
from runtimes.errors import BundleError, InputError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T, helper, numpy_helper  # noqa: E402

INT64_MAX = np.iinfo(np.int64).max


def _value(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=18, extra_domains=(), check=True, **save_kw):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_domains]
    model = helper.make_model(graph, opset_imports=opsets)
    if check:
        onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), **save_kw)
    return path


def _codes(report: LintReport, severity: str | None = None) -> set[str]:
    return {f.code for f in report.findings if severity in (None, f.severity)}


def _only(report: LintReport, code: str) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, report.format_text()
    return found[0]


def _encoder_layer(tmp_path, opset=18, **save_kw):
    """input_ids -> embedding Gather -> MatMul + Add -> LayerNormalization -> Softmax: a BERT layer in small."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
             (("emb", (100, 16)), ("w", (16, 16)), ("b", (16,)), ("gamma", (16,)), ("beta", (16,)))]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h0"], name="embed"),
             helper.make_node("MatMul", ["h0", "w"], ["h1"], name="proj"),
             helper.make_node("Add", ["h1", "b"], ["h2"], name="bias"),
             helper.make_node("LayerNormalization", ["h2", "gamma", "beta"], ["h3"], name="ln", axis=-1),
             helper.make_node("Softmax", ["h3"], ["out"], name="softmax", axis=-1)]
    return _save(tmp_path, nodes, [_value("input_ids", T.INT64, ["batch", "seq"])],
                 [_value("out", T.FLOAT, ["batch", "seq", 16])], inits, opset=opset, **save_kw)


def test_clean_encoder_layer_has_no_errors_or_warnings(tmp_path):
    report = lint_trt(_encoder_layer(tmp_path))
    assert report.ok and report.opset == 18, report.format_text()
    assert _codes(report) == {"int64-io"}, report.format_text()  # int64 input_ids: info only, since TensorRT 10
    assert _only(report, "int64-io").nodes == ("input_ids",)
    assert report.op_counts == {"Gather": 1, "MatMul": 1, "Add": 1, "LayerNormalization": 1, "Softmax": 1}
    assert "no blocking problems for TensorRT" in report.format_text()


def test_weights_in_external_data_are_never_read(tmp_path):
    path = _encoder_layer(tmp_path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    (tmp_path / "model.onnx.data").write_bytes(b"")  # truncated weights: the lint must not care
    assert lint_trt(path).ok


def test_contrib_op_is_an_error(tmp_path):
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"], name="skip_ln",
                            domain="com.microsoft", epsilon=1e-12)
    inputs = [_value(n, T.FLOAT, ["b", "s", 8]) for n in ("x", "skip")] + \
             [_value(n, T.FLOAT, [8]) for n in ("gamma", "beta")]
    report = lint_trt(_save(tmp_path, [node], inputs, [_value("y", T.FLOAT, None)],
                            extra_domains=["com.microsoft"], check=False))
    f = _only(report, "contrib-op")
    assert not report.ok and f.severity == "error" and f.nodes == ("skip_ln",)
    assert f.op == "com.microsoft::SkipLayerNormalization" and "unfused" in f.message
    assert report.op_counts == {"com.microsoft::SkipLayerNormalization": 1}
    assert "1 problem would stop a TensorRT build" in report.format_text()


def test_local_function_is_not_a_contrib_op(tmp_path):
    body = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                [helper.make_opsetid("", 18)])
    graph = helper.make_graph([helper.make_node("Twice", ["x"], ["y"], domain="local", name="call")], "g",
                              [_value("x", T.FLOAT, [4])], [_value("y", T.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                              functions=[body])
    onnx.save(model, str(tmp_path / "f.onnx"))
    report = lint_trt(tmp_path / "f.onnx")
    assert report.ok and "contrib-op" not in _codes(report), report.format_text()
    assert report.op_counts == {"local::Twice": 1, "Add": 1}


def test_unsupported_default_domain_op_is_named(tmp_path):
    assert "MatMulInteger" not in SUPPORTED_OPS  # marked "N" in onnx-tensorrt docs/operators.md
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"], name="qmm")
    report = lint_trt(_save(tmp_path, [node], [_value("a", T.UINT8, [2, 3]), _value("b", T.UINT8, [3, 4])],
                            [_value("y", T.INT32, [2, 4])]))
    f = _only(report, "unsupported-op")
    assert f.severity == "error" and f.op == "MatMulInteger" and "MatMulInteger" in f.message and not report.ok


def test_unsupported_op_inside_an_if_branch_is_found(tmp_path):
    branch = helper.make_graph([helper.make_node("Det", ["m"], ["d"], name="det")], "then", [],
                               [_value("d", T.FLOAT, [])])
    other = helper.make_graph([helper.make_node("ReduceSum", ["m"], ["d2"], name="sum", keepdims=0)], "else", [],
                              [_value("d2", T.FLOAT, [])])
    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch, else_branch=other)
    report = lint_trt(_save(tmp_path, [node], [_value("c", T.BOOL, []), _value("m", T.FLOAT, [3, 3])],
                            [_value("y", T.FLOAT, [])]))
    assert _only(report, "unsupported-op").nodes == ("det",)
    assert _only(report, "control-flow").severity == "warning"


@pytest.mark.parametrize("as_output, severity", [(True, "error"), (False, "warning")])
def test_nonzero_has_a_data_dependent_shape(tmp_path, as_output, severity):
    nodes = [helper.make_node("NonZero", ["x"], ["idx"], name="nz")]
    out = "idx"
    if not as_output:
        nodes.append(helper.make_node("ReduceMax", ["idx"], ["m"], name="max", keepdims=0))
        out = "m"
    shape = [2, "n"] if as_output else []
    report = lint_trt(_save(tmp_path, nodes, [_value("x", T.FLOAT, [4, 4])], [_value(out, T.INT64, shape)]))
    f = _only(report, "data-dependent-shape")
    assert f.severity == severity and f.nodes == ("nz",) and report.ok is (not as_output)


def _qdq(tmp_path, zero_point: int, dtype=np.int8):
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
             numpy_helper.from_array(np.array(zero_point, dtype), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dq")]
    return lint_trt(_save(tmp_path, nodes, [_value("x", T.FLOAT, [2, 8])], [_value("y", T.FLOAT, [2, 8])], inits))


def test_qdq_zero_point_must_be_zero(tmp_path):
    asymmetric = _qdq(tmp_path, 3)
    found = {f.op: f for f in asymmetric.findings if f.code == "qdq-zero-point"}
    assert set(found) == {"QuantizeLinear", "DequantizeLinear"} and not asymmetric.ok
    assert found["QuantizeLinear"].nodes == ("q",) and found["DequantizeLinear"].nodes == ("dq",)
    assert all(f.severity == "error" and "symmetric" in f.message for f in found.values())
    assert "qdq-zero-point" not in _codes(_qdq(tmp_path, 0))
    assert {f.severity for f in _qdq(tmp_path, 0, np.uint8).findings if f.code == "qdq-zero-point"} == {"warning"}


def _int64_const_into(tmp_path, value: int, op: str):
    const = helper.make_node("Constant", [], ["c"], name="const",
                             value=numpy_helper.from_array(np.array([value], np.int64)))
    if op == "Add":
        node = helper.make_node("Add", ["x", "c"], ["y"], name="add")
        inputs, out_shape = [_value("x", T.INT64, [1])], [1]
    else:
        starts = helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([1], np.int64)))
        node = helper.make_node("Slice", ["x", "s", "c"], ["y"], name="slice")
        const = [const, starts]
        inputs, out_shape = [_value("x", T.FLOAT, [8])], [7]
    nodes = (const if isinstance(const, list) else [const]) + [node]
    dtype = T.INT64 if op == "Add" else T.FLOAT
    return lint_trt(_save(tmp_path, nodes, inputs, [_value("y", dtype, out_shape)]))


def test_int64_constant_beyond_int32(tmp_path):
    f = _only(_int64_const_into(tmp_path, 2**40, "Add"), "int64-out-of-int32-range")
    assert f.severity == "warning" and f.nodes == ("add",)
    assert "int64-out-of-int32-range" not in _codes(_int64_const_into(tmp_path, 2**20, "Add"))
    assert "int64-out-of-int32-range" not in _codes(_int64_const_into(tmp_path, INT64_MAX, "Slice"))


@pytest.mark.parametrize("op", ["CumSum", "Mul"])
def test_int64_compute_on_batch_by_sequence(tmp_path, op):
    axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
    node = helper.make_node(op, ["mask", "axis" if op == "CumSum" else "mask"], ["y"], name="int_math")
    report = lint_trt(_save(tmp_path, [node], [_value("mask", T.INT64, ["batch", "seq"])],
                            [_value("y", T.INT64, ["batch", "seq"])], [axis] if op == "CumSum" else []))
    f = _only(report, "int64-compute")
    assert f.severity == "warning" and f.op == op and "int32" in f.message and report.ok


def test_integer_matmul_does_not_parse(tmp_path):
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="imm")
    report = lint_trt(_save(tmp_path, [node], [_value("a", T.INT64, [2, 3]), _value("b", T.INT64, [3, 2])],
                            [_value("y", T.INT64, [2, 2])]))
    assert _only(report, "int64-compute").severity == "error" and not report.ok


def test_onnx_attention_needs_tensorrt_10_14(tmp_path):
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    shape = ["batch", 4, "seq", 8]
    path = _save(tmp_path, [node], [_value(n, T.FLOAT, shape) for n in "qkv"], [_value("y", T.FLOAT, shape)],
                 opset=23)
    old = lint_trt(path, trt_version="10.13")
    f = _only(old, "unsupported-op")
    assert f.severity == "error" and f.op == "Attention" and "10.14" in f.message and not old.ok
    new = lint_trt(path, trt_version="11.1")
    assert new.ok and "unsupported-op" not in _codes(new) and "opset" not in _codes(new), new.format_text()


def test_attention_with_kv_cache_is_restricted(tmp_path):
    node = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "present_k", "present_v"],
                            name="attn")
    shape = ["batch", 4, "seq", 8]
    inputs = [_value(n, T.FLOAT, shape) for n in ("q", "k", "v", "pk", "pv")]
    outputs = [_value(n, T.FLOAT, shape) for n in ("y", "present_k", "present_v")]
    report = lint_trt(_save(tmp_path, [node], inputs, outputs, opset=23), trt_version="11.1")
    assert _only(report, "op-restriction").severity == "error" and "past_key" in report.format_text()


def test_old_opset_and_spelled_out_layernorm_warn(tmp_path):
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[-1]),
             helper.make_node("Sub", ["x", "mean"], ["centered"], name="center"),
             helper.make_node("Pow", ["centered", "two"], ["sq"], name="square")]
    report = lint_trt(_save(tmp_path, nodes, [_value("x", T.FLOAT, [2, 8])], [_value("sq", T.FLOAT, [2, 8])],
                            [axes, two], opset=16))
    f = _only(report, "decomposed-layernorm")
    assert f.severity == "warning" and f.nodes == ("mean",) and "opset 17" in f.message and report.ok


def test_opset_above_documented_range_warns(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    path = _save(tmp_path, [node], [_value("x", T.FLOAT, [2])], [_value("y", T.FLOAT, [2])], opset=22)
    assert _only(lint_trt(path, trt_version="10.0"), "opset").severity == "warning"
    assert "opset" not in _codes(lint_trt(path, trt_version="10.15"))


def test_many_nodes_are_capped_and_counted(tmp_path):
    nodes = [helper.make_node("Det", [f"x{i}"], [f"y{i}"], name=f"det{i}") for i in range(8)]
    report = lint_trt(_save(tmp_path, nodes, [_value(f"x{i}", T.FLOAT, [3, 3]) for i in range(8)],
                            [_value(f"y{i}", T.FLOAT, []) for i in range(8)]))
    f = _only(report, "unsupported-op")
    assert len(f.nodes) == 5 and "and 3 more" in f.message


def test_json_and_text_reports_carry_every_finding(tmp_path):
    nodes = [helper.make_node("NonZero", ["x"], ["idx"], name="nz"),
             helper.make_node("Det", ["m"], ["d"], name="det")]
    report = lint_trt(_save(tmp_path, nodes, [_value("x", T.FLOAT, [4]), _value("m", T.FLOAT, [3, 3])],
                            [_value("idx", T.INT64, [1, "n"]), _value("d", T.FLOAT, [])]))
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is False and data["opset"] == 18 and data["op_counts"] == {"NonZero": 1, "Det": 1}
    assert {f["code"] for f in data["findings"]} == _codes(report) == {"data-dependent-shape", "unsupported-op"}
    text = report.format_text()
    assert all(f.code in text for f in report.findings)
    assert text.splitlines()[0].endswith("(opset 18, 2 nodes)") and "2 problems would stop" in text.splitlines()[-1]


def test_unreadable_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(BundleError, match="no ONNX model"):
        lint_trt(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf\xff" * 7)
    with pytest.raises(BundleError) as err:
        lint_trt(tmp_path / "junk.onnx")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="TensorRT 10.x or 11.x"):
        lint_trt(_encoder_layer(tmp_path), trt_version="8.6")


def test_computed_reduce_axes_cannot_be_imported(tmp_path):
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum")
    inputs = [_value("x", T.FLOAT, [2, 8]), _value("axes", T.INT64, [1])]
    report = lint_trt(_save(tmp_path, [node], inputs, [_value("y", T.FLOAT, [2, 1])]))
    f = _only(report, "op-restriction")
    assert f.severity == "error" and f.nodes == ("sum",) and "axes" in f.message
    const_axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    assert "op-restriction" not in _codes(lint_trt(_save(tmp_path, [node], inputs[:1], [_value("y", T.FLOAT, [2, 1])],
                                                         [const_axes])))


@pytest.mark.parametrize("stash_type, warns", [(T.FLOAT16, True), (T.FLOAT, False)])
def test_fp16_layernorm_warns_only_with_a_16_bit_stash_type(tmp_path, stash_type, warns):
    inits = [numpy_helper.from_array(np.ones(8, np.float16), n) for n in ("gamma", "beta")]
    node = helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="ln", stash_type=stash_type)
    report = lint_trt(_save(tmp_path, [node], [_value("x", T.FLOAT16, [2, 8])], [_value("y", T.FLOAT16, [2, 8])],
                            inits))
    assert ("fp16-normalization" in _codes(report, "warning")) is warns, report.format_text()
