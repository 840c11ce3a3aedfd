"""Cross-encoder rerankers: bge-reranker-base / -large / -v2-m3 (XLM-R) and BERT cross-encoders.

Reference: FlagEmbedding ``FlagReranker`` (pair building with 'only_second' truncation, optional sigmoid).
Graph: ``score (batch,)``, the single classification logit of each pair.
"""
from __future__ import annotations

from typing import Any

from bge_export.errors import UnsupportedFamilyError
from bge_export.bench.recipe import BenchRecipe
from bge_export.families.base import Family, TensorSpec, register_family
from bge_export.families.encoder import EncoderFamily, check_backbone_checkpoint
from bge_export.parity import SCALE_FLOOR, gate, rel_spread_error, spearman, spread
from bge_export.parity_run import cached_reference, load_for_parity, quiet_stderr, rerank_pairs

ARCHITECTURES = {"bert": "BertForSequenceClassification", "xlm-roberta": "XLMRobertaForSequenceClassification"}


@register_family
class CrossEncoderFamily(Family):
    name = "cross-encoder"
    reference_api = "FlagReranker"
    description = "cross-encoder rerankers: bge-reranker-base, bge-reranker-large, bge-reranker-v2-m3"
    checkpoints = ("BAAI/bge-reranker-base", "BAAI/bge-reranker-large", "BAAI/bge-reranker-v2-m3")
    parity_outputs = ("tokens", "score", "golden")
    # pairs of a query of s/4 tokens and a passage filling the rest: s tokens per pair
    bench_recipe = BenchRecipe(
        inputs=lambda w, b, s: [list(p) for p in zip(w.texts(b, s // 4), w.texts(b, s - s // 4, offset=5))],
        e2e={"e2e": lambda obj, x, b, s: obj.compute_score(x, batch_size=b, max_length=s)},
        engine_feeds=lambda model, x, s: model.feeds_for(
            model.tokenizer.encode_pairs([q for q, _ in x], [p for _, p in x], s * 3 // 4, s)),
        ref_tensors=lambda ref, x, s, w: ref.tokenizer([q for q, _ in x], [p for _, p in x], padding=True,
                                                       truncation="only_second", max_length=s, return_tensors="pt"),
        ref_forward=lambda ref, enc: ref.model(**enc, return_dict=True).logits,
        check="scores",
    )
    summary_columns = (("score", "max_abs"), ("score", "score_spread"), ("score", "max_abs_rel_spread"),
                       ("score", "spearman"), ("score", "reference_self_max_abs"))

    @classmethod
    def matches(cls, ckpt) -> bool:
        mtype = ckpt.config.get("model_type")
        return mtype in ARCHITECTURES and ckpt.config.get("architectures") == [ARCHITECTURES[mtype]]

    def __init__(self, ckpt, **variant_options):
        check_backbone_checkpoint(ckpt)
        labels = len(ckpt.config.get("id2label") or {"0": ""})
        if labels != 1:
            raise UnsupportedFamilyError(f"{ckpt.path} is a sequence classifier with {labels} labels; BGE rerankers "
                                         "have exactly one (a relevance logit)")
        super().__init__(ckpt, **variant_options)

    def make_variant(self, **options: Any) -> dict:
        if options.get("pooling") is not None:
            raise UnsupportedFamilyError("--pooling does not apply to cross-encoders (they score the CLS token)")
        cfg = self.ckpt.config
        return {"architecture": cfg["model_type"],
                "cls_only_last_layer": cfg.get("position_embedding_type", "absolute") == "absolute"}

    # the encoder's data applies unchanged: same backbones, inputs and position limits
    model_info = EncoderFamily.model_info
    max_sequence_length = EncoderFamily.max_sequence_length
    inputs = EncoderFamily.inputs
    uses_token_type_ids = EncoderFamily.uses_token_type_ids
    flops = EncoderFamily.flops

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("score", "float32", ("batch",))]

    def runtime_defaults(self) -> dict:
        return {"max_length": min(512, self.max_sequence_length())}

    def torch_module(self, *, reference: bool = False):
        from bge_export.export.wrappers import CrossEncoderScorer

        return CrossEncoderScorer.from_checkpoint(
            self.ckpt.path, cls_only_last_layer=self.variant["cls_only_last_layer"] and not reference)

    def run_parity(self, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True):
        return cross_encoder_parity(self, bundle_path, precision, texts, log=log)

    @staticmethod
    def golden_values(model, sample: dict) -> dict:
        import numpy as np

        got = np.asarray(model.compute_score([list(p) for p in sample["pairs"]]), dtype=np.float64)
        ref = np.asarray(sample["reference"], dtype=np.float64)
        return {"max_abs": float(np.abs(got - ref).max()), "max_abs_rel_spread": rel_spread_error(ref, got),
                "spearman": spearman(ref, got)}


# --- parity recipe: FlagReranker against the bundle ----------------------------------------------------

def cross_encoder_parity(family, bundle_path, precision: str, texts: dict, *, log=print):
    """FlagReranker vs runtimes.load(bundle).compute_score; returns (checks, golden sample)."""
    import numpy as np

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
