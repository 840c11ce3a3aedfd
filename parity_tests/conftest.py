"""Fixtures: tiny checkpoints and their ONNX exports, built once per session; bundles per (case, target)."""
from __future__ import annotations

import inspect
import json

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


# --- two workers (pytest-xdist, --dist loadgroup; pyproject's addopts) -------------------------------------------------
# Each worker keeps its own session caches, so the tests that need one checkpoint's bundles run in one worker: a
# test's group is one per module for the modules that start servers or Ray clusters, else its case (the ``case``
# parameter, the one case its ``family`` parameter stands for, or the one case its code names), or the real MiniLM
# for any test that names it (its FlagEmbedding reference is the suite's most expensive step). The rest is spread
# over the workers.
MODULE_GROUPS = {"test_server": "server", "test_server_ray": "ray", "test_server_ray_autoscale": "ray",
                 "test_corpus": "ray"}


def _group(item) -> str | None:
    module = MODULE_GROUPS.get(item.module.__name__.rpartition(".")[2])
    if module is not None:  # one server / one Ray cluster at a time
        return module
    params = getattr(getattr(item, "callspec", None), "params", {})
    if isinstance(params.get("case"), str) and params["case"] in TEST_CASES:
        return params["case"]
    one_case = getattr(item.module, "ONE_CASE_PER_FAMILY", None)
    if one_case and params.get("family") in one_case:
        return one_case[params["family"]]
    try:
        source = inspect.getsource(item.function)
    except (OSError, TypeError):
        return None
    named = [case for case in TEST_CASES if f'"{case}"' in source]
    if "minilm-real" in named or len(named) == 1:
        return "minilm-real" if "minilm-real" in named else named[0]
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = _group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_sessionfinish(session):
    """A worker hands its parity reports to the controller, which prints the summary tables."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["parity_results"] = json.dumps([[c, t, r] for (c, t), r in RESULTS.items()])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for case, target, report in json.loads(getattr(node, "workeroutput", {}).get("parity_results", "[]")):
        RESULTS[(case, target)] = report
