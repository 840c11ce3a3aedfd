"""runtimes.load(m3 bundle) behaves like FlagEmbedding's BGEM3FlagModel."""
from __future__ import annotations

import numpy as np
import pytest

import runtimes
from bge_export.cli import main
from bge_export.parity_run import parity_texts, quiet_stderr

T = parity_texts()
TEXTS = T["queries"][:5] + ["", "🙂 emoji", T["edge_cases"][10]]
ALL = {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True}


@pytest.fixture(scope="module")
def m3(bundle):
    return bundle("tiny-m3", "ort-cpu")


def _flag(m3, **kw):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(m3.manifest.data["source"]["checkpoint"], use_fp16=False, devices="cpu", **kw)


@pytest.mark.parametrize("options", [{}, {"truncate_dim": 8}, {"normalize_embeddings": False}])
def test_encode_matches_bgem3(m3, options):
    ref, model = _flag(m3, **options), runtimes.load(m3.bundle, **options)
    with quiet_stderr():
        want = ref.encode(TEXTS, **ALL)
    got = model.encode(TEXTS, **ALL)
    assert set(got) == {"dense_vecs", "lexical_weights", "colbert_vecs"}
    np.testing.assert_allclose(got["dense_vecs"], want["dense_vecs"], atol=1e-4)
    for a, b in zip(got["lexical_weights"], want["lexical_weights"]):
        assert set(a) == set(b) and all(isinstance(k, str) for k in a)
        np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], atol=1e-4)
    for a, b in zip(got["colbert_vecs"], want["colbert_vecs"]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_defaults_and_single_string(m3):
    ref, model = _flag(m3), runtimes.load(m3.bundle)
    got = model.encode("hello world")
    with quiet_stderr():
        want = ref.encode("hello world")
    assert got["lexical_weights"] is None and got["colbert_vecs"] is None  # dense only by default, as FlagEmbedding
    assert got["dense_vecs"].shape == want["dense_vecs"].shape == (model.hidden_size,)
    one = model.encode("hello world", **ALL)
    assert isinstance(one["lexical_weights"], dict) and one["colbert_vecs"].ndim == 2
    assert model.passage_max_length == 512  # FlagEmbedding's default, not the model's 8192 positions


def test_scores_and_helpers_match_bgem3(m3):
    ref, model = _flag(m3), runtimes.load(m3.bundle)
    with quiet_stderr():
        r = ref.encode(TEXTS, **ALL)
    g = model.encode(TEXTS, **ALL)
    want = ref.compute_lexical_matching_score(r["lexical_weights"][0], r["lexical_weights"][1])
    got = model.compute_lexical_matching_score(g["lexical_weights"][0], g["lexical_weights"][1])
    assert abs(float(want) - float(got)) < 1e-4
    assert model.compute_lexical_matching_score({}, {"5": 1.0}) == 0  # an int 0, as FlagEmbedding
    matrix = model.compute_lexical_matching_score(g["lexical_weights"][:2], g["lexical_weights"][:3])
    assert matrix.shape == (2, 3)
    assert abs(float(ref.colbert_score(r["colbert_vecs"][0], r["colbert_vecs"][1]))
               - model.colbert_score(g["colbert_vecs"][0], g["colbert_vecs"][1])) < 1e-4
    assert ref.convert_id_to_token(r["lexical_weights"][:3]) == model.convert_id_to_token(r["lexical_weights"][:3])


def test_compute_score_matches_bgem3(m3):
    ref, model = _flag(m3), runtimes.load(m3.bundle)
    pairs = [[q, p] for q, p in zip(T["queries"][:7], T["corpus"][::40])] + [["", "x"], ["emoji 🙂", T["corpus"][3]]]
    for kw in ({}, {"weights_for_different_modes": [0.4, 0.2, 0.4]}, {"batch_size": 3, "max_passage_length": 20}):
        with quiet_stderr():
            want = ref.compute_score(pairs, **kw)
        got = model.compute_score(pairs, **kw)
        assert set(got) == set(want) == {"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=1e-4, err_msg=k)
    single = model.compute_score(pairs[0])
    assert all(isinstance(v, float) for v in single.values())


def test_missing_head_file_is_refused(checkpoint_dir, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "bge-m3"
    shutil.copytree(checkpoint_dir("tiny-m3"), ckpt)
    (ckpt / "sparse_linear.pt").unlink()
    assert main(["--model", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "without sparse_linear.pt" in err and "randomly initialised heads" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad, needle", [([], "is empty"), (None, "pair"), ([["q", None]], "must be str"),
                                        ([("q", "p", "x")], "pair of two str"), ([("q",)], "pair of two str"),
                                        ("one string", "got str"), (5, "got int")])
def test_compute_score_bad_pairs(m3, bad, needle):
    with pytest.raises(runtimes.InputError, match=needle):
        runtimes.load(m3.bundle).compute_score(bad)


@pytest.mark.parametrize("bad, needle", [(None, "str or a list of str"), ([], "is empty"),
                                        ([1], r"sentences\[0\] is int"), (["a", None], r"sentences\[1\] is NoneType")])
def test_encode_bad_inputs(m3, bad, needle):
    with pytest.raises(runtimes.InputError, match=needle):
        runtimes.load(m3.bundle).encode(bad, **ALL)


def test_encode_needs_one_head(m3):
    with pytest.raises(runtimes.InputError, match="at least one"):
        runtimes.load(m3.bundle).encode(["x"], return_dense=False)


def test_corrupt_head_file_is_a_one_line_error(checkpoint_dir, tmp_path, capsys):
    import shutil

    ckpt = tmp_path / "bge-m3"
    shutil.copytree(checkpoint_dir("tiny-m3"), ckpt)
    (ckpt / "colbert_linear.pt").write_bytes(b"not a torch file")
    assert main(["--model", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "M3 head files do not load" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
