"""BGE-M3: dense, sparse (lexical) and ColBERT heads of one XLM-R backbone (bge-m3).

Reference: FlagEmbedding ``BGEM3FlagModel``. Graph: three raw heads (dense CLS, per-token ReLU weights,
masked ColBERT vectors); normalisation, truncate_dim, lexical dicts, ColBERT trimming and every score stay on
the host (runtimes/m3.py), exactly as FlagEmbedding computes them.
"""
from __future__ import annotations

from typing import Any

from bge_export.checkpoint import load_tokenizer
from bge_export.errors import CheckpointError, UnsupportedFamilyError
from bge_export.families.base import Family, TensorSpec, register_family
from bge_export.bench.recipe import BenchRecipe
from bge_export.families.encoder import M3_HEAD_FILES, EncoderFamily, check_backbone_checkpoint, hf_tensors
from bge_export.parity import (FP32_REL, SCALE_FLOOR, cosine_rows, dense_sample_values, gate, rel_spread_error, scaled,
                               spearman, spread)
from bge_export.parity_run import cached_reference, load_for_parity, quiet_stderr, rerank_pairs, text_token_mismatches

ALL_HEADS = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}


@register_family
class M3Family(Family):
    name = "m3"
    reference_api = "BGEM3FlagModel"
    description = "BGE-M3 with dense, sparse and ColBERT heads in one graph: bge-m3"
    checkpoints = ("BAAI/bge-m3",)
    parity_outputs = ("tokens", "dense", "sparse", "colbert", "scores", "golden")
    reference_calls = Family.reference_calls + ("convert_id_to_token", "compute_lexical_matching_score",
                                                "colbert_score")
    bench_recipe = BenchRecipe(  # all three heads
        inputs=lambda w, b, s: w.texts(b, s),
        e2e={"e2e": lambda obj, x, b, s: obj.encode(x, batch_size=b, max_length=s, **ALL_HEADS)},
        engine_feeds=lambda model, x, s: model.feeds_for(model.tokenizer.encode(x, s)),
        ref_tensors=lambda ref, x, s, w: hf_tensors(ref, x, s),
        ref_forward=lambda ref, enc: ref.model(enc, **ALL_HEADS),
        check="vectors",
        check_value=lambda out: out["dense_vecs"],  # the sanity check compares the dense vectors
    )
    summary_columns = (("dense", "cosine_min"), ("dense", "cosine_mean"), ("sparse", "key_mismatch"),
                       ("sparse", "max_abs"), ("sparse", "max_abs_rel_max"), ("sparse", "top10_key_overlap"),
                       ("colbert", "max_abs_rel_norm"), ("colbert", "cosine_mean"), ("scores", "max_abs"),
                       ("scores", "max_abs_rel_spread"), ("scores", "spearman"))

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
        from bge_export.export.wrappers import load_head, user_weights  # imports torch (reads the head files)

        with user_weights(self.ckpt.path, "the M3 head files"):
            colbert_dim = int(load_head(self.ckpt.path, "colbert")["weight"].shape[0])
        return {**self.model_info_base(), "colbert_dim": colbert_dim}

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, "int64", ("batch", "sequence")) for n in ("input_ids", "attention_mask")]

    def axis_sizes(self, info: dict) -> dict[str, int]:
        return {**super().axis_sizes(info), "colbert": info["colbert_dim"]}

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("dense_vecs", "float32", ("batch", "hidden")),
                TensorSpec("token_weights", "float32", ("batch", "sequence")),
                TensorSpec("colbert_vecs", "float32", ("batch", "sequence", "colbert"))]

    def runtime_defaults(self) -> dict:
        """FlagEmbedding's max_length default (512, not the model's 8192) and the ids its lexical dicts drop."""
        tok = load_tokenizer(self.ckpt)
        unused = sorted({tok.convert_tokens_to_ids(tok.special_tokens_map[t])
                         for t in ("cls_token", "eos_token", "pad_token", "unk_token") if t in tok.special_tokens_map})
        return {"max_length": min(512, self.max_sequence_length()), "unused_token_ids": unused,
                "clean_up_tokenization_spaces": bool(tok.clean_up_tokenization_spaces)}

    def torch_module(self, *, reference: bool = False):
        from bge_export.export.wrappers import M3Heads

        return M3Heads.from_checkpoint(self.ckpt.path)

    def run_parity(self, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True):
        return m3_parity(self, bundle_path, precision, texts, log=log)

    @staticmethod
    def golden_values(model, sample: dict) -> dict:
        return m3_golden_values(model, sample)


# --- parity recipe: BGEM3FlagModel against the bundle, three heads and five scores -----------------------

def m3_golden_values(model, sample: dict) -> dict:
    return dense_sample_values(sample["reference"], model.encode(sample["texts"])["dense_vecs"])


def _sparse_stats(ref: list[dict], got: list[dict]) -> dict:
    import numpy as np

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


def m3_parity(family, bundle_path, precision: str, texts: dict, *, log=print):
    """BGEM3FlagModel vs runtimes.load(bundle): encode (three heads), convert_id_to_token and compute_score."""
    import numpy as np

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
