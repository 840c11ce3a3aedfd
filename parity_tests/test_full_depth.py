"""Full depth with the default gates (slow): random weights in the real shapes of bge-reranker-v2-m3 and bge-m3
(XLM-R large: 24 layers, hidden 1024, 16 heads, intermediate 4096, 8194 positions; a small vocabulary), built
with the CLI's `--target ort-cpu` and its full parity against FlagEmbedding.

The heads are scaled to the real models' ranges (reranker logits spread over ~20, sparse weights up to ~5), where
the old absolute gates refused correct bundles. The errors are printed for the closing note / README."""
from __future__ import annotations

import time

import pytest

from bge_export.cli import main
from parity_tests import checkpoints as ck
from parity_tests.test_scale_gates import scale_heads
from runtimes.manifest import Manifest

LARGE = {"hidden": 1024, "layers": 24, "heads": 16, "intermediate": 4096, "initializer_range": 0.02}
SHOWN = {("score", "max_abs"), ("score", "max_abs_rel_spread"), ("score", "score_spread"), ("score", "spearman"),
         ("dense", "cosine_min"), ("dense", "max_abs"), ("sparse", "max_abs"), ("sparse", "largest_weight"),
         ("sparse", "max_abs_rel_max"), ("colbert", "max_abs_rel_norm"), ("scores", "max_abs"),
         ("scores", "max_abs_rel_spread"), ("scores", "score_spread")}


def _head_scale(ckpt, family: str) -> float:
    """The factor that brings this random checkpoint's head outputs to the real model's range."""
    import runtimes
    from bge_export.compile import compile_bundle

    probe = compile_bundle(ckpt, "onnx", ckpt.parent / "probe", parity=False, quiet=True)
    model = runtimes.load(probe.bundle, verify=False)
    texts = ["what is a panda?", "The giant panda is a bear species endemic to China.", "hello", "tax forms 2024"]
    if family == "cross-encoder":
        import numpy as np

        s = np.asarray(model.compute_score([[a, b] for a in texts for b in texts]))
        return 20.0 / max(float(s.max() - s.min()), 1e-6)
    weights = [w for d in model.encode(texts, return_sparse=True, return_dense=False)["lexical_weights"]
               for w in d.values()]
    return 5.0 / max(max(weights, default=0.0), 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family, make", [
    ("cross-encoder", lambda d: ck.tiny_xlmr_reranker(d / "bge-reranker-v2-m3", max_positions=8194, **LARGE)),
    ("m3", lambda d: ck.tiny_m3(d / "bge-m3", max_positions=8194, seed=13, **LARGE)),
])
def test_full_depth_passes_the_default_gates(family, make, tmp_path, capsys):
    start = time.perf_counter()
    ckpt = make(tmp_path)
    ckpt = scale_heads(ckpt, _head_scale(ckpt, family))
    out = tmp_path / "bundle"
    rc = main(["--model", str(ckpt), "--target", "ort-cpu", "--out", str(out), "--quiet"])
    report = Manifest.read(out).parity
    values = {(c["output"], c["metric"]): c["value"] for c in report["checks"]}
    with capsys.disabled():
        print(f"\nfull-depth {family} ({time.perf_counter() - start:.0f}s): "
              + ", ".join(f"{o} {m} {v:.3g}" for (o, m), v in values.items() if (o, m) in SHOWN))
    assert rc == 0 and report["passed"], report
