"""`import bge_export`, `import runtimes` and `bge-export --help` work without torch, onnxruntime or tensorrt."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK = ("import sys\nfor m in ('torch', 'onnxruntime', 'tensorrt', 'transformers', 'onnx', 'FlagEmbedding', 'openvino', "
         "'nncf'):\n    sys.modules[m] = None\n")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_light_imports_without_heavy_dependencies():
    code = (
        "import bge_export, runtimes, bge_export.cli, bge_export.families, bge_export.build.targets, "
        "bge_export.parity, bge_export.compile, bge_export.checkpoint, runtimes.manifest, runtimes.bundle, "
        "runtimes.service, runtimes.encoder, runtimes.backends, runtimes.options, runtimes.cpu, bge_export.retrieval_set, "
        "runtimes.backends.openvino, bge_export.build.ov\n"
        "from runtimes import FlagModel, FlagReranker, BGEM3FlagModel, FlagLLMReranker, LayerWiseFlagLLMReranker, "
        "LightWeightFlagLLMReranker, FlagLLMModel, FlagICLModel, FlagAutoModel, FlagAutoReranker\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt') if sys.modules.get(m) is not None]\n"
        "assert not heavy, heavy\nprint('ok')"
    )
    r = _run(code)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_help_without_heavy_dependencies():
    r = _run("from bge_export.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n")
    assert r.returncode == 0, r.stderr
    assert "--target" in r.stdout and "ort-cpu-int8" in r.stdout


def test_missing_dependency_names_the_extra():
    r = _run("from runtimes._optional import require\ntry:\n    require('torch')\nexcept Exception as e:\n    print(e)\n")
    assert "pip install 'bge-export[export]'" in r.stdout and "torch==2.13.0" in r.stdout
    r = _run("from runtimes._optional import require\ntry:\n    require('openvino')\nexcept Exception as e:\n    print(e)\n")
    assert "pip install 'bge-export[openvino]'" in r.stdout, r.stdout + r.stderr


def test_runtimes_is_this_project():
    import runtimes

    assert Path(runtimes.__file__).resolve().parent == ROOT / "runtimes"


def test_cli_help_is_generated_from_the_registries(capsys):
    """--help lists every registered target and every option a family or a target declares (the CLI has no
    hand-kept list to fall out of sync)."""
    import pytest

    from bge_export.build.targets import TARGETS, build_options
    from bge_export.cli import main
    from bge_export.families.base import variant_options

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    targets = out[out.index("targets:"):]
    assert all(f"  {name} " in targets for name in TARGETS)
    assert all(opt.flag in out for opt in variant_options() + build_options())


def test_families_command_lists_the_matrix(capsys):
    import json

    from bge_export.cli import main

    assert main(["families", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    fams = {f["family"]: f for f in d["families"]}
    assert fams["encoder"]["targets"][:3] == ["onnx", "ort-cpu", "ort-cpu-int8"]
    assert "trt-int8" in fams["m3"]["targets"] and "trt-bf16" not in fams["encoder"]["targets"]
    assert "trt-bf16" in fams["llm-embedder"]["targets"] and "TensorRT" in d["targets"]["trt-fp16"]
    # the CPU's capabilities and the target a build without --target picks here (bf16 first, else fp32 OpenVINO)
    cpu = d["cpu"]
    assert cpu["cpu"] and {"avx2", "avx512", "vnni", "bf16", "amx", "matrix_flags"} <= set(cpu)
    from bge_export.build.targets import FP32_CPU_DEFAULT

    assert cpu["default_target"] == ("ov-cpu-bf16" if cpu["bf16"] else FP32_CPU_DEFAULT), cpu
    assert all(t in fams[f]["targets"] for f in fams for t in ("ov-cpu", "ov-cpu-bf16", "ov-cpu-int8"))


def test_serve_help_and_error_without_the_serve_extra():
    block = "for m in ('fastapi', 'uvicorn', 'pydantic', 'starlette', 'orjson'):\n    sys.modules[m] = None\n"
    r = _run(block + "from bge_export.cli import main\ntry:\n    main(['serve', '--help'])\nexcept SystemExit as e:\n"
                     "    assert e.code == 0\n")
    assert r.returncode == 0 and "--max-batch-tokens" in r.stdout, r.stderr
    r = _run(block + "import runtimes.server, runtimes.server.engine, runtimes.server.metrics\n"
                     "from bge_export.cli import main\nraise SystemExit(main(['serve', 'some/bundle']))\n")
    assert r.returncode == 2 and "pip install 'bge-export[serve]'" in r.stderr, r.stderr


# --- the import graph of bge_export/ and runtimes/ ------------------------------------------------------------
# numpy is the one third-party module a project module may import at its top; any other (torch, onnxruntime,
# openvino, tokenizers, fastapi, ...) makes the module "heavy": imported inside the functions that need it.
LIGHT_THIRD_PARTY = {"numpy"}
PACKAGES = ("bge_export", "runtimes")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(module: str, is_package: bool, node, modules) -> list[str]:
    """The modules an import statement names (``from pkg import sub`` names pkg.sub where that is a module)."""
    import ast

    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")[: None if is_package else -1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _import_graph():
    """(module -> project modules its top imports, heavy modules, [(file, line, module) of function-level project
    imports]). A top import of a.b.c also runs the packages a and a.b (edges to those the importer is not inside);
    imports under ``if TYPE_CHECKING:`` never run."""
    import ast

    files = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    top: dict[str, set[str]] = {m: set() for m in files}
    heavy, inner = set(), []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"

        def visit(nodes, in_function):
            for node in nodes:
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                    visit(node.orelse, in_function)
                    continue
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    for name in _imported(module, is_package, node, files):
                        root = name.split(".")[0]
                        if root not in PACKAGES:
                            if not in_function and not getattr(node, "level", 0) and root not in LIGHT_THIRD_PARTY \
                                    and root not in sys.stdlib_module_names and root != "__future__":
                                heavy.add(module)
                        elif in_function:
                            inner.append((path.relative_to(ROOT), node.lineno, name))
                        else:
                            parts = name.split(".")
                            top[module].add(name)
                            top[module].update(".".join(parts[:i]) for i in range(1, len(parts))
                                               if not (module + ".").startswith(".".join(parts[:i]) + "."))
                    continue
                inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                visit(ast.iter_child_nodes(node), inside)

        visit(tree.body, False)
    changed = True
    while changed:  # a module that imports a heavy module at its top is heavy too
        changed = False
        for module, deps in top.items():
            if module not in heavy and deps & heavy:
                heavy.add(module)
                changed = True
    return top, heavy, inner


def test_no_import_cycle_between_project_modules():
    """Module-top imports form no cycle: every module can be imported first, by anyone."""
    top, _, _ = _import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(module, path):
        state[module] = 1
        for dep in sorted(top.get(module, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state and dep in top:
                walk(dep, path + [dep])
        state[module] = 2

    for module in sorted(top):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_function_level_project_imports_are_of_heavy_modules_only():
    """A project module is imported inside a function only to put off a heavy library (torch, onnxruntime, fastapi,
    ...) that it imports at its top; every other project import sits at the importer's top, where a reader sees it."""
    top, heavy, inner = _import_graph()
    light = [f"{path}:{line}: {name}" for path, line, name in inner if name not in heavy]
    assert not light, "function-level imports of light project modules (lift them to the module top):\n" + \
        "\n".join(light)
    assert heavy >= {"bge_export.export.wrappers", "bge_export.export.decoders"}, sorted(heavy)
    assert "runtimes" not in heavy and "bge_export" not in heavy and "bge_export.cli" not in heavy
