"""How a family's parity recipe runs: FlagEmbedding's reference object (its results remembered for the process),
the device a bundle is checked on, the built-in inputs, and the checks every recipe shares (token ids against the
Hugging Face tokenizer, retrieval quality on the labelled set, rerank pairs)."""
from __future__ import annotations

import contextlib
import functools
import json
import os
from importlib import resources

from bge_export import retrieval_set
from runtimes.backends import get_backend_class
from runtimes.backends.base import ParityDevice
from runtimes.bundle import open_bundle
from runtimes.loader import load

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


def parity_device(engine: dict) -> ParityDevice:
    """Where parity runs a bundle's engine here: its backend decides (a CUDA bundle on a machine without CUDA runs
    its graph on ONNX Runtime CPU, and the report says so)."""
    return get_backend_class(engine["kind"]).parity_device(engine)


def unrunnable(precision: str, engine: dict) -> str | None:
    """Why parity cannot run this bundle here, or None."""
    return get_backend_class(engine["kind"]).unrunnable(engine, precision)


def load_for_parity(bundle_path, **options):
    """runtimes.load on the device parity_device picks."""
    device = parity_device(open_bundle(bundle_path, verify=False).manifest.engine)
    return load(bundle_path, verify=False, backend_options=device.backend_options, **options)


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
