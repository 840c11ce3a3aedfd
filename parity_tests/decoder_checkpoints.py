"""Tiny random-weight decoder checkpoints with the real on-disk layouts (reference-semantics §3, §4, §6-§9).

Each builder writes into ``folder`` and returns it. The caller picks the folder and must give it the real repo
name (``bge-reranker-v2-gemma``, ``bge-reranker-v2-minicpm-layerwise``, ``bge-reranker-v2.5-gemma2-lightweight``,
``bge-multilingual-gemma2``, ``bge-en-icl``) because FlagEmbedding dispatches on the basename.

Everything is built offline and deterministically (``torch.manual_seed``). ``initializer_range=0.2``: at the HF
default of 0.02 the outputs barely depend on the input and parity proves nothing (§9.2). The shape keywords
default to the tiny values of the doc; pass larger ones (and any other config field as an extra keyword) to
build a mid-sized model for benchmarks. ``head_dim`` defaults to ``hidden_size // num_attention_heads`` (16 for
the tiny shapes) and ``query_pre_attn_scalar`` to ``head_dim``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from bge_export.parity_run import parity_texts

DECODER_INIT_RANGE = 0.2
SPM_VOCAB_SIZE = 1200

LLM_RERANK_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query "
                     "by providing a prediction of either 'Yes' or 'No'.")
LIGHTWEIGHT_RERANK_PROMPT = "Predict whether passage B contains an answer to query A."

# Text the prompts and templates of the decoder families use, so that the tiny tokenizers learn real pieces for it.
_PROMPT_TEXTS = (
    LLM_RERANK_PROMPT,
    LIGHTWEIGHT_RERANK_PROMPT,
    "Predict whether passages A and B have the same meaning.",
    "Yes", "No", "Yes.", "No.", "Yes\n", "No\n", "A: ", "B: ", "\n", "\n\n",
    "A: what is a bridge?\nB: A bridge connects two banks of a river.\n" + LLM_RERANK_PROMPT,
    "A: how old is tea?\nB: Tea has been drunk for thousands of years.\n" + LIGHTWEIGHT_RERANK_PROMPT,
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
        raise AssertionError(f"tiny tokenizer in {folder} has {got}, expected {expected}")


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


def _vocab_size(folder: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(folder)))


def _add_remote_code(folder: Path, module_files: tuple[str, ...], auto_map: dict) -> None:
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
    cfg = GemmaConfig(vocab_size=vocab_size or _vocab_size(folder), hidden_size=hidden_size,
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
    import torch
    from FlagEmbedding.inference.reranker.decoder_only.models.configuration_minicpm_reranker import (
        LayerWiseMiniCPMConfig,
    )
    from FlagEmbedding.inference.reranker.decoder_only.models.modeling_minicpm_reranker import (
        LayerWiseMiniCPMForCausalLM,
    )

    llama_tokenizer(folder)
    cfg = LayerWiseMiniCPMConfig(
        vocab_size=vocab_size or _vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads or num_attention_heads,
        **{"scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4, "start_layer": start_layer,
           "head_multi": True, "head_type": "simple", "tie_word_embeddings": False, "bos_token_id": 1,
           "eos_token_id": 2, "use_cache": True, "initializer_range": DECODER_INIT_RANGE, **config_overrides})
    # the config constructor switches to flash_attention_2 whenever flash_attn imports (§0.6); build with sdpa
    if getattr(cfg, "_attn_implementation", None) == "flash_attention_2":
        cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    LayerWiseMiniCPMForCausalLM(cfg).eval().save_pretrained(str(folder))
    _add_remote_code(folder, ("configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py"), {
        "AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
        "AutoModel": "modeling_minicpm_reranker.LayerWiseMiniCPMModel",
        "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM",
    })
    return folder


def tiny_gemma2_lightweight(folder: Path, *, seed: int = 23, hidden_size: int = 64, num_hidden_layers: int = 4,
                            intermediate_size: int = 128, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                            head_dim: int | None = None, start_layer: int = 2, layer_sep: int = 1,
                            vocab_size: int | None = None, **config_overrides) -> Path:
    """bge-reranker-v2.5-gemma2-lightweight layout: FlagEmbedding's CostWiseGemmaForCausalLM (Gemma2 blocks + one
    CostWiseHead(H,1) per layer in range(start_layer, N+1, layer_sep)), the two module files, auto_map, and the
    Gemma tokenizer (§8)."""
    import torch
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_config import CostWiseGemmaConfig
    from FlagEmbedding.inference.reranker.decoder_only.models.gemma_model import CostWiseGemmaForCausalLM

    gemma_tokenizer(folder)
    head_dim = head_dim or hidden_size // num_attention_heads
    cfg = CostWiseGemmaConfig(
        vocab_size=vocab_size or _vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, head_dim=head_dim, start_layer=start_layer, layer_sep=layer_sep,
        **{"query_pre_attn_scalar": head_dim, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
           "final_logit_softcapping": 30.0, "layer_wise": True, "pad_token_id": 0, "eos_token_id": 1,
           "bos_token_id": 2, "use_cache": True, "initializer_range": DECODER_INIT_RANGE, **config_overrides})
    torch.manual_seed(seed)
    CostWiseGemmaForCausalLM(cfg).eval().save_pretrained(str(folder))
    _add_remote_code(folder, ("gemma_config.py", "gemma_model.py"), {
        "AutoConfig": "gemma_config.CostWiseGemmaConfig",
        "AutoModel": "gemma_model.CostWiseGemmaModel",
        "AutoModelForCausalLM": "gemma_model.CostWiseGemmaForCausalLM",
    })
    return folder


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
        vocab_size=vocab_size or _vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
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
        vocab_size=vocab_size or _vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        **{"sliding_window": 4096, "bos_token_id": 1, "eos_token_id": 2,
           "initializer_range": DECODER_INIT_RANGE, **config_overrides})
    torch.manual_seed(seed)
    MistralModel(cfg).eval().save_pretrained(str(folder))
    return folder
