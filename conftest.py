"""Shared pytest setup: offline, quiet third-party libraries, markers that skip with a reason."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

from runtimes._optional import GPU_INSTALL  # noqa: E402


def _has_cuda() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_cuda = _has_cuda()
    for item in items:
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="TensorRT is not installed (pip install 'bge-export[trt]' on an NVIDIA machine)"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="no CUDA provider in onnxruntime (needs an NVIDIA GPU and the GPU build: "
                                                  f"{GPU_INSTALL})"))
