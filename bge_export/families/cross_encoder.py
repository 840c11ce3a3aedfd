"""Cross-encoder rerankers: bge-reranker-base / -large / -v2-m3 (XLM-R) and BERT cross-encoders.

Reference: FlagEmbedding ``FlagReranker`` (pair building with 'only_second' truncation, optional sigmoid).
Graph: ``score (batch,)``, the single classification logit of each pair.
"""
from __future__ import annotations

from typing import Any

from bge_export.errors import UnsupportedFamilyError
from bge_export.build.targets import CPU_TARGETS, GPU_TARGETS, OV_TARGETS
from bge_export.families.base import Family, TensorSpec, register_family
from bge_export.families.encoder import EncoderFamily, check_backbone_checkpoint

ARCHITECTURES = {"bert": "BertForSequenceClassification", "xlm-roberta": "XLMRobertaForSequenceClassification"}


@register_family
class CrossEncoderFamily(Family):
    name = "cross-encoder"
    reference_api = "FlagReranker"
    description = "cross-encoder rerankers: bge-reranker-base, bge-reranker-large, bge-reranker-v2-m3"
    checkpoints = ("BAAI/bge-reranker-base", "BAAI/bge-reranker-large", "BAAI/bge-reranker-v2-m3")
    targets = CPU_TARGETS + OV_TARGETS + GPU_TARGETS
    parity_outputs = ("tokens", "score", "golden")

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
        from bge_export.parity import cross_encoder_parity

        return cross_encoder_parity(self, bundle_path, precision, texts, log=log)

    @staticmethod
    def golden_values(model, sample: dict) -> dict:
        import numpy as np

        from bge_export.parity import rel_spread_error, spearman

        got = np.asarray(model.compute_score([list(p) for p in sample["pairs"]]), dtype=np.float64)
        ref = np.asarray(sample["reference"], dtype=np.float64)
        return {"max_abs": float(np.abs(got - ref).max()), "max_abs_rel_spread": rel_spread_error(ref, got),
                "spearman": spearman(ref, got)}
