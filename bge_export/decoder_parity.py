"""Parity of the decoder families against FlagEmbedding's own classes (fp32, CPU, the §0.5 compatibility fixes
applied to the reference instance by bge_export.reference).

Rerankers: the pair token ids against FlagEmbedding's construction, scores against ``compute_score`` (one column
per cutoff layer), both relative to the reference scores' spread, and the same scores again with the opposite
padding side where the family allows both. Embedders: ``encode_queries`` (with an instruction; ICL also with
examples), ``encode_corpus`` and ``encode`` cosines.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bge_export.parity import (SCALE_FLOOR, cached_reference, cosine_rows, gate, load_for_parity, quiet_stderr,
                               rel_spread_error, rerank_pairs, scaled_error, spearman, spread)

QUERY_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query."
ICL_EXAMPLES = [
    {"instruct": QUERY_INSTRUCTION, "query": "what is a virtual interface",
     "response": "A virtual interface is a software-defined abstraction that mimics a network interface."},
    {"instruct": QUERY_INSTRUCTION, "query": "causes of back pain in female for a week",
     "response": "Back pain in females lasting a week can stem from muscle strain or poor posture."},
]


def score_sample_values(model, sample: dict) -> dict:
    """Reranker scores (one row per cutoff layer) against the bundle's stored reference sample."""
    got = np.asarray(model.compute_score([list(p) for p in sample["pairs"]]), dtype=np.float64)
    ref = np.asarray(sample["reference"], dtype=np.float64)
    return {"max_abs_rel_spread": rel_spread_error(ref, got), "spearman": spearman(ref.ravel(), got.ravel())}


# --- rerankers ----------------------------------------------------------------------------------------------

def reference_pair_ids(family, reference, pairs, query_max_length: int, max_length: int) -> list[list[int]]:
    """FlagEmbedding's pair token ids, built with its own tokenizer and truncation helper."""
    from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

    tok = reference.tokenizer
    prompt_ids = tok(family.prompt, add_special_tokens=False)["input_ids"]
    sep = tok("\n", add_special_tokens=False)["input_ids"]
    add_bos = family.always_bos or (tok.bos_token_id is not None and tok.bos_token_id != tok.pad_token_id)
    out = []
    for q, p in pairs:
        q_ids = tok("A: " + q, add_special_tokens=False, max_length=query_max_length, truncation=True)["input_ids"]
        p_ids = tok("B: " + p, add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
        item = prepare_for_model_compat(tok, ([tok.bos_token_id] if add_bos else []) + q_ids, sep + p_ids,
                                        truncation="only_second", max_length=max_length + len(sep) + len(prompt_ids),
                                        padding=False, return_attention_mask=False, return_token_type_ids=False,
                                        add_special_tokens=False)
        out.append(item["input_ids"] + sep + prompt_ids)
    return out


def reranker_parity(family, bundle_path: Path, precision: str, texts: dict, *, log=print):
    reference = cached_reference(family)  # built with the bundle's cutoff layers and compression
    model = load_for_parity(bundle_path, batch_size=16)
    pairs, edge_pairs = rerank_pairs(texts)
    pairs = pairs[:160]
    everything = pairs + edge_pairs
    n = model.max_length

    mismatched = 0
    for ml in (n, 32):
        want = reference_pair_ids(family, reference, everything, ml * 3 // 4, ml)
        got = model.build_pairs(["A: " + q for q, _ in everything], ["B: " + p for _, p in everything],
                                ml * 3 // 4, ml, None)
        mismatched += sum(w != g.ids for w, g in zip(want, got))
    checks = gate(family.name, "tokens", "*", {"mismatched_pairs": mismatched})

    log(f"running FlagEmbedding {family.reference_api} (fp32, CPU) and the bundle on {len(everything)} pairs")

    def rows(scores, n_pairs):  # one row per cutoff layer: (n_cutoff, N)
        return np.asarray(scores, dtype=np.float64).reshape(-1, n_pairs)

    with quiet_stderr():
        ref = rows(reference.compute_score(everything, batch_size=32, max_length=n), len(everything))
        ref_short = rows(reference.compute_score(edge_pairs, max_length=32), len(edge_pairs))
        ref_single = rows(reference.compute_score(edge_pairs[:8], batch_size=1, max_length=n), 8)
    got = rows(model.compute_score(everything), len(everything))
    got_short = rows(model.compute_score(edge_pairs, max_length=32), len(edge_pairs))
    r, g = np.concatenate([ref, ref_short], axis=1), np.concatenate([got, got_short], axis=1)
    ref_edge = ref[:, len(pairs):]
    values = {"max_abs_rel_spread": rel_spread_error(r, g), "max_abs": float(np.abs(r - g).max()),
              "score_spread": spread(r), "spearman": min(spearman(a, b) for a, b in zip(r, g)),
              "reference_self_max_abs": float(np.abs(ref_single - ref_edge[:, :8]).max())}
    notes = {"score_spread": "max - min of the reference scores",
             "max_abs_rel_spread": f"max |ref - bundle| / max(spread, {SCALE_FLOOR:g})",
             "reference_self_max_abs": f"{family.reference_api} batch 1 vs batch 32"}
    if not family.right_padding_only:
        side = model.tokenizer.padding_side
        model.tokenizer.padding_side = "left" if side == "right" else "right"
        flipped = rows(model.compute_score(everything), len(everything))
        model.tokenizer.padding_side = side
        values["padding_side_max_abs_rel_spread"] = scaled_error(got, flipped, spread(r))
        notes["padding_side_max_abs_rel_spread"] = "the bundle with left vs right padding"
    checks += gate(family.name, "score", precision, values, notes)
    golden = {"pairs": edge_pairs, "reference": ref_edge[0] if len(ref_edge) == 1 else ref_edge,
              "n_texts": len(everything)}
    return checks, golden


# --- embedders ----------------------------------------------------------------------------------------------

def embedder_parity(family, bundle_path: Path, precision: str, texts: dict, *, log=print):
    reference = cached_reference(family, query_instruction_for_retrieval=QUERY_INSTRUCTION)
    model = load_for_parity(bundle_path, batch_size=16, query_instruction_for_retrieval=QUERY_INSTRUCTION)
    edge, queries, corpus = texts["edge_cases"], texts["queries"], texts["corpus"][:120]

    from bge_export.parity import text_token_mismatches

    checks = gate(family.name, "tokens", "*",
                  {"mismatched_texts": text_token_mismatches(family, model, edge + queries + corpus, 512)})
    log(f"running FlagEmbedding {family.reference_api} (fp32, CPU) and the bundle on "
        f"{len(edge) + 2 * len(queries) + len(corpus)} texts")
    with quiet_stderr():
        ref = [reference.encode(edge + corpus, batch_size=32), reference.encode_queries(queries + edge, batch_size=32),
               reference.encode(edge, max_length=16)]
        ref_single = reference.encode(edge[:8], batch_size=1)
    got = [model.encode(edge + corpus), model.encode_queries(queries + edge), model.encode(edge, max_length=16)]
    if family.reference_api == "FlagICLModel":  # the in-context examples prefix, set on both sides
        with quiet_stderr():
            reference.set_examples(ICL_EXAMPLES)
            ref.append(reference.encode_queries(queries + edge, batch_size=32))
        model.set_examples(ICL_EXAMPLES)
        got.append(model.encode_queries(queries + edge))
    r, g = np.concatenate(ref), np.concatenate(got)
    cos = cosine_rows(r, g)
    values = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "max_abs": float(np.abs(r - g).max()),
              "reference_self_max_abs": float(np.abs(ref_single - ref[0][:8]).max())}
    checks += gate(family.name, "dense", precision, values,
                   {"reference_self_max_abs": f"{family.reference_api} batch 1 vs batch 32"})
    golden = {"texts": list(edge), "reference": ref[0][:len(edge)], "n_texts": sum(len(x) for x in ref)}
    return checks, golden
