"""The tiny checkpoint builders of the BERT / XLM-R families (parity_tests/tiny_checkpoints.py) under the names the
tests use, plus a checkpoint of an architecture bge-export does not support."""
from __future__ import annotations

import json
from pathlib import Path

from parity_tests.tiny_checkpoints import (BERT_TOKENIZER_FILES, real_minilm, tiny_bert, tiny_bert_reranker, tiny_m3,
                                           tiny_xlmr, tiny_xlmr_reranker, xlmr_tokenizer)

__all__ = ["BERT_TOKENIZER_FILES", "not_a_bge_checkpoint", "real_minilm", "tiny_bert", "tiny_bert_reranker", "tiny_m3",
           "tiny_xlmr", "tiny_xlmr_reranker", "xlmr_tokenizer"]


def not_a_bge_checkpoint(folder: Path) -> Path:
    """A readable HF checkpoint of an architecture bge-export does not support (GPT-2 layout, config only)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    return folder
