"""Fixtures: tiny checkpoints and their ONNX exports, built once per session; bundles per (case, target)."""
from __future__ import annotations

import pytest

from parity_tests import checkpoints as ck
from parity_tests import decoder_checkpoints as dk

# case -> builder(tmp folder) -> checkpoint folder
CASES = {
    "minilm-real": lambda d: ck.real_minilm(),
    "tiny-bert": lambda d: ck.tiny_bert(d / "bge-small-en-v1.5"),
    "tiny-xlmr": lambda d: ck.tiny_xlmr(d / "xlmr-base-encoder"),
    # checkpoints of shapes no BGE release has: other sizes, head counts, depths and position limits
    "bert-48h3-l3-pos128": lambda d: ck.tiny_bert(d / "bert-other", hidden=48, layers=3, heads=3, intermediate=96,
                                                   max_positions=128, seed=1),
    "xlmr-64h8-l3": lambda d: ck.tiny_xlmr(d / "xlmr-other", hidden=64, layers=3, heads=8, intermediate=128, seed=2),
    "tiny-reranker-xlmr": lambda d: ck.tiny_xlmr_reranker(d / "bge-reranker-v2-m3"),
    "tiny-reranker-bert": lambda d: ck.tiny_bert_reranker(d / "bert-cross-encoder"),
    "tiny-m3": lambda d: ck.tiny_m3(d / "bge-m3"),
    "tiny-llm-reranker": lambda d: dk.tiny_gemma_reranker(d / "bge-reranker-v2-gemma"),
    "tiny-layerwise": lambda d: dk.tiny_minicpm_layerwise(d / "bge-reranker-v2-minicpm-layerwise"),
    "tiny-lightweight": lambda d: dk.tiny_gemma2_lightweight(d / "bge-reranker-v2.5-gemma2-lightweight"),
    "tiny-gemma2-embedder": lambda d: dk.tiny_gemma2_embedder(d / "bge-multilingual-gemma2"),
    "tiny-icl": lambda d: dk.tiny_mistral_icl(d / "bge-en-icl"),
}
# case -> export-time variant (cutoff layers, compression) the case is built with
CASE_VARIANTS = {
    "tiny-layerwise": {"cutoff_layers": [2, 3, 4]},
    "tiny-lightweight": {"cutoff_layers": [2, 4], "compress_ratio": 2, "compress_layers": [2, 3]},
}
# case -> family, stated (not derived from the case name)
FAMILY_OF_CASE = {"minilm-real": "encoder", "tiny-bert": "encoder", "tiny-xlmr": "encoder",
                  "bert-48h3-l3-pos128": "encoder", "xlmr-64h8-l3": "encoder", "tiny-reranker-xlmr": "cross-encoder",
                  "tiny-reranker-bert": "cross-encoder", "tiny-m3": "m3", "tiny-llm-reranker": "llm-reranker",
                  "tiny-layerwise": "layerwise-reranker", "tiny-lightweight": "compressed-reranker",
                  "tiny-gemma2-embedder": "llm-embedder", "tiny-icl": "llm-embedder"}

RESULTS: dict[tuple[str, str], dict] = {}  # (case, target) -> parity report, for the summary table

# cases with trained weights: retrieval statistics (top-10 overlap) are gated only on these
TRAINED = {"minilm-real"}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    cache = {}

    def get(case: str):
        if case not in cache:
            cache[case] = CASES[case](tmp_path_factory.mktemp(case))
        return cache[case]

    return get


@pytest.fixture(scope="session")
def exported(checkpoint_dir, tmp_path_factory):
    from bge_export.compile import prepare
    from bge_export.export.onnx import export_onnx

    cache = {}

    def get(case: str):
        if case not in cache:
            family, _ = prepare(checkpoint_dir(case), "onnx", **CASE_VARIANTS.get(case, {}))
            cache[case] = export_onnx(family, tmp_path_factory.mktemp(f"{case}-export"), log=lambda m: None)
        return cache[case]

    return get


@pytest.fixture(scope="session")
def bundle(checkpoint_dir, exported, tmp_path_factory):
    """(case, target) -> CompileResult, parity included."""
    from bge_export.compile import compile_bundle

    cache = {}

    def get(case: str, target: str):
        key = (case, target)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{case}-{target}") / "bundle"
            cache[key] = compile_bundle(checkpoint_dir(case), target, out, exported=exported(case),
                                        variant=CASE_VARIANTS.get(case),
                                        log=lambda m: None, quiet=True, gate_retrieval=case in TRAINED)
            RESULTS[key] = cache[key].manifest.parity
        return cache[key]

    return get


SUMMARY_COLUMNS = {  # family -> (output, metric) columns of its summary table
    "encoder": [("dense", "cosine_min"), ("dense", "cosine_mean"), ("dense", "max_abs"), ("dense", "top10_overlap"),
                ("dense", "recall@10_reference"), ("dense", "recall@10"), ("dense", "mrr_reference"), ("dense", "mrr"),
                ("dense", "reference_self_max_abs")],
    "cross-encoder": [("score", "max_abs"), ("score", "score_spread"), ("score", "max_abs_rel_spread"),
                      ("score", "spearman"), ("score", "reference_self_max_abs")],
    "m3": [("dense", "cosine_min"), ("dense", "cosine_mean"), ("sparse", "key_mismatch"), ("sparse", "max_abs"),
           ("sparse", "max_abs_rel_max"), ("sparse", "top10_key_overlap"), ("colbert", "max_abs_rel_norm"),
           ("colbert", "cosine_mean"), ("scores", "max_abs"), ("scores", "max_abs_rel_spread"), ("scores", "spearman")],
    **{f: [("score", "max_abs_rel_spread"), ("score", "max_abs"), ("score", "score_spread"), ("score", "spearman"),
           ("score", "padding_side_max_abs_rel_spread"), ("score", "reference_self_max_abs")]
       for f in ("llm-reranker", "layerwise-reranker", "compressed-reranker")},
    "llm-embedder": [("dense", "cosine_min"), ("dense", "cosine_mean"), ("dense", "max_abs"),
                     ("dense", "reference_self_max_abs")],
}


def pytest_terminal_summary(terminalreporter):
    """Markdown tables of every parity report of this run (the README's parity tables come from here)."""
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("parity summary (vs FlagEmbedding, fp32 CPU)")
    for family, columns in SUMMARY_COLUMNS.items():
        rows = [(k, rep) for k, rep in RESULTS.items() if FAMILY_OF_CASE[k[0]] == family and rep is not None]
        if not rows:
            continue
        tr.write_line("")
        tr.write_line("| checkpoint | target | " + " | ".join(f"{o} {m}" for o, m in columns) + " | gate |")
        tr.write_line("|---|---|" + "---|" * (len(columns) + 1))
        for (case, target), rep in rows:
            v = {(c["output"], c["metric"]): c for c in rep["checks"]}
            cells = []
            for key in columns:
                c = v.get(key)
                cells.append("-" if c is None else f"{c['value']:.6g}" + ("" if c["bound"] is not None else "*"))
            tr.write_line(f"| {case} | {target} | " + " | ".join(cells) + f" | {'pass' if rep['passed'] else 'FAIL'} |")
    tr.write_line("(* reported, not gated)")
