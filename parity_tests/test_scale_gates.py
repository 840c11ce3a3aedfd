"""The parity gates hold at real scale: one rule (error over the reference's own scale) for every unnormalised
output, so a correct bundle of a checkpoint with large outputs passes, and a defective one still fails.

The tiny checkpoints' heads multiplied by 100 give raw logits spread over hundreds and sparse weights far above 1:
fp32 rounding alone then moves the outputs by more than the old absolute 1e-4 bounds."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bge_export.cli import main
from bge_export.families import family_from_manifest
from bge_export.parity_run import parity_texts
from parity_tests import checkpoints as ck
from runtimes.manifest import Manifest, describe_files


def scale_heads(ckpt: Path, factor: float) -> Path:
    """Multiply the reranker's classifier or the m3 sparse / ColBERT heads by ``factor`` in place."""
    import torch
    from safetensors.torch import load_file, save_file

    for head in ("sparse_linear.pt", "colbert_linear.pt"):
        if (ckpt / head).is_file():
            state = torch.load(ckpt / head, weights_only=True)
            torch.save({k: v * factor for k, v in state.items()}, ckpt / head)
    weights = ckpt / "model.safetensors"
    state = load_file(weights)
    head_keys = [k for k in state if k.startswith("classifier.")]
    if head_keys:
        save_file({k: v * factor if k in head_keys else v for k, v in state.items()}, weights, metadata={"format": "pt"})
    return ckpt


def _values(bundle: Path) -> dict:
    return {(c["output"], c["metric"]): c["value"] for c in Manifest.read(bundle).parity["checks"]}


def _failed(checks) -> set:
    return {(c.output, c.metric) for c in checks if not c.passed}


def _reparity(bundle: Path):
    """The build's parity on a bundle edited after the build (the manifest's file list updated to match)."""
    m = Manifest.read(bundle)
    files = dict(m.data["files"])
    files.update(describe_files(bundle, [n for n in files if (bundle / n).is_file()]))
    m.with_updates(files=files).write(bundle)
    family = family_from_manifest(m.data)
    checks, _ = family.run_parity(bundle, m.precision, parity_texts(), log=lambda msg: None, gate_retrieval=False)
    return checks


def _perturb_one_initializer(bundle: Path, rel: float = 1e-3) -> str:
    """One defect in the graph: the largest 2-D weight of the first layer scaled by (1 + rel)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "model.onnx"))
    candidates = [t for t in model.graph.initializer if len(t.dims) == 2 and "layer.0." in t.name]
    target = max(candidates or [t for t in model.graph.initializer if len(t.dims) == 2],
                 key=lambda t: int(np.prod(t.dims)) if "embeddings" not in t.name else 0)
    arr = numpy_helper.to_array(target) * np.float32(1 + rel)
    target.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), target.name))
    onnx.save(model, str(bundle / "model.onnx"))
    return target.name


def _drop_a_token(bundle: Path) -> str:
    """One defect in the tokenizer: a frequent piece of the unigram vocabulary renamed so that it never matches."""
    path = bundle / "tokenizer" / "tokenizer.json"
    tok = json.loads(path.read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    i = max(range(5, len(vocab)), key=lambda j: vocab[j][1] if vocab[j][0].startswith("▁") else -1e9)
    dropped = vocab[i][0]
    vocab[i][0] = "\u2060never-matches\u2060"
    path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return dropped


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """CLI builds (ort-cpu, default gates) of the tiny reranker and tiny m3 with their heads x100."""
    root = tmp_path_factory.mktemp("scaled")
    out = {}
    for case, make in (("reranker", lambda d: ck.tiny_xlmr_reranker(d / "bge-reranker-v2-m3")),
                       ("m3", lambda d: ck.tiny_m3(d / "bge-m3"))):
        ckpt = scale_heads(make(root / case), 100.0)
        bundle = root / f"{case}-bundle"
        rc = main(["--model", str(ckpt), "--target", "ort-cpu", "--out", str(bundle), "--quiet"])
        out[case] = (rc, bundle)
    return out


def test_scaled_reranker_passes_through_the_cli(scaled):
    rc, bundle = scaled["reranker"]
    v = _values(bundle)
    assert rc == 0, v
    assert v[("score", "score_spread")] > 100  # raw logits of +-hundreds, as the real rerankers' +-10 and beyond
    assert v[("score", "max_abs")] > 1e-4  # the old absolute gate would have refused this correct bundle
    assert v[("score", "max_abs_rel_spread")] <= 1e-4 and v[("score", "spearman")] > 0.9999


def test_scaled_m3_passes_through_the_cli(scaled):
    rc, bundle = scaled["m3"]
    v = _values(bundle)
    assert rc == 0, v
    assert v[("sparse", "largest_weight")] > 10 and v[("scores", "score_spread")] > 1
    assert max(v[("sparse", "max_abs")], v[("scores", "max_abs")]) > 1e-4  # beyond the old absolute gates
    assert v[("sparse", "key_mismatch")] == 0 and v[("dense", "cosine_min")] >= 0.99999


def _broken(scaled, case: str, tmp_path, defect) -> tuple[str, set]:
    """(what the defect changed, the failing checks) of a copy of the scaled bundle with one defect."""
    broken = tmp_path / "broken"
    shutil.copytree(scaled[case][1], broken)
    what = defect(broken)
    return what, _failed(_reparity(broken))


@pytest.mark.parametrize("case", ["reranker", "m3"])
def test_a_perturbed_initializer_still_fails(scaled, case, tmp_path):
    name, failed = _broken(scaled, case, tmp_path, _perturb_one_initializer)
    want = {"reranker": {("score", "max_abs_rel_spread")},
            "m3": {("sparse", "max_abs_rel_max"), ("scores", "max_abs_rel_spread")}}[case]
    assert want & failed, (name, failed)


@pytest.mark.parametrize("case", ["reranker", "m3"])
def test_a_tokenizer_that_drops_a_token_still_fails(scaled, case, tmp_path):
    piece, failed = _broken(scaled, case, tmp_path, _drop_a_token)
    assert ("tokens", "mismatched_pairs" if case == "reranker" else "mismatched_texts") in failed, (piece, failed)
    assert len(failed) >= 2, (piece, failed)  # the outputs move too, beyond the scaled bounds
