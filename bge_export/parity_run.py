"""How a family's parity recipe runs: FlagEmbedding's reference object (its results remembered for the process),
the device a bundle is checked on, the built-in inputs, and the checks every recipe shares (token ids against the
Hugging Face tokenizer, retrieval quality on the labelled set, rerank pairs)."""
from __future__ import annotations

import contextlib
import functools
import json
import os
from importlib import resources
from typing import NamedTuple


_REFERENCE_RESULTS: dict[tuple, object] = {}


def _digest(*parts) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(parts, default=repr, ensure_ascii=False).encode()).hexdigest()


class CachedReference:
    """FlagEmbedding's reference object for one parity run. Its pure calls are remembered for the process, keyed
    on the checkpoint's weights, the family's variant, the constructor options, the state-changing calls made so
    far and the arguments (the family declares which calls are pure and which change state), so that parity of several targets of one checkpoint (the test suite,
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
        if name in self._family.reference_calls:
            return functools.partial(self._memo, name)
        if name in self._family.reference_state_calls:
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


# --- inputs and checks every recipe shares ---------------------------------------------------------------

def rerank_pairs(texts: dict) -> tuple[list[list[str]], list[list[str]]]:
    """(pairs, edge pairs): every query with 8 passages spread over the corpus, and each edge case as a query
    and as a passage (empty strings, emoji, CJK, a query longer than 3/4 max_length, a passage beyond max_length)."""
    queries, corpus, edge = texts["queries"], texts["corpus"], texts["edge_cases"]
    pairs = [[q, corpus[(7 * i + 31 * j) % len(corpus)]] for i, q in enumerate(queries) for j in range(8)]
    edge_pairs = [[e, corpus[i % len(corpus)]] for i, e in enumerate(edge)] + [[queries[i % len(queries)], e]
                                                                             for i, e in enumerate(edge)]
    return pairs, edge_pairs


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


_REFERENCE_QUALITY: dict = {}  # (checkpoint, weights, instruction, max_length) -> the reference's (recall@10, MRR)


def retrieval_quality(family, reference, model, max_length: int) -> tuple[dict, dict]:
    """recall@10 and MRR of the reference and of the bundle on the labelled retrieval set (bge_export/retrieval_set.py),
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
    notes = {"recall@10_reference": f"{family.reference_api}, {where}", "recall@10": "the bundle, same set",
             "recall@10_drop": f"{family.reference_api} minus the bundle", "mrr_reference": family.reference_api, "mrr": "the bundle",
             "mrr_drop": f"{family.reference_api} minus the bundle"}
    return values, notes
