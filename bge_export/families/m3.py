"""BGE-M3: dense, sparse (lexical) and ColBERT heads of one XLM-R backbone (bge-m3).

Reference: FlagEmbedding ``BGEM3FlagModel``. Graph: three raw heads (dense CLS, per-token ReLU weights,
masked ColBERT vectors); normalisation, truncate_dim, lexical dicts, ColBERT trimming and every score stay on
the host (runtimes/m3.py), exactly as FlagEmbedding computes them.
"""
from __future__ import annotations

from typing import Any

from bge_export.errors import CheckpointError, UnsupportedFamilyError
from bge_export.build.targets import CPU_TARGETS, GPU_TARGETS, OV_TARGETS
from bge_export.families.base import Family, TensorSpec, register_family
from bge_export.families.encoder import M3_HEAD_FILES, EncoderFamily, check_backbone_checkpoint


@register_family
class M3Family(Family):
    name = "m3"
    reference_api = "BGEM3FlagModel"
    description = "BGE-M3 with dense, sparse and ColBERT heads in one graph: bge-m3"
    checkpoints = ("BAAI/bge-m3",)
    targets = CPU_TARGETS + OV_TARGETS + GPU_TARGETS
    parity_outputs = ("tokens", "dense", "sparse", "colbert", "scores", "golden")

    @classmethod
    def matches(cls, ckpt) -> bool:
        archs = ckpt.config.get("architectures") or ["XLMRobertaModel"]
        return (ckpt.config.get("model_type") == "xlm-roberta" and archs == ["XLMRobertaModel"]
                and any(ckpt.has(f) for f in M3_HEAD_FILES))

    def __init__(self, ckpt, **variant_options):
        missing = [f for f in M3_HEAD_FILES if not ckpt.has(f)]
        if missing:
            raise CheckpointError(
                f"{ckpt.path} is a bge-m3 checkpoint without {', '.join(missing)}; FlagEmbedding would silently "
                "use randomly initialised heads there. Copy both head files of the original checkpoint next to "
                "the weights")
        check_backbone_checkpoint(ckpt)
        super().__init__(ckpt, **variant_options)

    def make_variant(self, **options: Any) -> dict:
        if options.get("pooling") is not None:
            raise UnsupportedFamilyError("--pooling does not apply to bge-m3 (its dense head is the CLS vector)")
        return {"architecture": "xlm-roberta", "heads": ["dense", "sparse", "colbert"]}

    model_info_base = EncoderFamily.model_info
    max_sequence_length = EncoderFamily.max_sequence_length
    flops = EncoderFamily.flops

    def model_info(self) -> dict:
        from bge_export.export.wrappers import load_head, user_weights

        with user_weights(self.ckpt.path, "the M3 head files"):
            colbert_dim = int(load_head(self.ckpt.path, "colbert")["weight"].shape[0])
        return {**self.model_info_base(), "colbert_dim": colbert_dim}

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, "int64", ("batch", "sequence")) for n in ("input_ids", "attention_mask")]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("dense_vecs", "float32", ("batch", "hidden")),
                TensorSpec("token_weights", "float32", ("batch", "sequence")),
                TensorSpec("colbert_vecs", "float32", ("batch", "sequence", "colbert"))]

    def runtime_defaults(self) -> dict:
        """FlagEmbedding's max_length default (512, not the model's 8192) and the ids its lexical dicts drop."""
        from bge_export.checkpoint import load_tokenizer

        tok = load_tokenizer(self.ckpt)
        unused = sorted({tok.convert_tokens_to_ids(tok.special_tokens_map[t])
                         for t in ("cls_token", "eos_token", "pad_token", "unk_token") if t in tok.special_tokens_map})
        return {"max_length": min(512, self.max_sequence_length()), "unused_token_ids": unused,
                "clean_up_tokenization_spaces": bool(tok.clean_up_tokenization_spaces)}

    def torch_module(self, *, reference: bool = False):
        from bge_export.export.wrappers import M3Heads

        return M3Heads.from_checkpoint(self.ckpt.path)

    def run_parity(self, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True):
        from bge_export.parity import m3_parity

        return m3_parity(self, bundle_path, precision, texts, log=log)

    @staticmethod
    def golden_values(model, sample: dict) -> dict:
        from bge_export.parity import m3_golden_values

        return m3_golden_values(model, sample)
