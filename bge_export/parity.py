"""Parity: an engine bundle against FlagEmbedding's own API (fp32, CPU) on the same checkpoint and inputs.

ONE tolerance table, keyed by (family, output, precision). Each row names a statistic and a bound; a failing
check prints the smallest bound that would have passed. Retrieval-level agreement (top-10 overlap) is
reported beside the raw errors.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bge_export.errors import InternalError


@dataclass(frozen=True)
class Tolerance:
    metric: str
    bound: float
    higher_is_better: bool  # cosine / overlap: value >= bound passes; errors: value <= bound passes


# ONE rule for every unnormalised output (rerank scores, m3 sparse weights, ColBERT vectors, the five m3 score
# kinds, decoder scores): the largest |reference - bundle| divided by the reference's own scale, floored at
# SCALE_FLOOR (scaled_error below). fp32 rounding grows with the size of the numbers, so an absolute bound that
# holds on small test checkpoints refuses correct bundles of real ones (logits of +-10, sparse weights of ~7).
# The metric names say which scale: *_rel_spread (max - min of the reference scores), *_rel_max (the largest
# reference weight), *_rel_norm (the largest reference vector norm). Normalised outputs (dense vectors) keep
# cosine and max_abs, which are already relative to their unit scale.
SCALE_FLOOR = 1.0  # scales below it (near-constant scores, tiny weights) fall back to the absolute bound
FP32_REL = 1e-4  # ONNX Runtime's own fp32 BERT-optimizer tolerance, per unit of scale
HALF_REL = 5e-3  # fp16 / bf16 engines: 5e-3 of the scale (the GPU engines' bound)

TOLERANCES: dict[tuple[str, str, str], tuple[Tolerance, ...]] = {
    ("encoder", "tokens", "*"): (Tolerance("mismatched_texts", 0, False),),
    # max_abs on L2-normalised vectors. For scale, FlagModel itself moves by up to 4e-6 on random-weight
    # checkpoints when only the batch composition changes; every fp32 report carries that measured noise floor
    # as `reference_self_max_abs`.
    ("encoder", "dense", "fp32"): (Tolerance("cosine_min", 0.99999, True), Tolerance("max_abs", 1e-4, False)),
    # int8 is gated on what users feel: recall@10 and MRR on the labelled retrieval set (real weights only),
    # at most 1 point lost against FlagModel; the top-10 overlap with FlagModel's ranking is reported
    ("encoder", "dense", "int8"): (Tolerance("cosine_mean", 0.99, True), Tolerance("recall@10_drop", 0.01, False),
                                   Tolerance("mrr_drop", 0.01, False)),
    # the bundle's stored reference sample (bge-export parity without the checkpoint)
    ("encoder", "golden", "fp32"): (Tolerance("cosine_min", 0.99999, True), Tolerance("max_abs", 1e-4, False)),
    ("encoder", "golden", "int8"): (Tolerance("cosine_mean", 0.99, True),),
    ("m3", "tokens", "*"): (Tolerance("mismatched_texts", 0, False), Tolerance("mismatched_decodes", 0, False)),
    ("m3", "dense", "fp32"): (Tolerance("cosine_min", 0.99999, True), Tolerance("max_abs", 1e-4, False)),
    ("m3", "dense", "int8"): (Tolerance("cosine_mean", 0.99, True),),
    # key_mismatch: ids present on one side only with a weight above 1e-4 of the largest weight (a ReLU at
    # exactly 0 may flip)
    ("m3", "sparse", "fp32"): (Tolerance("key_mismatch", 0, False), Tolerance("max_abs_rel_max", FP32_REL, False)),
    ("m3", "sparse", "int8"): (Tolerance("top10_key_overlap", 0.9, True),),
    ("m3", "colbert", "fp32"): (Tolerance("length_mismatch", 0, False), Tolerance("max_abs_rel_norm", FP32_REL, False)),
    ("m3", "colbert", "int8"): (Tolerance("length_mismatch", 0, False), Tolerance("cosine_mean", 0.99, True)),
    # each of the five score kinds against its own spread; the worst kind is gated
    ("m3", "scores", "fp32"): (Tolerance("max_abs_rel_spread", FP32_REL, False),),
    ("m3", "scores", "int8"): (Tolerance("spearman", 0.95, True),),
    ("m3", "golden", "fp32"): (Tolerance("cosine_min", 0.99999, True), Tolerance("max_abs", 1e-4, False)),
    ("m3", "golden", "int8"): (Tolerance("cosine_mean", 0.99, True),),
    ("cross-encoder", "tokens", "*"): (Tolerance("mismatched_pairs", 0, False),),
    ("cross-encoder", "score", "fp32"): (Tolerance("max_abs_rel_spread", FP32_REL, False),),
    ("cross-encoder", "score", "int8"): (Tolerance("spearman", 0.95, True),),
    ("cross-encoder", "golden", "fp32"): (Tolerance("max_abs_rel_spread", FP32_REL, False),),
    ("cross-encoder", "golden", "int8"): (Tolerance("spearman", 0.95, True),),
    # fp16 (GPU engines and the fp16 ONNX TensorRT compiles): dense cosine >= 0.999, scores within 5e-3 of the
    # reference scores' spread; the sparse weights are gated through the lexical scores they make (the "scores"
    # row) and their top-10 ids, their raw error is reported
    ("encoder", "dense", "fp16"): (Tolerance("cosine_min", 0.999, True),),
    ("encoder", "golden", "fp16"): (Tolerance("cosine_min", 0.999, True),),
    ("m3", "dense", "fp16"): (Tolerance("cosine_min", 0.999, True),),
    ("m3", "sparse", "fp16"): (Tolerance("top10_key_overlap", 0.95, True),),
    ("m3", "colbert", "fp16"): (Tolerance("length_mismatch", 0, False), Tolerance("cosine_mean", 0.999, True)),
    ("m3", "scores", "fp16"): (Tolerance("max_abs_rel_spread", HALF_REL, False),),
    ("m3", "golden", "fp16"): (Tolerance("cosine_min", 0.999, True),),
    ("cross-encoder", "score", "fp16"): (Tolerance("max_abs_rel_spread", HALF_REL, False),),
    ("cross-encoder", "golden", "fp16"): (Tolerance("max_abs_rel_spread", HALF_REL, False),),
}
# The decoder families (bge_export/decoder_parity.py): the same scaled rule on their scores.
for _fam in ("llm-reranker", "layerwise-reranker", "compressed-reranker"):
    TOLERANCES.update({
        (_fam, "tokens", "*"): (Tolerance("mismatched_pairs", 0, False),),
        # the compressed reranker is right-padded only (FlagEmbedding forces it), so no padding-side row there
        (_fam, "score", "fp32"): (Tolerance("max_abs_rel_spread", FP32_REL, False),) + (
            () if _fam == "compressed-reranker" else (Tolerance("padding_side_max_abs_rel_spread", FP32_REL, False),)),
        (_fam, "score", "fp16"): (Tolerance("max_abs_rel_spread", HALF_REL, False),),
        (_fam, "score", "int8"): (Tolerance("spearman", 0.95, True),),
        (_fam, "golden", "fp32"): (Tolerance("max_abs_rel_spread", FP32_REL, False),),
        (_fam, "golden", "fp16"): (Tolerance("max_abs_rel_spread", HALF_REL, False),),
        (_fam, "golden", "int8"): (Tolerance("spearman", 0.95, True),),
    })
TOLERANCES.update({
    ("llm-embedder", "tokens", "*"): (Tolerance("mismatched_texts", 0, False),),
    ("llm-embedder", "dense", "fp32"): (Tolerance("cosine_min", 0.99999, True),),
    ("llm-embedder", "dense", "fp16"): (Tolerance("cosine_min", 0.999, True),),
    ("llm-embedder", "dense", "int8"): (Tolerance("cosine_mean", 0.99, True),),
    ("llm-embedder", "golden", "fp32"): (Tolerance("cosine_min", 0.99999, True),),
    ("llm-embedder", "golden", "fp16"): (Tolerance("cosine_min", 0.999, True),),
    ("llm-embedder", "golden", "int8"): (Tolerance("cosine_mean", 0.99, True),),
})


def tolerances_for(family: str, output: str, precision: str) -> tuple[Tolerance, ...]:
    if precision == "bf16":  # the GPU engines' bounds hold for both 16-bit types (the issue's gates)
        precision = "fp16"
    for key in ((family, output, precision), (family, output, "*")):
        if key in TOLERANCES:
            return TOLERANCES[key]
    raise InternalError(f"no tolerance row for {(family, output, precision)}")


@dataclass
class Check:
    output: str
    metric: str
    value: float
    bound: float | None  # None: reported, not gated
    passed: bool
    note: str = ""
    higher_is_better: bool = True

    def line(self) -> str:
        if self.bound is None:
            return f"     {self.output:<8} {self.metric:<22} {self.value:.6g}  (reported){' ' + self.note if self.note else ''}"
        op = ">=" if self.higher_is_better else "<="
        status = "ok  " if self.passed else "FAIL"
        extra = "" if self.passed else f"  -> would pass with {self.metric} {op} {_loosen(self.value, op)}"
        return f"{status} {self.output:<8} {self.metric:<22} {self.value:.6g} {op} {self.bound:g}{extra}"


def _loosen(value: float, op: str) -> str:
    """The smallest bound (rounded outward) that the observed value passes."""
    if value == 0:
        return "0"
    import math

    digits = 3 - int(math.floor(math.log10(abs(value)))) - 1
    scale = 10 ** max(digits, 0)
    v = math.floor(value * scale) / scale if op == ">=" else math.ceil(value * scale) / scale
    return f"{v:.{max(digits, 0)}f}" if digits > 0 else f"{v:g}"


# Statistics that only mean something on trained weights: a random-weight checkpoint has no retrieval signal,
# so its top-10 ranking is decided by noise-level score differences. Tests on such checkpoints report them
# without gating (``gate_retrieval=False``); every real checkpoint is gated.
RETRIEVAL_METRICS = {"top10_overlap", "recall@10_drop", "mrr_drop"}


def gate(family: str, output: str, precision: str, values: dict[str, float], notes: dict[str, str] | None = None,
         *, gate_retrieval: bool = True) -> list[Check]:
    """Checks for the gated statistics of the row plus every other value as a reported one."""
    notes = dict(notes or {})
    rows = {t.metric: t for t in tolerances_for(family, output, precision)}
    if not gate_retrieval:
        for m in RETRIEVAL_METRICS & set(rows):
            rows.pop(m)
            notes[m] = (notes.get(m, "") + " not gated: random-weight checkpoint, no retrieval signal").strip()
    checks = []
    for metric, value in values.items():
        t = rows.get(metric)
        if t is None:
            checks.append(Check(output, metric, float(value), None, True, notes.get(metric, "")))
        else:
            ok = value >= t.bound if t.higher_is_better else value <= t.bound
            checks.append(Check(output, metric, float(value), t.bound, bool(ok), notes.get(metric, ""), t.higher_is_better))
    missing = set(rows) - set(values)
    if missing:
        raise InternalError(f"parity for {(family, output, precision)} did not compute {sorted(missing)}")
    return checks


def report(checks: list[Check], header: str) -> tuple[bool, str]:
    ok = all(c.passed for c in checks)
    lines = [f"parity {header}: {'PASSED' if ok else 'FAILED'}"] + [c.line() for c in checks]
    return ok, "\n".join(lines)


def report_json(checks: list[Check], reference: str, n_texts: int, gate_retrieval: bool = True,
                device: str | None = None) -> dict:
    return {"passed": all(c.passed for c in checks), "reference": reference, "texts": n_texts,
            "retrieval_gated": gate_retrieval, "device": device, "checks": [asdict(c) for c in checks]}


# --- statistics -----------------------------------------------------------------------------------------

def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-30)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties), without scipy."""
    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        r = np.empty(len(x))
        r[np.argsort(x, kind="mergesort")] = np.arange(len(x), dtype=np.float64)
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        return (np.bincount(inv, weights=r) / counts)[inv]

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 1.0


def topk_overlap(q_ref, c_ref, q_got, c_got, k: int = 10) -> float:
    """Mean fraction of the reference's top-k documents per query that the engine also ranks in its top-k."""
    top_ref = np.argsort(-(q_ref @ c_ref.T), axis=1)[:, :k]
    top_got = np.argsort(-(q_got @ c_got.T), axis=1)[:, :k]
    return float(np.mean([len(set(r) & set(g)) / k for r, g in zip(top_ref, top_got)]))


def scaled_error(ref, got, scale: float) -> float:
    """The one rule of the tolerance table: max |ref - got| over the reference's own scale, floored at
    SCALE_FLOOR (so a near-zero scale falls back to the absolute bound)."""
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    return scaled(float(np.abs(ref - got).max()) if ref.size else 0.0, scale)


def scaled(diff: float, scale: float) -> float:
    """A difference over max(scale, SCALE_FLOOR)."""
    return diff / max(float(scale), SCALE_FLOOR)


def spread(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(x.max() - x.min()) if x.size else 0.0


def rel_spread_error(ref, got) -> float:
    """Largest score difference relative to the spread (max - min) of the reference scores (floored)."""
    return scaled_error(ref, got, spread(ref))


# --- the reference, with its results remembered for the process ----------------------------------------

# FlagEmbedding's pure calls (same checkpoint, variant, options, state and arguments give the same result)
_MEMO_METHODS = frozenset({"encode", "encode_queries", "encode_corpus", "compute_score", "convert_id_to_token",
                           "compute_lexical_matching_score", "colbert_score"})
_STATE_METHODS = frozenset({"set_examples"})  # calls that change what later calls return
_REFERENCE_RESULTS: dict[tuple, object] = {}


def _digest(*parts) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(parts, default=repr, ensure_ascii=False).encode()).hexdigest()


class CachedReference:
    """FlagEmbedding's reference object for one parity run. Its pure calls are remembered for the process, keyed
    on the checkpoint's weights, the family's variant, the constructor options, the state-changing calls made so
    far (set_examples) and the arguments, so that parity of several targets of one checkpoint (the test suite,
    `bge-export bench` checks) runs FlagEmbedding once. The real object is built on the first call it must
    answer, and replays this run's state-changing calls; every run starts from a fresh object's state."""

    def __init__(self, family, **kwargs):
        self._family, self._kwargs = family, kwargs
        self._key = _digest(str(family.ckpt.path), family.ckpt.weights_sha256(), family.variant, kwargs)
        self._obj = None
        self._state: list[tuple] = []

    def _real(self):
        if self._obj is None:
            self._obj = self._family.reference(**self._kwargs)
            for name, args, kwargs in self._state:
                getattr(self._obj, name)(*args, **kwargs)
        return self._obj

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _MEMO_METHODS:
            return functools.partial(self._memo, name)
        if name in _STATE_METHODS:
            def change(*args, **kwargs):
                self._state.append((name, args, kwargs))
                return None if self._obj is None else getattr(self._obj, name)(*args, **kwargs)
            return change
        return getattr(self._real(), name)

    def _memo(self, name: str, *args, **kwargs):
        import copy

        key = (self._key, _digest(self._state), name, _digest(args, kwargs))
        if key not in _REFERENCE_RESULTS:
            _REFERENCE_RESULTS[key] = getattr(self._real(), name)(*args, **kwargs)
        return copy.deepcopy(_REFERENCE_RESULTS[key])


def cached_reference(family, **kwargs) -> CachedReference:
    return CachedReference(family, **kwargs)


class ParityDevice(NamedTuple):
    backend_options: dict  # for runtimes.load
    name: str  # for the report
    cpu: bool  # ONNX Runtime CPU: no bf16 kernels


def parity_device(engine: dict) -> ParityDevice:
    """Where parity runs a bundle's engine. A CUDA bundle on a machine without CUDA runs its graph on ONNX Runtime
    CPU: that checks the graph and its precision (fp16 weights, fp32 islands, QDQ), not the CUDA kernels, and the
    report says so."""
    providers = engine.get("providers", [])
    if engine["kind"] == "openvino":
        return ParityDevice({}, f"OpenVINO CPU, {engine.get('inference_precision', 'fp32')} inference precision", False)
    if engine["kind"] != "onnxruntime" or "CUDAExecutionProvider" not in providers:
        name = (providers or [engine["kind"]])[0]
        return ParityDevice({}, name, name == "CPUExecutionProvider")
    if cuda_usable():
        return ParityDevice({}, "CUDAExecutionProvider", False)
    return ParityDevice({"providers": ["CPUExecutionProvider"]},
                        "CPUExecutionProvider (no CUDA here: checks the graph, not the CUDA kernels)", True)


def unrunnable(precision: str, engine: dict) -> str | None:
    """Why parity cannot run this bundle here, or None."""
    if engine["kind"] == "openvino":
        if engine.get("inference_precision") == "bf16" and not openvino_bf16():
            from runtimes.cpu import cpu_name

            return (f"this CPU ({cpu_name()}) has no bf16 instructions (AVX512-BF16 or AMX), and OpenVINO would run "
                    "the bundle in fp32 here; run `bge-export parity BUNDLE` on the CPU it is deployed to")
        return None
    if precision == "bf16" and parity_device(engine).cpu:
        return "bf16 graphs do not run on ONNX Runtime CPU (no bf16 kernels); check them on the CUDA machine"
    return None


@functools.lru_cache(maxsize=None)
def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 on this CPU (it lists BF16 among its optimization capabilities)."""
    from runtimes._optional import require
    from runtimes.backends.openvino import device_supports_bf16

    return device_supports_bf16(require("openvino").Core())


@functools.lru_cache(maxsize=None)
def cuda_usable() -> bool:
    """Whether ONNX Runtime can run on a GPU here. Listing the CUDA provider is not enough (it is compiled into
    onnxruntime-gpu whether or not a GPU and the CUDA libraries are present): start a one-node session on it."""
    from runtimes._optional import require

    ort = require("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    helper, tp = require("onnx.helper"), require("onnx").TensorProto
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", tp.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", tp.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    try:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return sess.get_providers()[0] == "CUDAExecutionProvider"
    except Exception:  # noqa: BLE001 - any failure to start CUDA means: not usable here
        return False


def load_for_parity(bundle_path, **options):
    """runtimes.load on the device parity_device picks."""
    import runtimes

    device = parity_device(runtimes.open_bundle(bundle_path, verify=False).manifest.engine)
    return runtimes.load(bundle_path, verify=False, backend_options=device.backend_options, **options)


def parity_texts() -> dict:
    """The built-in inputs: edge cases (empty, emoji, CJK, > max_length), queries and a 270-passage corpus."""
    data = json.loads(resources.files("bge_export").joinpath("data/parity_texts.json").read_text(encoding="utf-8"))
    return data


@contextlib.contextmanager
def quiet_stderr():
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        yield


# --- the encoder family ---------------------------------------------------------------------------------

QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def encoder_parity(family, bundle_path: Path, precision: str, texts: dict, *, log=print,
                   gate_retrieval: bool = True) -> tuple[list[Check], dict]:
    """FlagModel vs runtimes.load(bundle) on edge cases + queries + corpus; returns (checks, golden sample)."""
    reference = cached_reference(family, query_instruction_for_retrieval=QUERY_INSTRUCTION)
    model = load_for_parity(bundle_path, query_instruction_for_retrieval=QUERY_INSTRUCTION, batch_size=16)
    edge, queries, corpus = texts["edge_cases"], texts["queries"], texts["corpus"]
    everything = edge + queries + corpus

    # 1. the runtime's tokenizer against the HF tokenizer FlagModel uses (also at a short max_length)
    checks = gate(family.name, "tokens", "*",
                  {"mismatched_texts": text_token_mismatches(family, model, everything, model.max_length)})

    # 2. embeddings: plain encode over everything (mixed lengths in one batch, truncation at max_length),
    #    a short max_length, and the retrieval pair encode_queries / encode_corpus
    log(f"running FlagEmbedding {family.reference_api} (fp32, CPU) and the bundle on {len(everything)} texts")
    n = model.max_length  # the same max_length on both sides (FlagModel's own default is 512 regardless)
    with quiet_stderr():  # FlagEmbedding draws tqdm bars it does not let us switch off
        ref_all = reference.encode(everything, batch_size=32, max_length=n)
        ref_short = reference.encode(edge, max_length=16)
        q_ref = reference.encode_queries(queries, max_length=n)
        c_ref = reference.encode_corpus(corpus, batch_size=32, max_length=n)
    got_all = model.encode(everything)
    got_short = model.encode(edge, max_length=16)
    q_got, c_got = model.encode_queries(queries), model.encode_corpus(corpus)
    ref = np.concatenate([ref_all, ref_short, q_ref, c_ref])
    got = np.concatenate([got_all, got_short, q_got, c_got])
    cos = cosine_rows(ref, got)
    values = {
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs": float(np.abs(ref - got).max()),
        "top10_overlap": topk_overlap(q_ref, c_ref, q_got, c_got, k=10),
    }
    # the reference's own noise floor: the same texts one at a time instead of in padded batches
    probe = edge + queries
    with quiet_stderr():
        ref_single = reference.encode(probe, batch_size=1, max_length=n)
    values["reference_self_max_abs"] = float(np.abs(ref_single - ref_all[: len(probe)]).max())
    notes = {"top10_overlap": f"{len(queries)} queries x {len(corpus)} passages, against FlagModel's top 10",
             "reference_self_max_abs": "FlagModel batch 1 vs batch 32"}
    if gate_retrieval:  # trained weights: what users feel, on the labelled set (a random checkpoint has no signal)
        log("measuring recall@10 and MRR on the labelled retrieval set (FlagModel and the bundle)")
        quality, quality_notes = retrieval_quality(family, reference, model, n)
        values.update(quality)
        notes.update(quality_notes)
    checks += gate(family.name, "dense", precision, values, notes, gate_retrieval=gate_retrieval)
    golden = {"texts": list(edge), "reference": ref_all[: len(edge)], "n_texts": len(everything)}
    return checks, golden


_REFERENCE_QUALITY: dict = {}  # (checkpoint, weights, instruction, max_length) -> FlagModel's (recall@10, MRR)


def retrieval_quality(family, reference, model, max_length: int) -> tuple[dict, dict]:
    """recall@10 and MRR of FlagModel and of the bundle on the labelled retrieval set (bge_export/retrieval_set.py),
    with encode_queries / encode_corpus as users call them; the drops are gated for int8."""
    from bge_export import retrieval_set

    data = retrieval_set.load()
    queries = [q["text"] for q in data["queries"]]
    passages = [p["text"] for p in data["passages"]]
    relevant = [q["relevant"] for q in data["queries"]]
    key = (str(family.ckpt.path), family.ckpt.weights_sha256(), reference.query_instruction_for_retrieval, max_length)
    if key not in _REFERENCE_QUALITY:  # several bundles of one checkpoint in one process share the reference
        with quiet_stderr():
            q_ref = reference.encode_queries(queries, batch_size=32, max_length=max_length)
            p_ref = reference.encode_corpus(passages, batch_size=32, max_length=max_length)
        _REFERENCE_QUALITY[key] = retrieval_set.recall_mrr(q_ref, p_ref, relevant)
    recall_ref, mrr_ref = _REFERENCE_QUALITY[key]
    recall, mrr = retrieval_set.recall_mrr(model.encode_queries(queries), model.encode_corpus(passages), relevant)
    where = f"{len(queries)} queries, {len(passages)} passages of the King James Bible"
    values = {"recall@10_reference": recall_ref, "recall@10": recall, "recall@10_drop": round(recall_ref - recall, 9),
              "mrr_reference": mrr_ref, "mrr": mrr, "mrr_drop": round(mrr_ref - mrr, 9)}  # 0.465 - 0.455 is 0.01
    notes = {"recall@10_reference": f"FlagModel, {where}", "recall@10": "the bundle, same set",
             "recall@10_drop": "FlagModel minus the bundle", "mrr_reference": "FlagModel", "mrr": "the bundle",
             "mrr_drop": "FlagModel minus the bundle"}
    return values, notes


def text_token_mismatches(family, model, texts: list[str], max_length: int) -> int:
    """Texts whose runtime token ids differ from the HF tokenizer's, at ``max_length`` and at 16 (truncation)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(family.ckpt.path))
    mismatched = 0
    for n in (max_length, 16):
        want = hf(texts, truncation=True, max_length=n)["input_ids"]
        got = [e.ids for e in model.tokenizer.encode(texts, n)]
        mismatched += sum(w != g for w, g in zip(want, got))
    return mismatched


def dense_sample_values(reference, got) -> dict:
    """Dense vectors against the bundle's stored reference sample."""
    ref = np.asarray(reference, dtype=np.float32)
    cos = cosine_rows(ref, got)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "max_abs": float(np.abs(ref - got).max())}


def encoder_golden_values(model, sample: dict) -> dict:
    return dense_sample_values(sample["reference"], model.encode(sample["texts"]))


# --- the cross-encoder family ---------------------------------------------------------------------------

def rerank_pairs(texts: dict) -> tuple[list[list[str]], list[list[str]]]:
    """(pairs, edge pairs): every query with 8 passages spread over the corpus, and each edge case as a query
    and as a passage (empty strings, emoji, CJK, a query longer than 3/4 max_length, a passage beyond max_length)."""
    queries, corpus, edge = texts["queries"], texts["corpus"], texts["edge_cases"]
    pairs = [[q, corpus[(7 * i + 31 * j) % len(corpus)]] for i, q in enumerate(queries) for j in range(8)]
    edge_pairs = [[e, corpus[i % len(corpus)]] for i, e in enumerate(edge)] + [[queries[i % len(queries)], e]
                                                                             for i, e in enumerate(edge)]
    return pairs, edge_pairs


def cross_encoder_parity(family, bundle_path: Path, precision: str, texts: dict, *, log=print):
    """FlagReranker vs runtimes.load(bundle).compute_score; returns (checks, golden sample)."""
    from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

    reference = cached_reference(family)
    model = load_for_parity(bundle_path, batch_size=16)
    pairs, edge_pairs = rerank_pairs(texts)
    everything = pairs + edge_pairs
    n = model.max_length

    # 1. pair token ids: the runtime against FlagReranker's own construction (at max_length and a short one)
    tok = reference.tokenizer
    mismatched = 0
    for ml in (n, 32):
        qml = ml * 3 // 4
        q_ids = tok([q for q, _ in everything], add_special_tokens=False, max_length=qml, truncation=True)["input_ids"]
        p_ids = tok([p for _, p in everything], add_special_tokens=False, max_length=ml, truncation=True)["input_ids"]
        want = [prepare_for_model_compat(tok, q, p, truncation="only_second", max_length=ml, padding=False)["input_ids"]
                for q, p in zip(q_ids, p_ids)]
        got = [e.ids for e in model.tokenizer.encode_pairs([q for q, _ in everything], [p for _, p in everything], qml, ml)]
        mismatched += sum(w != g for w, g in zip(want, got))
    checks = gate(family.name, "tokens", "*", {"mismatched_pairs": mismatched})

    # 2. scores, at max_length and at a short max_length that truncates most pairs
    log(f"running FlagEmbedding {family.reference_api} (fp32, CPU) and the bundle on {len(everything)} pairs")
    with quiet_stderr():
        ref = np.asarray(reference.compute_score(everything, batch_size=32, max_length=n))
        ref_short = np.asarray(reference.compute_score(edge_pairs, max_length=32))
        ref_single = np.asarray(reference.compute_score(edge_pairs, batch_size=1, max_length=n))
    got = np.asarray(model.compute_score(everything))
    got_short = np.asarray(model.compute_score(edge_pairs, max_length=32))
    r, g = np.concatenate([ref, ref_short]), np.concatenate([got, got_short])
    values = {"max_abs": float(np.abs(r - g).max()), "spearman": spearman(r, g),
              "score_spread": spread(r), "max_abs_rel_spread": rel_spread_error(r, g),
              "reference_self_max_abs": float(np.abs(ref_single - ref[len(pairs):]).max())}
    notes = {"score_spread": "max - min of the reference scores",
             "max_abs_rel_spread": f"max |ref - bundle| / max(spread, {SCALE_FLOOR:g})",
             "reference_self_max_abs": "FlagReranker batch 1 vs batch 32"}
    checks += gate(family.name, "score", precision, values, notes)
    golden = {"pairs": edge_pairs, "reference": ref[len(pairs):], "n_texts": len(everything)}
    return checks, golden


# --- the m3 family --------------------------------------------------------------------------------------

def m3_golden_values(model, sample: dict) -> dict:
    return dense_sample_values(sample["reference"], model.encode(sample["texts"])["dense_vecs"])


def _sparse_stats(ref: list[dict], got: list[dict]) -> dict:
    largest = max((float(v) for r in ref for v in r.values()), default=0.0)
    key_mismatch, raw_mismatch, max_abs, overlaps = 0, 0, 0.0, []
    for r, g in zip(ref, got):
        only = set(r) ^ set(g)
        raw_mismatch += len(only)
        key_mismatch += sum(1 for k in only if scaled(float(r.get(k, g.get(k, 0))), largest) > FP32_REL)
        for k in set(r) & set(g):
            max_abs = max(max_abs, abs(float(r[k]) - float(g[k])))
        top_r = {k for k, _ in sorted(r.items(), key=lambda kv: -kv[1])[:10]}
        top_g = {k for k, _ in sorted(g.items(), key=lambda kv: -kv[1])[:10]}
        if top_r:
            overlaps.append(len(top_r & top_g) / len(top_r))
    return {"key_mismatch": key_mismatch, "raw_key_mismatch": raw_mismatch, "max_abs": max_abs,
            "largest_weight": largest, "max_abs_rel_max": scaled(max_abs, largest),
            "top10_key_overlap": float(np.mean(overlaps)) if overlaps else 1.0}


def m3_parity(family, bundle_path: Path, precision: str, texts: dict, *, log=print):
    """BGEM3FlagModel vs runtimes.load(bundle): encode (three heads), convert_id_to_token and compute_score."""
    reference = cached_reference(family)
    model = load_for_parity(bundle_path, batch_size=16)
    edge, queries, corpus = texts["edge_cases"], texts["queries"], texts["corpus"]
    everything = edge + queries + corpus[:120]
    n = model.passage_max_length

    mismatched = text_token_mismatches(family, model, everything, n)

    log(f"running FlagEmbedding {family.reference_api} (fp32, CPU) and the bundle on {len(everything)} texts")
    heads = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}
    with quiet_stderr():
        ref = reference.encode(everything, batch_size=32, max_length=n, **heads)
        ref_short = reference.encode(edge, max_length=16, **heads)
        ref_single = reference.encode(edge, batch_size=1, max_length=n, return_dense=True)["dense_vecs"]
    got = model.encode(everything, max_length=n, **heads)
    got_short = model.encode(edge, max_length=16, **heads)
    decode_ref = reference.convert_id_to_token(ref["lexical_weights"][:40])  # the same dicts on both sides
    decode_got = model.convert_id_to_token(ref["lexical_weights"][:40])
    mismatched_decodes = sum(set(a) != set(b) for a, b in zip(decode_ref, decode_got))
    checks = gate(family.name, "tokens", "*", {"mismatched_texts": mismatched, "mismatched_decodes": mismatched_decodes})

    d_ref = np.concatenate([ref["dense_vecs"], ref_short["dense_vecs"]])
    d_got = np.concatenate([got["dense_vecs"], got_short["dense_vecs"]])
    cos = cosine_rows(d_ref, d_got)
    checks += gate(family.name, "dense", precision, {
        "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "max_abs": float(np.abs(d_ref - d_got).max()),
        "reference_self_max_abs": float(np.abs(ref_single - ref["dense_vecs"][:len(edge)]).max())})

    sparse = _sparse_stats(ref["lexical_weights"] + ref_short["lexical_weights"],
                           got["lexical_weights"] + got_short["lexical_weights"])
    checks += gate(family.name, "sparse", precision, sparse,
                   {"raw_key_mismatch": "ids on one side only, any weight",
                    "key_mismatch": "ids on one side only with a weight above 1e-4 of the largest",
                    "max_abs_rel_max": f"max |ref - bundle| / max(largest weight, {SCALE_FLOOR:g})"})

    c_ref = ref["colbert_vecs"] + ref_short["colbert_vecs"]
    c_got = got["colbert_vecs"] + got_short["colbert_vecs"]
    same = [(a, b) for a, b in zip(c_ref, c_got) if a.shape == b.shape]
    c_cos = np.concatenate([cosine_rows(a, b) for a, b in same if len(a)])
    c_max_abs = float(max(np.abs(a - b).max() for a, b in same if len(a)))
    c_norm = float(max(np.linalg.norm(a, axis=-1).max() for a in c_ref if len(a)))
    checks += gate(family.name, "colbert", precision, {
        "length_mismatch": len(c_ref) - len(same), "max_abs": c_max_abs, "largest_norm": c_norm,
        "max_abs_rel_norm": scaled(c_max_abs, c_norm),
        "cosine_mean": float(c_cos.mean()), "cosine_min": float(c_cos.min())},
        {"max_abs_rel_norm": f"max |ref - bundle| / max(largest vector norm, {SCALE_FLOOR:g})"})

    pairs, edge_pairs = rerank_pairs(texts)
    pairs = pairs[:96] + edge_pairs
    weights = [0.4, 0.2, 0.4]
    with quiet_stderr():
        s_ref = reference.compute_score(pairs, batch_size=16, weights_for_different_modes=weights)
    s_got = model.compute_score(pairs, batch_size=16, weights_for_different_modes=weights)
    # each score kind against its own spread: a sparse score of ~80 must not hide a dense score's error of ~1
    rel = {k: rel_spread_error(s_ref[k], s_got[k]) for k in s_ref}
    worst = max(rel, key=rel.get)
    checks += gate(family.name, "scores", precision, {
        "max_abs": max(float(np.abs(np.asarray(s_ref[k]) - np.asarray(s_got[k])).max()) for k in s_ref),
        "max_abs_rel_spread": rel[worst], "score_spread": spread(s_ref[worst]),
        "spearman": spearman(s_ref["colbert+sparse+dense"], s_got["colbert+sparse+dense"])},
        {"max_abs_rel_spread": f"worst of the {len(rel)} kinds: {worst}",
         "score_spread": f"max - min of the reference {worst} scores"})
    golden = {"texts": list(edge), "reference": ref["dense_vecs"][:len(edge)], "n_texts": len(everything) + len(pairs)}
    return checks, golden
