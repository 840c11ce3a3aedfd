"""ONNX Runtime backend (CPU now; CUDA providers when a bundle asks for them)."""
from __future__ import annotations

import numpy as np

from runtimes._optional import require
from runtimes.backends.base import Backend
from runtimes.errors import IncompatibleBundleError, InputError


def session_options(ort, *, intra_op_num_threads: int = 0, allow_spinning: bool = True):
    """The one place ONNX Runtime sessions are configured (runtime, build checks and benchmarks)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(intra_op_num_threads)
    so.log_severity_level = 3
    if not allow_spinning:  # idle worker threads block at once instead of spinning on the cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtBackend(Backend):
    def __init__(self, engine_file, engine, inputs, outputs, *, intra_op_num_threads: int = 0,
                 allow_spinning: bool = True, **options):
        if options:
            raise InputError(f"unknown ONNX Runtime backend options {sorted(options)} "
                             "(supported: intra_op_num_threads, allow_spinning)")
        super().__init__(engine_file, engine, inputs, outputs)
        ort = require("onnxruntime")
        wanted = list(engine.get("providers", ["CPUExecutionProvider"]))
        have = ort.get_available_providers()
        missing = [p for p in wanted if p not in have]
        if missing:
            raise IncompatibleBundleError(
                f"this bundle needs ONNX Runtime providers {missing}, but this onnxruntime has {have}; "
                "install bge-export[gpu] on a CUDA machine or rebuild the bundle with --target ort-cpu"
            )
        so = session_options(ort, intra_op_num_threads=intra_op_num_threads, allow_spinning=allow_spinning)
        self.session = ort.InferenceSession(str(self.engine_file), so, providers=wanted)

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values))
