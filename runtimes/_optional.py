"""The one lazy-import facility: heavy modules are imported on first use, and a missing one
raises an error naming the pip extra that installs it."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from runtimes.errors import MissingDependencyError

# module -> (pip extra, what it is needed for)
_EXTRAS = {
    "torch": ("export", "exporting a checkpoint"),
    "transformers": ("export", "reading a checkpoint"),
    "onnx": ("export", "building an engine"),
    "onnxscript": ("export", "graph fusion"),
    "onnx_ir": ("export", "graph fusion"),
    "optimum": ("export", "the optimum comparison in benchmarks"),
    "FlagEmbedding": ("reference", "the FlagEmbedding parity reference"),
    "onnxruntime": ("", "running ONNX Runtime engines"),
    "tokenizers": ("", "tokenizing text"),
    "tensorrt": ("trt", "TensorRT engines"),
    "openvino": ("openvino", "OpenVINO engines (the ov-cpu targets)"),
    "nncf": ("openvino", "int8 quantization for OpenVINO (ov-cpu-int8)"),
    "matplotlib": ("dev", "benchmark plots"),
    "fastapi": ("serve", "the HTTP server (bge-export serve)"),
    "uvicorn": ("serve", "the HTTP server (bge-export serve)"),
    "pydantic": ("serve", "the HTTP server (bge-export serve)"),
    "pyarrow": ("corpus", "reading and writing Parquet (bge-export embed)"),
    "ray": ("ray", "running on a Ray cluster (--ray)"),
}

# ONNX Runtime's CPU and GPU packages install into the same `onnxruntime/` folder, and the runtime depends on the
# CPU one: the GPU package goes in last, over it. [cuda,cudnn] brings the CUDA 13 libraries (cuBLAS via cudnn).
GPU_INSTALL = ("pip install 'bge-export[gpu]' && pip uninstall -y onnxruntime "
               "&& pip install --force-reinstall --no-deps 'onnxruntime-gpu>=1.31'")


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra, purpose = _EXTRAS.get(top, ("", "this feature"))
        pkg = "bge-export" + (f"[{extra}]" if extra else "")
        raise MissingDependencyError(
            f"{top} is needed for {purpose} but is not installed ({exc}); "
            f"install it with: pip install '{pkg}'"
            + ("  (on a CPU-only machine run `pip install torch==2.13.0` first)" if extra == "export" else "")
        ) from None


def available(module: str) -> bool:
    """Whether ``module`` is installed, without importing it (FlagEmbedding would import torch)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
