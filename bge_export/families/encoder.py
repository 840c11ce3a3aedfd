"""Encoder family: BERT / XLM-R dense embedders (bge-{small,base,large}-{en,zh}[-v1.5], llm-embedder).

Reference: FlagEmbedding ``FlagModel`` (CLS pooling by default, truncate_dim then L2 normalisation on the host).
Graph: ``pooled (batch, hidden)``, the un-normalised pooled vector.
"""
from __future__ import annotations

from typing import Any

from bge_export.errors import CheckpointError, UnsupportedFamilyError
from bge_export.families.base import Family, TensorSpec, register_family
from bge_export.bench.recipe import BenchRecipe
from bge_export.options import Option
from bge_export.parity import cosine_rows, dense_sample_values, gate, topk_overlap
from bge_export.parity_run import (cached_reference, load_for_parity, quiet_stderr, retrieval_quality,
                                   text_token_mismatches)

ARCHITECTURES = {
    "bert": ("BertModel", "BertForMaskedLM", "BertForPreTraining"),
    "xlm-roberta": ("XLMRobertaModel", "XLMRobertaForMaskedLM"),
}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model")
M3_HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")
POOLINGS = ("cls", "mean")
REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                   "max_position_embeddings")


def check_backbone_checkpoint(ckpt) -> None:
    """What every BERT / XLM-R based family needs: the config fields it reads and a tokenizer."""
    missing = [k for k in REQUIRED_CONFIG if k not in ckpt.config]
    if missing:
        raise CheckpointError(f"{ckpt.path}/config.json lacks {missing}; restore it from the original checkpoint")
    if not any(ckpt.has(f) for f in TOKENIZER_FILES):
        raise CheckpointError(f"{ckpt.path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the "
                              "tokenizer files of the original checkpoint next to the weights")


@register_family
class EncoderFamily(Family):
    name = "encoder"
    reference_api = "FlagModel"
    description = "BERT/XLM-R dense embedders: bge-{small,base,large}-{en,zh}[-v1.5], llm-embedder"
    checkpoints = (
        "BAAI/bge-small-en-v1.5", "BAAI/bge-base-en-v1.5", "BAAI/bge-large-en-v1.5",
        "BAAI/bge-small-zh-v1.5", "BAAI/bge-base-zh-v1.5", "BAAI/bge-large-zh-v1.5",
        "BAAI/bge-small-en", "BAAI/bge-base-en", "BAAI/bge-large-en",
        "BAAI/bge-small-zh", "BAAI/bge-base-zh", "BAAI/bge-large-zh", "BAAI/llm-embedder",
    )
    parity_outputs = ("tokens", "dense", "golden")
    options = (Option("pooling", "--pooling", "encoder pooling (default: cls, as FlagModel)", choices=POOLINGS),)
    bench_recipe = BenchRecipe(  # encode(texts); the engine on the reference tokenizer's tensors, CLS row
        inputs=lambda w, b, s: w.texts(b, s),
        e2e={"e2e": lambda obj, x, b, s: obj.encode(x, batch_size=b, max_length=s)},
        engine_feeds=lambda model, x, s: model.feeds_for(model.tokenizer.encode(x, s)),
        ref_tensors=lambda ref, x, s, w: hf_tensors(ref, x, s),
        ref_forward=lambda ref, enc: ref.model(**enc, return_dict=True).last_hidden_state[:, 0],
        check="vectors",
        hf_encoder=True,
    )
    summary_columns = (("dense", "cosine_min"), ("dense", "cosine_mean"), ("dense", "max_abs"),
                       ("dense", "top10_overlap"), ("dense", "recall@10_reference"), ("dense", "recall@10"),
                       ("dense", "mrr_reference"), ("dense", "mrr"), ("dense", "reference_self_max_abs"))

    @classmethod
    def matches(cls, ckpt) -> bool:
        mtype = ckpt.config.get("model_type")
        if mtype not in ARCHITECTURES:
            return False
        archs = ckpt.config.get("architectures") or [ARCHITECTURES[mtype][0]]
        if not all(a in ARCHITECTURES[mtype] for a in archs):
            return False  # e.g. *ForSequenceClassification is a cross-encoder
        return not any(ckpt.has(f) for f in M3_HEAD_FILES)  # those are the bge-m3 layout

    def __init__(self, ckpt, **variant_options):
        check_backbone_checkpoint(ckpt)
        super().__init__(ckpt, **variant_options)

    @classmethod
    def options_from_variant(cls, variant: dict) -> dict:
        return {"pooling": variant["pooling"]}

    def make_variant(self, *, pooling: str | None = None, **options: Any) -> dict:
        if options:
            raise UnsupportedFamilyError(f"the encoder family has no options {sorted(options)}; it takes --pooling")
        pooling = pooling or "cls"
        if pooling not in POOLINGS:
            raise UnsupportedFamilyError(f"--pooling {pooling} is not supported; choose one of {', '.join(POOLINGS)}")
        cfg = self.ckpt.config
        # With CLS pooling only row 0 of the last layer is used: the graph computes keys/values for every
        # token but queries, attention output and FFN for the CLS row only (same math, less work).
        cls_only = pooling == "cls" and cfg.get("position_embedding_type", "absolute") == "absolute" \
            and not cfg.get("is_decoder", False)
        return {"architecture": cfg["model_type"], "pooling": pooling, "cls_only_last_layer": bool(cls_only)}

    # --- data -------------------------------------------------------------------------------------
    def model_info(self) -> dict:
        c = self.ckpt.config
        return {
            "model_type": c["model_type"],
            "hidden_size": int(c["hidden_size"]),
            "num_hidden_layers": int(c["num_hidden_layers"]),
            "num_attention_heads": int(c["num_attention_heads"]),
            "intermediate_size": int(c["intermediate_size"]),
            "vocab_size": int(c["vocab_size"]),
            "max_position_embeddings": int(c["max_position_embeddings"]),
        }

    @property
    def uses_token_type_ids(self) -> bool:
        return self.ckpt.config["model_type"] == "bert"

    def inputs(self) -> list[TensorSpec]:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.uses_token_type_ids else [])
        return [TensorSpec(n, "int64", ("batch", "sequence")) for n in names]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("pooled", "float32", ("batch", "hidden"))]

    @classmethod
    def flops(cls, model_info: dict, batch: int, seq: int, variant: dict | None = None) -> float:
        """Matmuls (QKV, output, FFN) and attention of the encoder. With a CLS-only last layer (the bundle's
        variant) that layer computes keys and values for every token but query, attention, output and FFN for the
        CLS row only: the work the engine does, so that its GFLOP/s compare with a GEMM peak."""
        h, i, layers = model_info["hidden_size"], model_info["intermediate_size"], model_info["num_hidden_layers"]
        per_token_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq * h
        full = float(batch * seq * layers * per_token_layer)
        if not (variant or {}).get("cls_only_last_layer"):
            return full
        last_layer = batch * (seq * 2 * 2 * h * h + per_token_layer - 2 * 2 * h * h)
        return full - batch * seq * per_token_layer + float(last_layer)

    def max_sequence_length(self) -> int:
        c = self.ckpt.config
        if c["model_type"] == "xlm-roberta":  # positions start after the padding index
            return int(c["max_position_embeddings"]) - int(c.get("pad_token_id", 1)) - 1
        return int(c["max_position_embeddings"])

    def runtime_defaults(self) -> dict:
        return {"max_length": min(512, self.max_sequence_length())}

    # --- torch side -------------------------------------------------------------------------------
    def torch_module(self, *, reference: bool = False):
        """The export wrapper; ``reference=True`` gives the unmodified HF computation the graph is checked against."""
        from bge_export.export.wrappers import EncoderPooler

        variant = dict(self.variant, cls_only_last_layer=False) if reference else self.variant
        return EncoderPooler.from_checkpoint(self.ckpt.path, **variant)

    def reference_options(self) -> dict:
        return {"pooling_method": self.variant["pooling"]}

    def run_parity(self, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True):
        return encoder_parity(self, bundle_path, precision, texts, log=log, gate_retrieval=gate_retrieval)

    @staticmethod
    def golden_values(model, sample: dict) -> dict:
        return encoder_golden_values(model, sample)


def hf_tensors(ref, texts, max_length: int):
    """The reference's pre-tokenized tensors of ``texts`` (the bench's engine-only call)."""
    return ref.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


# --- parity recipe: FlagModel against the bundle -------------------------------------------------------

QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


def encoder_parity(family, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True):
    """FlagModel vs runtimes.load(bundle) on edge cases + queries + corpus; returns (checks, golden sample)."""
    import numpy as np

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


def encoder_golden_values(model, sample: dict) -> dict:
    return dense_sample_values(sample["reference"], model.encode(sample["texts"]))
