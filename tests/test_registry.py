"""The registries (families, targets, tolerances) hold together, and the code outside a family's module does not
name it. Runs without torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from bge_export.build.targets import TARGETS, targets
from bge_export.families import FAMILIES
from bge_export.parity import TOLERANCES
from parity_tests.tiny_checkpoints import TEST_CASES

ROOT = Path(__file__).resolve().parents[1]


def test_every_family_target_has_a_case_and_tolerance_rows():
    cases = [c.name for cs in TEST_CASES.values() for c in cs]
    assert len(cases) == len(set(cases)), "two families declare a test case of the same name"
    assert set(TEST_CASES) == set(FAMILIES), "parity_tests/tiny_checkpoints.py TEST_CASES is keyed by family name"
    for name, fam in FAMILIES.items():
        assert TEST_CASES[name], f"family {name} has no test case in parity_tests/tiny_checkpoints.py"
        for case in TEST_CASES[name]:
            assert set(case.targets) <= set(fam.targets), (case.name, case.targets, fam.targets)
        assert fam.targets, f"no target can build family {name}"
        for target in fam.targets:
            assert target in TARGETS
            # half: fp16 rows (bf16 graphs are checked on a GPU only, against the same fp16 rows)
            precision = {"half": "fp16", "bf16": "fp16"}.get(TARGETS[target].precision, TARGETS[target].precision)
            for output in fam.parity_outputs:
                assert (name, output, precision) in TOLERANCES or (name, output, "*") in TOLERANCES, (name, output)
        for output, _ in fam.summary_columns:
            assert output in fam.parity_outputs, (name, output)


def test_every_target_is_exercised_by_the_parity_suite():
    """Every case runs the CPU targets no case opts into; the others run on the cases that name them. A target with
    a hardware check (TensorRT) runs where its hardware is (parity_tests/test_gpu_engines.py)."""
    opted = {t for cs in TEST_CASES.values() for c in cs for t in c.targets}
    every_case = [t for t in targets(device="cpu") if t not in opted]
    assert "ort-cpu" in every_case and "onnx" in every_case
    missing = [t for t, tgt in TARGETS.items() if t not in opted and t not in every_case and not tgt.precheck]
    assert not missing, f"targets no parity case builds: {missing}"


def test_target_groups_follow_the_declarations():
    """Every target is in one device group (a build checks that its backend runs the engine there:
    compile._check_device); the groups and engine kinds select from the declarations."""
    assert all(t.device in ("cpu", "gpu") for t in TARGETS.values())
    assert set(targets(device="cpu")) | set(targets(device="gpu")) == set(TARGETS)
    assert targets(engine_kind="openvino") == tuple(n for n, t in TARGETS.items() if t.engine_kind == "openvino")
    assert "ort-cuda" in targets(device="gpu", engine_kind="onnxruntime") and "ort-cpu" in targets(device="cpu")


def test_targets_say_why_they_cannot_build_a_family():
    refused = [(t, f) for t in TARGETS.values() for f in FAMILIES.values() if t.supports(f)]
    assert refused, "some target (trt-bf16) builds only some families"
    for t, f in refused:
        assert t.name not in f.targets and f.name in t.supports(f)


# The generic code: the build pipeline, the CLI, parity's rules and harness, the benchmark, the test harness.
GENERIC = ["bge_export/compile.py", "bge_export/cli.py", "bge_export/parity.py", "bge_export/parity_run.py",
           "bge_export/reparity.py", "bge_export/reference.py", "bge_export/build", "bge_export/bench",
           "parity_tests/conftest.py", "runtimes/batcher.py", "runtimes/service.py", "runtimes/loader.py",
           "runtimes/backends"]


def _string_constants(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_family_is_named_outside_its_module():
    """A family name or a FlagEmbedding class name as a string in generic code is a family check that belongs
    on the family (its spec, hooks or recipes); the tolerance table is the one allowed place (parity.TOLERANCES)."""
    names = set(FAMILIES) | {api for f in FAMILIES.values() for api in f.reference_apis}
    found = []
    for entry in GENERIC:
        path = ROOT / entry
        for file in ([path] if path.is_file() else sorted(path.rglob("*.py"))):
            for line, value in _string_constants(file):
                if value in names:
                    found.append(f"{file.relative_to(ROOT)}:{line}: {value!r}")
    # the tolerance table is keyed by family: its keys are the allowed mentions
    found = [f for f in found if not f.startswith("bge_export/parity.py:")]
    assert not found, "family names in generic code:\n" + "\n".join(found)


def test_unit_tests_run_without_torch():
    """tests/ is the torch-free part of the suite (parity_tests/ builds checkpoints and bundles)."""
    code = ("import sys\nfor m in ('torch', 'transformers', 'FlagEmbedding', 'onnxscript', 'optimum'):\n"
            "    sys.modules[m] = None\nimport pytest\n"
            "sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', 'tests', '-k', 'not without_torch']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_build_key_is_deterministic_and_covers_every_setting():
    """Equal settings give equal keys; any setting that decides the engine changes the key."""
    import dataclasses

    import pytest

    from bge_export.build.settings import BuildSettings

    base = dict(family="encoder", weights_sha256="ab", variant=(("pooling", '"cls"'),), target="ort-cpu",
                precision="fp32", export_dtype="fp32", options=(), tools=(("onnxruntime", "1.32.0"),),
                host=(("vnni", "True"),))
    key = BuildSettings(**base).key()
    assert BuildSettings(**base).key() == key and len(key) == 64
    changed = {"family": "m3", "weights_sha256": "cd", "variant": (("pooling", '"mean"'),), "target": "ov-cpu",
               "precision": "int8", "export_dtype": "bf16", "options": (("int8_method", '"static"'),),
               "tools": (("onnxruntime", "1.33.0"),), "host": (("vnni", "False"),), "bge_export_version": "9.9"}
    # the engine inputs are declared once, on the fields: this test follows them
    inputs = {f.name for f in dataclasses.fields(BuildSettings) if f.metadata.get("engine_input")}
    assert set(changed) == inputs
    for field, value in changed.items():
        assert BuildSettings(**{**base, field: value}).key() != key, field
    assert BuildSettings(**base).to_json()["variant"] == {"pooling": "cls"}
    assert set(BuildSettings(**base).to_json()) == inputs
    with pytest.raises(TypeError):  # keyword-only: no field order to get wrong
        BuildSettings("encoder", "ab", (), "ort-cpu", "fp32", "fp32")
