"""Checkpoint layouts bge-export must read: safetensors or pytorch_model.bin, checkpoint-* folders."""
from __future__ import annotations

import shutil

import runtimes
from bge_export.checkpoint import resolve_checkpoint
from bge_export.cli import main
from bge_export.families import recognise
from parity_tests import checkpoints as ck


def test_pytorch_bin_layout_exports(tmp_path):
    import torch
    from transformers import BertModel

    src = ck.tiny_bert(tmp_path / "src")
    ckpt = tmp_path / "bge-base-zh"
    BertModel.from_pretrained(str(src)).save_pretrained(str(ckpt), safe_serialization=False)
    for name in ck.BERT_TOKENIZER_FILES:
        shutil.copyfile(src / name, ckpt / name)
    assert (ckpt / "pytorch_model.bin").is_file() and not (ckpt / "model.safetensors").exists()
    out = tmp_path / "b"
    assert main(["--model", str(ckpt), "--target", "onnx", "--out", str(out), "--no-parity", "--quiet"]) == 0
    a = runtimes.load(out).encode(["same weights, other file format"])
    b_out = tmp_path / "b2"
    assert main(["--model", str(src), "--target", "onnx", "--out", str(b_out), "--no-parity", "--quiet"]) == 0
    b = runtimes.load(b_out).encode(["same weights, other file format"])
    assert torch.allclose(torch.from_numpy(a), torch.from_numpy(b), atol=1e-6)


def test_checkpoint_folder_takes_its_parents_name(tmp_path):
    ckpt = ck.tiny_bert(tmp_path / "bge-small-en-v1.5" / "checkpoint-500")
    resolved = resolve_checkpoint(str(ckpt))
    assert resolved.name == "bge-small-en-v1.5" and recognise(resolved).name == "encoder"
