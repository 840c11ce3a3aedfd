"""The OpenVINO backend's own settings: explicit precision, thread count, compiled-model cache, shape buckets, and
what the bundle records. Parity of the ov-cpu targets is in test_parity.py."""
from __future__ import annotations

import numpy as np
import pytest

import runtimes
from runtimes.errors import InputError

TEXTS = ["short", "a somewhat longer sentence about volcanoes and lava flows", "", "我喜欢喝茶 🍵", "x " * 300,
         "the quick brown fox jumps over the lazy dog " * 3]


@pytest.fixture(scope="module")
def ov_bundle(bundle):
    return bundle("tiny-xlmr", "ov-cpu")


def test_bundle_holds_the_ir_and_its_settings(ov_bundle):
    m = ov_bundle.manifest
    assert m.engine["kind"] == "openvino" and m.engine["file"] == "model.xml"
    assert {"model.xml", "model.bin"} <= set(m.data["files"]) and "model.onnx" not in m.data["files"]
    assert m.engine["inference_precision"] == "fp32" and m.engine["num_threads"] == 0 and m.engine["cache"] is True
    assert m.data["build"]["check_vs_exported"]["max_relative_error"] <= 1e-4


def test_fp32_is_compiled_in_fp32_explicitly(ov_bundle):
    """On a CPU with bf16, OpenVINO's own default precision is bf16: an fp32 bundle must say f32 itself."""
    model = runtimes.load(ov_bundle.bundle)
    assert str(model.backend.property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")


def test_threads_and_cache(ov_bundle, tmp_path):
    cache = tmp_path / "cache"
    model = runtimes.load(ov_bundle.bundle, backend_options={"num_threads": 1, "cache_dir": str(cache)})
    assert int(model.backend.property("INFERENCE_NUM_THREADS")) == 1
    assert any(cache.iterdir()), "the compiled model was not cached"
    first = model.encode(TEXTS)
    again = runtimes.load(ov_bundle.bundle, backend_options={"num_threads": 1, "cache_dir": str(cache)})
    np.testing.assert_allclose(again.encode(TEXTS), first, atol=1e-6, rtol=0)
    nocache = runtimes.load(ov_bundle.bundle, backend_options={"cache_dir": None})
    assert nocache.backend.cache_dir is None


def test_shape_buckets_do_not_change_results(ov_bundle):
    plain = runtimes.load(ov_bundle.bundle, backend_options={"buckets": False}, batch_size=4)
    padded = runtimes.load(ov_bundle.bundle, backend_options={"buckets": True}, batch_size=4)
    np.testing.assert_allclose(padded.encode(TEXTS), plain.encode(TEXTS), atol=2e-6, rtol=0)


@pytest.mark.parametrize("options, needle", [
    ({"bogus": 1}, "unknown OpenVINO backend options ['bogus']"),
    ({"num_threads": -1}, "num_threads must be an int >= 0"),
    ({"num_threads": 1.5}, "num_threads must be an int >= 0"),
    ({"cache_dir": 5}, "cache_dir must be a folder path"),
])
def test_bad_backend_options(ov_bundle, options, needle):
    with pytest.raises(InputError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        runtimes.load(ov_bundle.bundle, backend_options=options)


def test_int8_really_is_int8(bundle):
    """ov-cpu-int8 stores int8 weights (NNCF's compressed constants), and the manifest says how."""
    import openvino as ov

    result = bundle("tiny-xlmr", "ov-cpu-int8")
    q = result.manifest.data["build"]["quantization"]
    assert q["method"] == "nncf.compress_weights"
    model = ov.Core().read_model(str(result.bundle / "model.xml"))
    int8 = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"
            and op.get_output_element_type(0).get_type_name() in ("i8", "u8")]
    assert len(int8) >= 2 * result.manifest.data["model"]["num_hidden_layers"] * 4, len(int8)
    assert (result.bundle / "model.bin").stat().st_size < 0.6 * (bundle("tiny-xlmr", "ov-cpu").bundle / "model.bin").stat().st_size


def test_static_int8_method_is_recorded_and_quantizes_activations(bundle, checkpoint_dir, exported, tmp_path):
    """--ov-int8 static: FakeQuantize on activations, the FFN down-projections (one per layer) kept float, and the
    embeddings still those of the same model (its accuracy on real weights is in the README)."""
    import openvino as ov

    from bge_export.compile import compile_bundle

    result = compile_bundle(checkpoint_dir("tiny-bert"), "ov-cpu-int8", tmp_path / "b",
                            exported=exported("tiny-bert"), build_options={"int8_method": "static"},
                            parity=False, log=lambda m: None, quiet=True)
    q = result.manifest.data["build"]["quantization"]
    layers = result.manifest.data["model"]["num_hidden_layers"]
    assert q["method"] == "nncf.quantize" and q["kept_float_nodes"] == layers
    ops = [op.get_type_name() for op in ov.Core().read_model(str(result.bundle / "model.xml")).get_ordered_ops()]
    assert ops.count("FakeQuantize") >= 4 * layers, ops.count("FakeQuantize")
    got = runtimes.load(result.bundle).encode(TEXTS)
    want = runtimes.load(bundle("tiny-bert", "ov-cpu").bundle).encode(TEXTS)
    cos = np.sum(got * want, axis=1)
    print("static int8 vs fp32 on tiny-bert, cosine per text:", np.round(cos, 4))
    assert float(cos.mean()) >= 0.8  # 0.93 here (AMD EPYC); a broken graph gives unrelated vectors


def test_inspect_and_lint_on_an_openvino_bundle(ov_bundle, capsys):
    from bge_export.cli import main

    assert main(["inspect", str(ov_bundle.bundle)]) == 0
    out = capsys.readouterr().out
    assert "engine openvino" in out and "inference precision fp32" in out and "model.bin" in out
    assert main(["lint", str(ov_bundle.bundle)]) == 2
    err = capsys.readouterr().err
    assert "OpenVINO IR, not an ONNX graph" in err and "Traceback" not in err
