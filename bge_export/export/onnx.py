"""torch -> ONNX with the dynamo exporter: named dynamic axes, external data above the protobuf limit,
and a check of the saved graph against torch on several batch sizes and lengths (with padded rows)."""
from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bge_export.errors import ExportCheckError, InternalError
from runtimes._optional import require
from runtimes.backends.ort import session_options

OPSET = 18
EXTERNAL_DATA_BYTES = 1_800_000_000  # stay clear of protobuf's 2 GB limit
CHECK_TOLERANCE = {"fp32": 1e-4, "fp16": 3e-2}  # max error relative to max(1, |output|)
CHECK_SHAPES = ((1, 5), (2, 17), (3, 64), (4, 9))  # (batch, sequence); rows after the first are padded


@dataclass
class ExportResult:
    path: Path  # model.onnx
    files: list[str]  # file names in path.parent that belong to the model
    seconds: float
    check: dict = field(default_factory=dict)
    external_data: bool = False
    dtype: str = "fp32"  # the weight dtype of the export (decoders: fp16 / bf16 too)


def example_feeds(family, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random in-vocabulary ids; row i has ``length - i*step`` real tokens, the rest is padding."""
    rng = np.random.default_rng(seed + 1000 * batch + length)
    cfg = family.ckpt.config
    pad = int(cfg.get("pad_token_id") or 0)
    vocab = int(cfg["vocab_size"])
    ids = rng.integers(5, vocab, size=(batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    step = max(1, length // (batch + 1))
    for i in range(1, batch):
        real = max(2, length - i * step)
        ids[i, real:] = pad
        mask[i, real:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    if hasattr(family, "example_feeds"):  # families with extra per-row inputs derive them from the mask
        feeds = family.example_feeds(feeds)
    return {s.name: feeds[s.name] for s in family.inputs()}


def relative_error(ref: np.ndarray, got: np.ndarray, scale: float | None = None) -> float:
    """max |ref - got| over ``scale`` (default: max(1, max |ref|))."""
    scale = max(1.0, float(np.abs(ref).max())) if scale is None else scale
    return float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max() / scale)


def torch_outputs(module, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    torch = require("torch")
    with torch.no_grad():
        out = module(*[torch.from_numpy(v) for v in feeds.values()])
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().numpy() for o in outs]


def ort_runner(onnx_path: Path, family):
    """A function feeds -> list of outputs for ``onnx_path`` on ONNX Runtime's CPU provider."""
    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(onnx_path), session_options(ort), providers=["CPUExecutionProvider"])
    names = [o.name for o in family.outputs()]
    return lambda feeds: sess.run(names, feeds)


def compare_graph(reference, candidate, family, *, tolerance: float, what: str) -> dict:
    """Run ``candidate`` (an ONNX path, run in ONNX Runtime, or a function feeds -> outputs) and ``reference``
    (feeds -> outputs) on CHECK_SHAPES; raise on a mismatch.
    Each output's error is relative to its own scale over all the shapes (max(1, max |reference|)), the rule of
    the parity tolerance table: a reranker logit of -190 that moves by 0.02 on one row is fine, because another
    row's logit reaches -576."""
    run = candidate if callable(candidate) else ort_runner(candidate, family)
    pairs = []
    for b, s in CHECK_SHAPES:
        feeds = example_feeds(family, b, s)
        pairs.append((f"{b}x{s}", reference(feeds), run(feeds)))
    n_out = len(pairs[0][1])
    scales = [max(1.0, max(float(np.abs(ref[i]).max()) for _, ref, _ in pairs)) for i in range(n_out)]
    per_shape = {shape: max(relative_error(ref[i], got[i], scales[i]) for i in range(n_out))
                 for shape, ref, got in pairs}
    worst = max(per_shape.values())
    if not worst <= tolerance:
        raise ExportCheckError(
            f"{what} does not reproduce torch: max relative error {worst:.3g} > {tolerance:g} "
            f"(per batch x length: {per_shape}); this is a bug in bge-export, please report it with `bge-export inspect`"
        )
    return {"max_relative_error": worst, "shapes": list(per_shape), "tolerance": tolerance}


def export_onnx(family, out_dir: Path, *, log=print) -> ExportResult:
    torch = require("torch")
    require("onnx")
    # torch configures its loggers when imported; quiet the exporter's registry notes (e.g. "torchvision is not
    # installed") afterwards so that progress output stays readable
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    start = time.perf_counter()
    module = family.torch_module()
    dtype = family.export_dtype()
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = n_bytes > EXTERNAL_DATA_BYTES
    example = example_feeds(family, 2, 8)
    names = list(example)
    dyn = {s.name: {i: a for i, a in enumerate(s.axes) if a in ("batch", "sequence")} for s in family.inputs()}
    output_names = [o.name for o in family.outputs()]
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), torch.no_grad():
            program = torch.onnx.export(
                module, tuple(torch.from_numpy(v) for v in example.values()), dynamo=True, dynamic_shapes=dyn,
                opset_version=OPSET, input_names=names, output_names=output_names, verbose=False,
            )
            program.save(str(path), external_data=external)
    except Exception as exc:  # the exporter's own errors are bugs on our side, keep the trace
        raise InternalError(f"torch.onnx.export failed for family {family.name}: {exc}\n{captured.getvalue()[-2000:]}") from exc
    onnx = require("onnx")
    onnx.checker.check_model(str(path))  # by path: works above 2 GB
    files = sorted(p.name for p in out_dir.iterdir() if p.name == "model.onnx" or p.name.startswith("model.onnx."))
    seconds = time.perf_counter() - start
    log(f"exported {path.name} ({sum((out_dir / f).stat().st_size for f in files) / 1e6:.1f} MB, opset {OPSET}, "
        f"{'external data, ' if external else ''}{seconds:.1f}s)")
    if dtype == "bf16":  # ONNX Runtime's CPU provider has no bf16 kernels: nothing here can run the graph
        check = {"max_relative_error": None, "shapes": [], "tolerance": None,
                 "skipped": "bf16 graphs do not run on ONNX Runtime CPU; check them on a GPU target"}
        log(f"not checked against torch: {check['skipped']}")
        return ExportResult(path=path, files=files, seconds=seconds, check=check, external_data=external, dtype=dtype)
    if getattr(family, "export_module_is_reference", False):
        reference = module  # our own implementation: the exported module is the computation to check against
    else:  # the unmodified HF computation (no CLS-only rewrite), so the check covers the rewrite too
        del module
        reference = family.torch_module(reference=True)
    check = compare_graph(lambda feeds: torch_outputs(reference, feeds), path, family,
                          tolerance=CHECK_TOLERANCE[dtype], what="the exported ONNX graph")
    log(f"checked ONNX against torch on batch x length {', '.join(check['shapes'])}: "
        f"max relative error {check['max_relative_error']:.2g}")
    return ExportResult(path=path, files=files, seconds=seconds, check=check, external_data=external, dtype=dtype)
