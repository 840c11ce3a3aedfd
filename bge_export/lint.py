"""TensorRT lint: what in an ONNX graph would stop or hurt a TensorRT build, found without TensorRT or a GPU.

A TensorRT build takes an NVIDIA GPU and minutes; this reads the graph (never the weights) in a second and checks
it against what the ONNX-TensorRT parser documents and asserts. Every rule names its source, so it can be checked
again when TensorRT moves:

[OPS]   onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 edition ("opset 9 to opset 24"), diffed against the
        10.1-GA edition (tag 10.1-GA, commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c: "10.0 ... opset 9 to opset 20").
[LOG]   onnx/onnx-tensorrt docs/Changelog.md (10.15 edition) and NVIDIA/TensorRT CHANGELOG.md (11.1 release,
        commit 82d1dca801c8318a5605399d5240780d0679e4e1): the release each newer operator arrived in.
[SRC]   onnx-tensorrt 10.1-GA sources ModelImporter.cpp and onnxOpImporters.cpp: what the parser asserts.
[GUIDE] NVIDIA TensorRT docs, reference/onnx-opset-guide.html: TensorRT 11.x reads opsets up to 25.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runtimes._optional import require
from runtimes.errors import BundleError, InputError

# [OPS]: every operator marked "Y", plus Swish (TensorRT 11.0, [LOG]). A default-domain op missing here has no
# importer: the parser falls back to a plugin of that name ([SRC] ModelImporter.cpp parseNode) and fails.
SUPPORTED_OPS = frozenset("""
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU
    Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
    InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
    LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
    NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RMSNormalization RNN RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign
    RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin
    Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Swish Tan Tanh TensorScatter
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Operators newer than TensorRT 10.0 and the release that added them ([LOG]); earlier parsers reject them.
SUPPORTED_SINCE = {
    "DeformConv": (10, 1), "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4),
    "STFT": (10, 5), "Attention": (10, 14), "RMSNormalization": (10, 15), "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15), "Swish": (11, 0),
}

# Inputs [OPS] requires to be build-time constants (an initializer or a Constant node); the parser asserts it
# ([SRC] reduceTensor "Axis input must be an initializer!", CumSum "Axis input for CumSum must be an initializer!").
CONSTANT_INPUTS = {
    **{f"Reduce{r}": (1, "axes") for r in "L1 L2 LogSum LogSumExp Max Mean Min Prod Sum SumSquare".split()},
    "CumSum": (1, "axis"), "OneHot": (1, "depth"),
}

# Highest opset each release documents: [OPS] 10.0 -> 20, 10.15 -> 24; [GUIDE] 11.x -> 25. Releases in between are
# held to the older documented value, so an "above the range" warning for them may be over-cautious.
_MAX_OPSET = (((11, 0), 25), ((10, 15), 24), ((10, 0), 20))
_DEFAULT_DOMAINS = ("", "ai.onnx")
_ORT_DOMAINS = ("com.microsoft", "com.ms.")
_DDS_OPS = ("NonZero", "NonMaxSuppression")  # Unique and Compress are data-dependent too, but unsupported outright
_INT_REJECTED = ("MatMul", "Gemm")  # [SRC] notInvalidType(inputs.at(0), {"INT32", "INT64"}): parse error
_INT64_COMPUTE = frozenset("""Add Sub Mul Div Mod Pow Neg Abs Sum Mean Einsum CumSum Softmax
    ReduceSum ReduceMean ReduceProd ReduceMax ReduceMin""".split())
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_MAX_LISTED = 5
_SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem, with a stable code, a sentence that says what to do, and (some of) the nodes concerned.

    severity: "error" (the parser rejects it or the engine would be wrong), "warning" (it builds, but runs slower or
    less accurately) or "info"."""

    severity: str
    code: str
    message: str
    nodes: tuple[str, ...] = ()
    op: str | None = None


@dataclass
class LintReport:
    """All findings for one ONNX file, with the operator census they were drawn from."""

    path: str
    opset: int
    findings: list[Finding]
    op_counts: dict[str, int]

    @property
    def ok(self) -> bool:
        """True when nothing would stop the TensorRT build (warnings allowed)."""
        return not any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "opset": self.opset, "ok": self.ok, "op_counts": dict(self.op_counts),
                "findings": [{**asdict(f), "nodes": list(f.nodes)} for f in self.findings]}

    def format_text(self) -> str:
        lines = [f"TensorRT lint: {self.path} (opset {self.opset}, {sum(self.op_counts.values())} nodes)"]
        for severity in _SEVERITIES:
            for f in (f for f in self.findings if f.severity == severity):
                where = f" [{', '.join(f.nodes)}]" if f.nodes else ""
                lines.append(f"  {severity:<7} {f.code}: {f.message}{where}")
        errors = sum(f.severity == "error" for f in self.findings)
        lines.append("verdict: no blocking problems for TensorRT" if not errors else
                     f"verdict: {errors} problem{'s' if errors > 1 else ''} would stop a TensorRT build")
        return "\n".join(lines)


def _finding(severity: str, code: str, message: str, nodes: Sequence[str] = (), op: str | None = None) -> Finding:
    """A Finding whose node list is capped at _MAX_LISTED, the rest counted in the message."""
    nodes = list(dict.fromkeys(nodes))
    if len(nodes) > _MAX_LISTED:
        message += f" (first {_MAX_LISTED} nodes listed, and {len(nodes) - _MAX_LISTED} more)"
    return Finding(severity, code, message, tuple(nodes[:_MAX_LISTED]), op)


def _parse_version(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(".")[:2]]
    except ValueError:
        parts = []
    if not parts or parts[0] not in (10, 11):
        raise InputError(f"trt_version {text!r} is not a TensorRT 10.x or 11.x version; pass e.g. '10.13' or '11.1'")
    return parts[0], (parts[1] if len(parts) > 1 else 0)


class _Graph:
    """The model's nodes (subgraphs and local functions included) with producer/consumer maps, value types (after
    shape inference) and the constants the checks read, decoded on demand. Weights are never read."""

    def __init__(self, onnx: Any, model: Any) -> None:
        self.onnx = onnx
        graphs = list(self._graphs(model.graph))
        self.nodes = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
        self.functions = {(f.domain, f.name) for f in model.functions}
        self.outputs = {o.name for o in model.graph.output}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.consumers[name].append((n, i))
        self.types: dict[str, tuple[int, int | None]] = {}  # name -> (elem_type, rank or None)
        for v in (v for g in graphs for v in (*g.input, *g.output, *g.value_info)):
            t = v.type.tensor_type
            if t.elem_type:
                self.types[v.name] = (t.elem_type, len(t.shape.dim) if t.HasField("shape") else None)
        self.tensors = {t.name: t for g in graphs for t in g.initializer}
        for n in self.nodes:  # Constant nodes in the forms the checks need (value, value_int, value_ints)
            a = n.attribute[0] if n.op_type == "Constant" and len(n.attribute) == 1 else None
            if a is not None and a.name == "value":
                self.tensors[n.output[0]] = a.t
            elif a is not None and a.name in ("value_int", "value_ints"):
                ints = [a.i] if a.name == "value_int" else list(a.ints)
                dims = [] if a.name == "value_int" else [len(ints)]
                self.tensors[n.output[0]] = onnx.helper.make_tensor(n.output[0], onnx.TensorProto.INT64, dims, ints)
        for name, t in self.tensors.items():
            self.types[name] = (t.data_type, len(t.dims))

    def _graphs(self, graph: Any) -> Iterator[Any]:
        yield graph
        for node in graph.node:
            for a in node.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from self._graphs(g)

    def _source(self, name: str) -> str:
        while name in self.producer and self.producer[name].op_type == "Identity":  # the parser sees through these
            name = self.producer[name].input[0]
        return name

    def is_const(self, name: str) -> bool:
        return self._source(name) in self.tensors

    def value(self, name: str, limit: int = 1 << 20) -> Any:
        """The constant's values as numpy, or None when it is computed, in external data, or large."""
        t = self.tensors.get(self._source(name))
        if t is None or self.onnx.external_data_helper.uses_external_data(t) or math.prod(t.dims) > limit:
            return None
        return self.onnx.numpy_helper.to_array(t)

    def used(self, name: str) -> bool:
        return bool(name) and (name in self.outputs or bool(self.consumers.get(name)))


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _node_name(node: Any) -> str:
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"


def _restriction(node: Any, g: _Graph) -> str | None:
    """Why [OPS] says the parser cannot import this node as written, or None. Transformer-relevant rules only."""
    op, ins = node.op_type, list(node.input)
    attrs = {a.name: g.onnx.helper.get_attribute_value(a) for a in node.attribute}
    if op in CONSTANT_INPUTS:
        i, what = CONSTANT_INPUTS[op]
        if len(ins) > i and ins[i] and not g.is_const(ins[i]):
            return f"its {what} input must be a build-time constant (initializer or Constant), not computed"
    if op == "Dropout" and len(ins) > 2 and ins[2]:
        mode = g.value(ins[2])
        if mode is None or mode.any():
            return "its training_mode input must be a constant False"
    if op == "LayerNormalization" and any(g.used(o) for o in node.output[1:]):
        return "only its first output Y is supported, but Mean/InvStdDev are used"
    if op == "ScatterND" and attrs.get("reduction", b"none") != b"none":
        return "reduction other than 'none' is unsupported"
    if op == "TopK":
        k = g.value(ins[1]) if len(ins) > 1 else None
        if attrs.get("sorted", 1) != 1:
            return "sorted must be 1"
        if k is not None and k.size and int(k.max()) >= 3840:
            return f"K={int(k.max())} but K must be less than 3840"
    if op == "Attention":
        if any(ins[4:7]):
            return "the past_key, past_value and nonpad_kv_seqlen inputs are unsupported"
        if any(g.used(o) for o in node.output[1:]):
            return "the present_key, present_value and qk_matmul_output outputs are unsupported"
        if attrs.get("softcap", 0.0) or attrs.get("qk_matmul_output_mode", 0):
            return "the softcap and qk_matmul_output_mode attributes are unsupported"
        if any(g.types.get(x, (0, None))[1] not in (4, None) for x in ins[:3]):
            return "Q, K and V must be 4-D (heads as the second dimension)"
    int64 = g.onnx.TensorProto.INT64
    if op == "RotaryEmbedding" and len(ins) > 3 and ins[3] and g.types.get(ins[3], (int64,))[0] != int64:
        return "position_ids must be INT64"
    return None


def lint_trt(onnx_path: str | Path, *, trt_version: str = "10.13") -> LintReport:
    """Lint one ONNX file for a TensorRT build with the given TensorRT version (10.x or 11.x)."""
    version = _parse_version(trt_version)
    onnx = require("onnx")
    path = Path(onnx_path)
    if not path.is_file():
        raise BundleError(f"no ONNX model at {path}: pass the path of a .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)  # weights (external data) are never needed
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise BundleError(f"cannot read ONNX model {path}: {_first_line(exc)}; re-export it") from None
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)
    findings: list[Finding] = []
    try:  # types of intermediate values; without its weights the proto stays far below protobuf's 2 GB limit
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        findings.append(_finding("info", "shape-inference", f"ONNX shape inference failed ({_first_line(exc)}), so "
                                 "the int64 and fp16 checks saw only the types stored in the file"))
    g = _Graph(onnx, model)
    grouped: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)  # (severity, code, op, message)
    for node in g.nodes:
        for key in _node_checks(node, g, version):
            grouped[key].append(_node_name(node))
    findings += [_finding(sev, code, msg, nodes, op) for (sev, code, op, msg), nodes in grouped.items()]
    findings += _int64_constants(g) + _opset_findings(g, opset, version)
    int64_inputs = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.INT64]
    if int64_inputs:
        findings.append(_finding("info", "int64-io", "int64 graph inputs are supported natively since TensorRT 10 "
                                 "(bind int64 buffers; no cast needed)", int64_inputs))
    findings.sort(key=lambda f: _SEVERITIES.index(f.severity))
    counts = Counter(n.op_type if n.domain in _DEFAULT_DOMAINS else f"{n.domain}::{n.op_type}" for n in g.nodes)
    return LintReport(str(path), opset, findings, dict(counts.most_common()))


def _node_checks(node: Any, g: _Graph, version: tuple[int, int]) -> Iterator[tuple[str, str, str, str]]:
    """(severity, code, op, message) for each problem of one node; lint_trt groups equal ones across nodes."""
    op, T = node.op_type, g.onnx.TensorProto
    if node.domain not in _DEFAULT_DOMAINS:
        if (node.domain, op) in g.functions:
            return  # a model-local function: the parser imports its body, which g.nodes holds and checks
        # The parser dispatches on op_type alone ([SRC] parseNode), so a contrib op is either unknown (then a plugin
        # lookup fails) or, when it shares a name such as Attention or Gelu, imported with ONNX semantics.
        yield "error", "contrib-op", f"{node.domain}::{op}", (
            f"{node.domain}::{op} is an ONNX Runtime fused op that TensorRT cannot parse; build the TensorRT target "
            "from the unfused exported graph (bge-export does that for trt-* targets), not from an ort-cpu/ort-cuda "
            "bundle" if node.domain.startswith(_ORT_DOMAINS) else
            f"{node.domain}::{op} is a custom-domain op that TensorRT can only run through a plugin of that name, "
            "and bge-export ships none; express it with standard ONNX ops")
        return
    if op not in SUPPORTED_OPS:
        yield "error", "unsupported-op", op, (f"{op} is not supported by the ONNX-TensorRT parser; rewrite it with "
                                              "supported ops before the TensorRT build")
    elif version < SUPPORTED_SINCE.get(op, (10, 0)):
        need, have = (".".join(map(str, v)) for v in (SUPPORTED_SINCE[op], version))
        yield "error", "unsupported-op", op, (f"{op} needs TensorRT {need} or newer (target is {have}); upgrade "
                                              f"TensorRT or export with an opset that decomposes {op}")
    elif (why := _restriction(node, g)) is not None:
        yield "error", "op-restriction", op, f"TensorRT cannot import this {op}: {why}"
    if op in _DDS_OPS:  # the output shape depends on values: TensorRT hands such outputs out via IOutputAllocator
        if any(o in g.outputs for o in node.output):
            yield "error", "data-dependent-shape", op, (
                f"{op} produces a graph output whose shape depends on tensor values, which a TensorRT runtime must "
                "size through IOutputAllocator after every run; end the graph on a fixed-shape tensor (a mask)")
        else:
            yield "warning", "data-dependent-shape", op, (
                f"{op} has a data-dependent output shape: TensorRT supports it inside the graph but must synchronise "
                "with the host and cannot capture CUDA graphs; use a fixed-shape mask (Where) if you can")
    if op == "TopK" and len(node.input) > 1 and not g.is_const(node.input[1]):
        yield "warning", "data-dependent-shape", op, ("TopK's K is computed at run time, so its output shape is "
                                                      "value-dependent; make K a constant if it is fixed")
    if op in ("If", "Loop", "Scan"):
        yield "warning", "control-flow", op, (f"{op} becomes an on-device control-flow layer, slower than straight "
                                              "code and in the way of CUDA-graph capture; fold it away if you can")
    in_type = g.types.get(node.input[0], (0, None))[0] if node.input else 0
    # [SRC] LayerNormalization computes in stash_type (default FLOAT) even for fp16 inputs, so only a 16-bit
    # stash_type loses accuracy. Softmax subtracts the max before exp, so fp16 is usually fine there.
    if op in ("LayerNormalization", "RMSNormalization") and in_type in (T.FLOAT16, T.BFLOAT16):
        if next((a.i for a in node.attribute if a.name == "stash_type"), T.FLOAT) != T.FLOAT:
            yield "warning", "fp16-normalization", op, (f"{op} normalises in 16 bits (stash_type is not FLOAT); set "
                                                        "stash_type=1 or Cast its input to float32")
    if op == "Softmax" and in_type == T.FLOAT16:
        yield "info", "fp16-normalization", op, ("Softmax runs in fp16 under strong typing; if scores drift, wrap it "
                                                 "in Casts to float32")
    # Integer MatMul/Gemm do not parse at all; elsewhere int64 tensors of rank >= 2 (batch x sequence, not shape
    # arithmetic, which is scalar or 1-D) run on slower int64 kernels.
    if op in _INT_REJECTED and in_type in (T.INT32, T.INT64):
        yield "error", "int64-compute", op, f"integer {op} is rejected by the TensorRT parser; Cast its inputs to float"
    elif op in _INT64_COMPUTE and any(g.types.get(i, (0, None))[0] == T.INT64 and (g.types[i][1] or 0) >= 2
                                      for i in node.input if i):
        yield "warning", "int64-compute", op, (f"{op} computes on int64 (batch, sequence) tensors, which TensorRT runs "
                                               "on slow int64 kernels; feed int32 or Cast to int32/float before it")
    if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero_point = g.value(node.input[2])
        if zero_point is not None and zero_point.any():  # [SRC] "TensorRT only supports symmetric quantization"
            yield "error", "qdq-zero-point", op, ("TensorRT only supports symmetric quantization and this zero point "
                                                  "is not 0; quantize with symmetric=True")
        elif g.types.get(node.input[2], (0,))[0] == T.UINT8:  # [SRC] "... TensorRT will use INT8 instead."
            yield "warning", "qdq-zero-point", op, ("UINT8 zero point: TensorRT quantizes to INT8 instead, which moves "
                                                    "the clipping range; quantize to INT8 (QInt8)")


def _int64_constants(g: _Graph) -> list[Finding]:
    """int64 constants beyond int32 that do more than bound a Slice: TensorRT computes many int64 paths (shape
    tensors, indices) in int32, where such values wrap. INT64_MAX/MIN as Slice starts/ends are the normal idiom."""
    nodes = []
    for name, t in g.tensors.items():
        if t.data_type != g.onnx.TensorProto.INT64 or not g.consumers.get(name):
            continue
        values = g.value(name)
        if values is None or not values.size or (_INT32_MIN <= values.min() and values.max() <= _INT32_MAX):
            continue
        nodes += [_node_name(n) for n, i in g.consumers[name] if not (n.op_type == "Slice" and i in (1, 2))]
    if not nodes:
        return []
    return [_finding("warning", "int64-out-of-int32-range", "an int64 constant outside the int32 range feeds a "
                     "computation; TensorRT may evaluate it in int32 and wrap, so clamp it to the int32 range", nodes)]


def _opset_findings(g: _Graph, opset: int, version: tuple[int, int]) -> list[Finding]:
    """The declared opset against what the parser handles, and the LayerNorm that opsets before 17 spell out."""
    top = next(m for since, m in _MAX_OPSET if version >= since)
    out = []
    if opset < 7:  # [SRC] importerUtils.cpp asserts "Pre-opset 7 broadcasting is unsupported"
        out.append(_finding("error", "opset", f"opset {opset} (0: none declared) is older than 7, which TensorRT "
                            "cannot parse; re-export at opset 17 or newer"))
    elif opset < 9:
        out.append(_finding("warning", "opset", f"opset {opset} is below 9, the documented minimum; re-export at "
                            "opset 17 or newer"))
    elif opset > top:  # [SRC] the parser has no upper bound check: newer opsets parse, but untested
        release = ".".join(map(str, version))
        out.append(_finding("warning", "opset", f"opset {opset} is above {top}, the highest documented for TensorRT "
                            f"{release}; re-export at opset {top} or lower, or verify the build with trtexec"))
    # ReduceMean -> Sub -> Pow is LayerNorm spelled out (what opsets before 17 export): slower than the one
    # INormalizationLayer that LayerNormalization becomes, and its Pow/ReduceMean overflow in fp16
    # (NVIDIA/TensorRT#3657).
    spelled = [_node_name(r) for r in g.nodes if r.op_type == "ReduceMean" for s, i in g.consumers[r.output[0]]
               if s.op_type == "Sub" and i == 1 and any(p.op_type == "Pow" for p, _ in g.consumers[s.output[0]])]
    if spelled:
        fix = f"re-export at opset 17 or newer (this is {opset})" if opset < 17 else "fuse it into LayerNormalization"
        out.append(_finding("warning", "decomposed-layernorm", "LayerNorm is spelled out as ReduceMean/Sub/Pow, which "
                            f"is slower on TensorRT and overflows in fp16; {fix}", spelled))
    return out
