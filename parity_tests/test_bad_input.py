"""Every user mistake: one-line error naming the problem and the fix, non-zero exit, nothing half-written."""
from __future__ import annotations

import json
import shutil

import pytest

import runtimes
from bge_export.cli import main
from parity_tests import checkpoints as ck
from runtimes._optional import available


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return ck.tiny_bert(tmp_path_factory.mktemp("ckpt") / "bge-small-en-v1.5")


@pytest.fixture(scope="module")
def built(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    assert main(["--model", str(tiny_ckpt), "--target", "onnx", "--out", str(out), "--no-parity", "--quiet"]) == 0
    return out


@pytest.fixture
def bundle_copy(built, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    return dst


def _fails(capsys, argv, *needles, code=2):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    lines = [line for line in err.splitlines() if line.startswith("bge-export: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _no_leftovers(folder):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_missing_path(capsys, tmp_path):
    _fails(capsys, ["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "no such file or folder",
           "pass a checkpoint folder")
    assert not (tmp_path / "o").exists()


def test_hub_id_not_in_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _fails(capsys, ["--model", "BAAI/bge-nonexistent", "--out", str(tmp_path / "o")], "not in the local Hugging Face cache",
           "huggingface-cli download BAAI/bge-nonexistent")


def test_hub_id_found_in_cache(tiny_ckpt, tmp_path, monkeypatch):
    from bge_export.checkpoint import resolve_checkpoint

    snap = tmp_path / "hf" / "hub" / "models--BAAI--bge-small-en-v1.5" / "snapshots" / "abc123"
    shutil.copytree(tiny_ckpt, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ckpt = resolve_checkpoint("BAAI/bge-small-en-v1.5")
    assert ckpt.path == snap.resolve() and ckpt.name == "bge-small-en-v1.5"


def test_folder_that_is_not_a_checkpoint(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    _fails(capsys, ["--model", str(tmp_path)], "config.json is missing")


def test_file_instead_of_folder(capsys, tiny_ckpt):
    _fails(capsys, ["--model", str(tiny_ckpt / "config.json")], "is a file", str(tiny_ckpt))


def test_unsupported_architecture_lists_families(capsys, tmp_path):
    ck.not_a_bge_checkpoint(tmp_path / "gpt2")
    _fails(capsys, ["--model", str(tmp_path / "gpt2")], "not a BGE family", "supported families: encoder")


def test_unknown_target(capsys, tiny_ckpt, tmp_path):
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "tensorrt-fp8", "--out", str(tmp_path / "o")],
           "unknown target 'tensorrt-fp8'", "available targets: onnx, ort-cpu, ort-cpu-int8")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed here")
def test_trt_target_without_tensorrt_says_what_works(capsys, tiny_ckpt):
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "trt-fp16"], "needs TensorRT", "bge-export[trt]",
           "--target onnx-fp16")
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "trt-int8"], "--target onnx-int8")
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "trt-fp16", "--trt-max-batch", "0"], "must be >= 1")
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "trt-fp16", "--trt-seq-buckets", "128,4096"],
           "at most 512 tokens")


def test_fp16_target_refused_for_gemma(capsys, tmp_path):
    from parity_tests.tiny_checkpoints import tiny_gemma_reranker

    ckpt = tiny_gemma_reranker(tmp_path / "gemma")
    _fails(capsys, ["--model", str(ckpt), "--target", "onnx-fp16"], "Gemma", "--target trt-bf16",
           "--target onnx --export-dtype bf16")


def test_trt_options_on_a_non_trt_target(capsys, tiny_ckpt):
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "ort-cpu", "--trt-max-batch", "8"], "--trt-max-batch",
           "trt-fp16", "not to --target ort-cpu")
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "ov-cpu", "--ov-int8", "weights"], "--ov-int8",
           "--target ov-cpu-int8 only")
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "trt-fp16", "--trt-seq-buckets", "12,x"],
           "--trt-seq-buckets", "positive integers")


def test_openvino_targets_convert_the_fp32_export(capsys, tmp_path):
    from parity_tests.tiny_checkpoints import tiny_gemma_reranker

    ckpt = tiny_gemma_reranker(tmp_path / "gemma")
    _fails(capsys, ["--model", str(ckpt), "--target", "ov-cpu-bf16", "--export-dtype", "bf16"],
           "drop --export-dtype bf16", "runs it at bf16 itself")


def test_bf16_bundle_on_a_cpu_without_bf16_is_refused(tiny_ckpt, tmp_path):
    """On a CPU without bf16 the build writes the bundle with parity skipped and says why; loading it is refused
    with what to build instead (OpenVINO would silently run fp32). With bf16, parity and the runtime run bf16."""
    from bge_export.compile import compile_bundle
    from runtimes.backends.openvino import openvino_bf16
    from runtimes.errors import IncompatibleBundleError

    result = compile_bundle(tiny_ckpt, "ov-cpu-bf16", tmp_path / "b", log=lambda m: None, quiet=True,
                            gate_retrieval=False)
    assert result.manifest.engine["inference_precision"] == "bf16" and result.manifest.precision == "bf16"
    if openvino_bf16():  # parity ran in bf16 (this tiny random checkpoint misses the half bounds: test_parity)
        report = result.manifest.parity
        assert result.parity_ok is not None and "bf16" in report["device"], result.parity_text
        assert {(c["output"], c["metric"]): c["value"] for c in report["checks"]}[("dense", "cosine_mean")] >= 0.99
        model = runtimes.load(result.bundle)
        assert str(model.backend.property("INFERENCE_PRECISION_HINT")) in ("bf16", "<Type: 'bfloat16'>")
        return
    assert result.parity_ok is None and "no bf16 instructions" in result.parity_text, result.parity_text
    with pytest.raises(IncompatibleBundleError, match="no bf16 instructions.*--target ov-cpu"):
        runtimes.load(result.bundle)


def test_unwritable_out_under_a_file(capsys, tiny_ckpt, tmp_path):
    (tmp_path / "afile").write_text("x")
    _fails(capsys, ["--model", str(tiny_ckpt), "--out", str(tmp_path / "afile" / "bundle")], "afile is a file, not a folder")


def test_unwritable_out_in_readonly_filesystem(capsys, tiny_ckpt):
    _fails(capsys, ["--model", str(tiny_ckpt), "--target", "onnx", "--no-parity", "--out", "/proc/bge-export-test"],
           "cannot write")


def test_out_is_a_foreign_folder(capsys, tiny_ckpt, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    _fails(capsys, ["--model", str(tiny_ckpt), "--out", str(tmp_path / "mine")], "not a bundle")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_existing_bundle_needs_overwrite(capsys, tiny_ckpt, bundle_copy):
    _fails(capsys, ["--model", str(tiny_ckpt), "--out", str(bundle_copy)], "--overwrite")


def test_overwrite_replaces_atomically(tiny_ckpt, bundle_copy):
    before = json.loads((bundle_copy / "manifest.json").read_text())["created"]
    assert main(["--model", str(tiny_ckpt), "--target", "ort-cpu", "--out", str(bundle_copy), "--overwrite",
                 "--no-parity", "--quiet"]) == 0
    after = json.loads((bundle_copy / "manifest.json").read_text())
    assert after["target"] == "ort-cpu" and after["created"] >= before
    assert not _no_leftovers(bundle_copy.parent)


def test_truncated_model_file(capsys, bundle_copy):
    model = bundle_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    _fails(capsys, ["inspect", str(bundle_copy)], "damaged", "model.onnx has", "truncated", "--overwrite")
    with pytest.raises(runtimes.BundleError, match="truncated"):
        runtimes.load(bundle_copy)


def test_same_size_corruption_is_caught_by_sha256(capsys, bundle_copy):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    _fails(capsys, ["inspect", str(bundle_copy)], "sha256")


def test_edited_manifest(capsys, bundle_copy):
    path = bundle_copy / "manifest.json"
    d = json.loads(path.read_text())
    d["precision"] = "int8"
    path.write_text(json.dumps(d))
    _fails(capsys, ["inspect", str(bundle_copy)], "modified after the build")
    with pytest.raises(runtimes.BundleError, match="modified"):
        runtimes.load(bundle_copy)


def test_not_a_bundle(capsys, tmp_path):
    _fails(capsys, ["inspect", str(tmp_path)], "manifest.json is missing")
    _fails(capsys, ["parity", str(tmp_path / "nothing")], "does not exist")


def test_bench_bad_grid(capsys, built):
    _fails(capsys, ["bench", str(built), "--batch-sizes", "a,b"], "--batch-sizes")


@pytest.mark.parametrize("bad, needle", [
    ([1, 2], "sentences[0] is int"),
    (["ok", None], "sentences[1] is NoneType"),
    (None, "must be a str or a list of str"),
    ([], "is empty"),
    (b"bytes", "must be a str or a list of str"),
    ({"a": 1}, "must be a str or a list of str"),
])
def test_encode_rejects_non_strings(built, bad, needle):
    model = runtimes.load(built)
    with pytest.raises(runtimes.InputError) as e:
        model.encode(bad)
    assert needle in str(e.value)


@pytest.mark.parametrize("kwargs, needle", [
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"max_length": 1}, "max_length must be an int in 2..512"),
    ({"max_length": 4096}, "max_length must be an int in 2..512"),
    ({"convert_to_numpy": False}, "numpy"),
])
def test_encode_rejects_bad_options(built, kwargs, needle):
    model = runtimes.load(built)
    with pytest.raises(runtimes.InputError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        model.encode(["a"], **kwargs)


def test_load_rejects_bad_options(built):
    with pytest.raises(runtimes.InputError, match="truncate_dim"):
        runtimes.load(built, truncate_dim=10_000)
    with pytest.raises(runtimes.InputError, match="unexpected keyword argument 'pooling'"):
        runtimes.load(built, pooling="mean")
    # FlagModel's own constructor options that a bundle fixes at build time: a contradicting one is refused with
    # what the bundle runs; inert ones (use_fp16 on a CPU bundle: FlagEmbedding computes fp32 on CPU) warn once
    with pytest.raises(runtimes.InputError, match=r"pooling_method='mean' \(the bundle pools with 'cls'.*this "
                                                  r"bundle runs fp32 on CPU \(target onnx, .*pooling cls\)"):
        runtimes.load(built, use_fp16=True, pooling_method="mean")
    with pytest.warns(UserWarning, match=r"ignoring devices='cpu', use_fp16=True \(FlagEmbedding computes in fp32 "
                                         r"on CPU, from weights it loaded in fp16; .*\): this bundle runs fp32 on "
                                         r"CPU") as record:
        runtimes.load(built, use_fp16=True, devices="cpu", pooling_method="cls")
    assert len(record) == 1
    with pytest.raises(runtimes.InputError, match=r"devices='cuda:0' \(build --target ort-cuda"):
        runtimes.load(built, devices="cuda:0")
    with pytest.raises(runtimes.BundleError, match="str or Path"):
        runtimes.load(42)


def test_overwrite_never_deletes_a_folder_that_merely_has_a_manifest_json(capsys, tiny_ckpt, tmp_path):
    site = tmp_path / "webapp"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "my web app"}')
    (site / "index.html").write_text("<html>")
    _fails(capsys, ["--model", str(tiny_ckpt), "--out", str(site), "--overwrite"], "not a bundle")
    assert (site / "index.html").read_text() == "<html>"


def test_out_cannot_be_the_current_folder(capsys, tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, ["--model", str(tiny_ckpt), "--out", "."], "current folder")
    _fails(capsys, ["--model", str(tiny_ckpt), "--out", "x/.."], "current folder")


def test_bundle_gets_normal_permissions(built):
    """mkdtemp's private 0700 must not leak into the bundle: folders and files follow the umask."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert built.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (built / "model.onnx").stat().st_mode & 0o777 == 0o666 & ~umask


def test_config_missing_fields(capsys, tiny_ckpt, tmp_path):
    ckpt = tmp_path / "c"
    shutil.copytree(tiny_ckpt, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["intermediate_size"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _fails(capsys, ["--model", str(ckpt)], "lacks ['intermediate_size']")


def test_checkpoint_without_tokenizer(capsys, tiny_ckpt, tmp_path):
    ckpt = tmp_path / "c"
    shutil.copytree(tiny_ckpt, ckpt)
    for name in ck.BERT_TOKENIZER_FILES:
        (ckpt / name).unlink()
    _fails(capsys, ["--model", str(ckpt)], "has no tokenizer")


def test_corrupt_weights(capsys, tiny_ckpt, tmp_path):
    ckpt = tmp_path / "c"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    _fails(capsys, ["--model", str(ckpt), "--target", "onnx", "--out", str(tmp_path / "o"), "--no-parity"],
           "weights do not load")
    assert not (tmp_path / "o").exists() and not _no_leftovers(tmp_path)


def test_bad_instruction_format(built):
    for fmt in ("{}", "{0}{2}", 42, "{x}{}"):
        with pytest.raises(runtimes.InputError, match="two '{}' fields"):
            runtimes.load(built, query_instruction_format=fmt)


def test_numpy_string_arrays_are_accepted(built):
    import numpy as np

    model = runtimes.load(built)
    texts = ["alpha", "beta gamma"]
    np.testing.assert_array_equal(model.encode(np.array(texts)), model.encode(texts))
    np.testing.assert_array_equal(model.encode(tuple(texts)), model.encode(texts))
    with pytest.raises(runtimes.InputError):
        model.encode(np.array("alpha"))


def test_concurrent_calls_with_different_max_lengths(built):
    """Truncation lives in per-length tokenizer instances: threads with different max_length do not interfere."""
    from concurrent.futures import ThreadPoolExecutor

    model = runtimes.load(built)
    text = "word " * 300
    want = {n: model.encode(text, max_length=n) for n in (8, 64, 512)}
    with ThreadPoolExecutor(6) as pool:
        jobs = [(n, pool.submit(model.encode, text, max_length=n)) for n in (8, 64, 512) * 8]
        for n, job in jobs:
            assert (job.result() == want[n]).all()


def test_mistyped_command_suggests_the_command(capsys):
    _fails(capsys, ["inpsect", "bundles/x"], "unknown command 'inpsect'", "did you mean 'inspect'?")
    _fails(capsys, ["compile", "--model", "x"], "unknown command 'compile'.", "--model PATH --target TARGET")
