"""Fixtures: tiny checkpoints and their ONNX exports, built once per session; bundles per (case, target)."""
from __future__ import annotations

import pytest

from bge_export.families import FAMILIES
from parity_tests import tiny_checkpoints

# The checkpoints the suite builds for each family (tiny_checkpoints.TEST_CASES); the harness only reads them.
TEST_CASES = {case.name: case for cases in tiny_checkpoints.TEST_CASES.values() for case in cases}
# case -> builder(tmp folder) -> checkpoint folder
CASES = {name: (lambda d, case=case: case.build(d / case.folder)) for name, case in TEST_CASES.items()}
# case -> export-time variant (cutoff layers, compression) the case is built with
CASE_VARIANTS = {name: dict(case.variant) for name, case in TEST_CASES.items() if case.variant}
# case -> family, as the family declares it
FAMILY_OF_CASE = {case.name: family for family, cases in tiny_checkpoints.TEST_CASES.items() for case in cases}

RESULTS: dict[tuple[str, str], dict] = {}  # (case, target) -> parity report, for the summary table

# cases with trained weights: retrieval statistics (top-10 overlap) are gated only on these
TRAINED = {name for name, case in TEST_CASES.items() if case.trained}


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


SUMMARY_COLUMNS = {name: list(f.summary_columns) for name, f in FAMILIES.items()}  # family -> (output, metric)


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
