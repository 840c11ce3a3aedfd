"""The Qwen-based embedders (bge-code-v1: Qwen2, bge-reasoner-embed-qwen3-8b-0923: Qwen3) against FlagEmbedding's own
FlagAutoModel, which picks FlagLLMModel, last-token pooling and each model's query format from the checkpoint's
name: encode_queries with and without an instruction, encode_corpus, both padding sides; an empty text is a clear
error; a Qwen3-8B-wide decoder (2 layers) exports with external data and matches torch (slow)."""
from __future__ import annotations

import gc
import json
import shutil

import numpy as np
import pytest

import runtimes
from bge_export.parity_run import parity_texts, quiet_stderr
from runtimes.errors import InputError

T = parity_texts()
TEXTS = T["queries"][:6] + ["emoji 🙂 and 中文", " ", T["edge_cases"][11], T["corpus"][3]]
CASES = {"tiny-qwen2-code": "<instruct>{}\n<query>{}", "tiny-qwen3-reasoner": "Instruct: {}\nQuery: {}"}


def _auto_reference(path, **options):
    """FlagAutoModel: the class, pooling and query format come from FlagEmbedding's mapping of the folder's name."""
    from FlagEmbedding import FlagAutoModel

    return FlagAutoModel.from_finetuned(str(path), use_fp16=False, devices="cpu", **options)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("instruction", [None, "Given a question, retrieve code that answers it."])
def test_qwen_embedders_match_flagautomodel(bundle, case, instruction):
    res = bundle(case, "ort-cpu")
    path = res.manifest.data["source"]["checkpoint"]
    from FlagEmbedding import FlagLLMModel

    ref = _auto_reference(path, query_instruction_for_retrieval=instruction)
    assert isinstance(ref, FlagLLMModel) and ref.query_instruction_format == CASES[case]
    model = runtimes.load(res.bundle, query_instruction_for_retrieval=instruction)
    assert model.query_instruction_format == CASES[case]  # the bundle's default is FlagEmbedding's mapping
    for side in ("left", "right"):
        ref.tokenizer.padding_side = model.tokenizer.padding_side = side
        with quiet_stderr():
            q, c = ref.encode_queries(TEXTS), ref.encode_corpus(TEXTS, max_length=24)
        np.testing.assert_allclose(model.encode_queries(TEXTS), q, atol=1e-5)
        np.testing.assert_allclose(model.encode_corpus(TEXTS, max_length=24), c, atol=1e-5)


def test_an_empty_text_is_a_clear_error(bundle):
    model = runtimes.load(bundle("tiny-qwen3-reasoner", "ort-cpu").bundle)
    with pytest.raises(InputError, match="text 1 has no tokens"):
        model.encode_corpus(["fine", ""])
    assert model.encode_corpus([" "]).shape == (1, 64)  # a space is a token: only true emptiness is refused
    # FlagLLMModel instead pools a padding token that attends to nothing (one constant vector, whatever the batch)
    # and raises IndexError when every text is empty: what the README says it does
    ref = _auto_reference(bundle("tiny-qwen3-reasoner", "ort-cpu").manifest.data["source"]["checkpoint"])
    with quiet_stderr():
        a, b = ref.encode_corpus(["fine", ""])[1], ref.encode_corpus(["a much longer text than the other", "", "x"])[1]
        np.testing.assert_allclose(a, b, atol=1e-5)
        with pytest.raises(IndexError):
            ref.encode_corpus([""])


def test_an_empty_row_in_a_corpus_names_its_file_and_row(bundle, tmp_path, capsys):
    from bge_export.cli import main

    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(["fine", "also fine", ""])))
    out = tmp_path / "emb"
    rc = main(["embed", str(bundle("tiny-qwen2-code", "ort-cpu").bundle), "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{src} row 3:" in err and "no tokens" in err and "Traceback" not in err, err
    assert not list(out.glob("*.parquet"))


def test_a_hub_snapshot_folder_is_named_after_its_repo(checkpoint_dir, tmp_path):
    """FlagEmbedding keys the query format on the folder name: a hub cache snapshot (models--BAAI--bge-code-v1/
    snapshots/<hash>) must count as bge-code-v1, not as <hash>."""
    from bge_export.compile import prepare
    from bge_export.families.decoder_archs import spec_from_config
    from bge_export.families.qwen_embedder import CODE_FORMAT

    snap = tmp_path / "models--BAAI--bge-code-v1" / "snapshots" / "0123abcd"
    shutil.copytree(checkpoint_dir("tiny-qwen2-code"), snap)
    family, _ = prepare(snap, "onnx")
    assert family.ckpt.name == "bge-code-v1" and family.query_format() == CODE_FORMAT
    # Qwen3Config's head_dim defaults to 128 (not hidden / heads) when config.json leaves it out
    cfg = {"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 16,
           "num_key_value_heads": 8, "intermediate_size": 3072, "vocab_size": 1000}
    assert spec_from_config(cfg, snap).head_dim == 128


def test_qwen_sliding_window_is_refused_by_name(checkpoint_dir, tmp_path, capsys):
    from bge_export.cli import main

    src = checkpoint_dir("tiny-qwen2-code")
    broken = tmp_path / src.name
    shutil.copytree(src, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["use_sliding_window"] = True
    (broken / "config.json").write_text(json.dumps(cfg))
    rc = main(["--model", str(broken), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "use_sliding_window" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_qwen3_8b_wide_decoder_exports_with_external_data(tmp_path, capsys):
    """Qwen3-8B's widths (hidden 4096, 32 heads / 8 KV heads, head_dim 128, intermediate 12288, vocab 151936) with
    2 layers: about 1.0 B parameters, 4.1 GB fp32. The export writes external data and passes its own check
    against torch in ONNX Runtime; the graph tells inputs apart."""
    import time

    from bge_export.compile import prepare
    from bge_export.export.onnx import CHECK_TOLERANCE, example_feeds, export_onnx, ort_runner
    from parity_tests.tiny_checkpoints import tiny_qwen3_reasoner
    from bge_export.parity import cosine_rows

    start = time.perf_counter()
    ckpt = tiny_qwen3_reasoner(tmp_path / "bge-reasoner-embed-qwen3-8b-0923", hidden_size=4096, num_hidden_layers=2,
                               intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                               vocab_size=151936, initializer_range=0.02, seed=43)
    gc.collect()
    family, _ = prepare(ckpt, "onnx")
    assert family.name == "qwen-embedder" and family.spec().qk_norm
    res = export_onnx(family, tmp_path / "onnx", log=lambda *_: None)
    data = res.path.parent / "model.onnx.data"
    assert res.external_data and data.stat().st_size > 4_000_000_000
    assert res.check["max_relative_error"] <= CHECK_TOLERANCE["fp32"]
    run = ort_runner(res.path, family)
    a, b = (run(example_feeds(family, 2, 16, seed=s))[0] for s in (1, 2))
    assert a.shape == (2, 4096) and np.isfinite(a).all()
    assert cosine_rows(a, b).max() < 0.99
    with capsys.disabled():
        print(f"\nQwen3-8B-wide, 2 layers: model.onnx.data {data.stat().st_size / 1e9:.2f} GB, max relative error "
              f"{res.check['max_relative_error']:.2g}, {time.perf_counter() - start:.0f} s in all")
