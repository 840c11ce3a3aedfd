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
