"""The Qwen-based BGE embedders (bge-code-v1 on Qwen2, bge-reasoner-embed-qwen3-8b-0923 on Qwen3): FlagEmbedding's
FlagLLMModel with last-token pooling, on our own decoder stack with the two backbones registered here.

- Qwen2: biases on the q/k/v projections (not on o_proj). bge-code-v1 ships its own model code
  (``trust_remote_code=True`` in FlagEmbedding's mapping); that code is not public outside the hub, so bge-export
  implements the standard transformers Qwen2 backbone (causal attention, last-token pooling), which is what vLLM's
  own tests run it as (``Qwen2Model``, causal, LAST pooling). The README says so.
- Qwen3: per-head RMSNorm on queries and keys (``q_norm`` / ``k_norm``) before RoPE, an explicit head_dim.
Query formats are FlagEmbedding's (``FlagAutoModel``'s mapping): ``<instruct>{}\\n<query>{}`` for bge-code-v1,
``Instruct: {}\\nQuery: {}`` for the reasoner (and FlagLLMModel's own default for any other Qwen checkpoint).
"""
from __future__ import annotations

from pathlib import Path

from bge_export.errors import CheckpointError
from bge_export.families.base import TestCase, register_family
from bge_export.families.decoder_archs import register_architecture
from bge_export.families.decoders import (DECODER_INIT_RANGE, SPM_VOCAB_SIZE, DecoderFamily, _check_tokenizer,
                                          decoder_tokenizer_corpus, tokenizer_vocab_size, with_other_padding)
from bge_export.families.llm_embedder import LLMEmbedderFamily, embedder_parity, llm_embedder_reference

CODE_FORMAT = "<instruct>{}\n<query>{}"
DEFAULT_FORMAT = "Instruct: {}\nQuery: {}"
QUERY_FORMATS = {"bge-code-v1": CODE_FORMAT, "bge-reasoner-embed-qwen3-8b-0923": DEFAULT_FORMAT}


def _no_sliding_window(cfg: dict, path: Path) -> None:
    if cfg.get("use_sliding_window"):
        raise CheckpointError(f"{path}: use_sliding_window=true (Qwen's per-layer sliding window) is not supported; "
                              "no BGE Qwen release uses it (set it to false if the checkpoint was trained without)")


@register_architecture("qwen2")
def _qwen2(cfg: dict, path: Path, common: dict) -> dict:
    _no_sliding_window(cfg, path)
    return {"qkv_bias": True, "o_bias": False}  # transformers' Qwen2Attention: bias on q, k, v only


@register_architecture("qwen3")
def _qwen3(cfg: dict, path: Path, common: dict) -> dict:
    _no_sliding_window(cfg, path)
    # attention_bias (q, k, v and o) comes from the shared parsing; Qwen3Config's head_dim defaults to 128
    return {"qk_norm": True, "head_dim": int(cfg.get("head_dim") or 128)}


@register_family
class QwenEmbedderFamily(LLMEmbedderFamily):
    name = "qwen-embedder"
    reference_api = "FlagLLMModel"
    description = "Qwen2 / Qwen3 decoder embedders with last-token pooling: bge-code-v1, bge-reasoner-embed-qwen3-8b"
    checkpoints = ("BAAI/bge-code-v1", "BAAI/bge-reasoner-embed-qwen3-8b-0923")
    test_cases = (TestCase("tiny-qwen2-code", lambda d: tiny_qwen2_code(d), "bge-code-v1",
                           targets=("ov-cpu-int8", "ov-cpu-bf16", "onnx-int8", "ort-cuda-fp16")),
                  TestCase("tiny-qwen3-reasoner", lambda d: tiny_qwen3_reasoner(d), "bge-reasoner-embed-qwen3-8b-0923",
                           targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda")))
    parity_outputs = ("tokens", "dense", "corpus", "padding", "golden")
    summary_columns = LLMEmbedderFamily.summary_columns + (("corpus", "cosine_min"), ("padding", "cosine_min"))
    model_types = ("qwen2", "qwen3")
    variant_keys = ("export_dtype", "api")
    reference_apis = ("FlagLLMModel",)
    reference_state_calls = ()
    options = DecoderFamily.options
    APIS = ("FlagLLMModel",)

    def make_variant(self, **options) -> dict:
        return {**self.common_variant(options), "api": "FlagLLMModel"}

    def attn_softcap(self) -> bool:
        return False

    def query_format(self) -> str:
        return QUERY_FORMATS.get(self.ckpt.name, DEFAULT_FORMAT)

    def runtime_defaults(self) -> dict:
        return {"max_length": 512, "query_instruction_format": self.query_format(),
                "clean_up_tokenization_spaces": bool(self.tokenizer().clean_up_tokenization_spaces)}

    def reference_options(self) -> dict:
        return {}

    def reference(self, **kwargs):
        """FlagLLMModel with the query format of FlagEmbedding's own FlagAutoModel mapping for this checkpoint name
        (so parity holds our runtime default to it), transformers' default attention (sdpa)."""
        from FlagEmbedding.inference.embedder.model_mapping import AUTO_EMBEDDER_MAPPING

        mapped = AUTO_EMBEDDER_MAPPING.get(self.ckpt.name)
        fmt = mapped.query_instruction_format if mapped else DEFAULT_FORMAT
        trust = bool(mapped and mapped.trust_remote_code)  # the tiny checkpoints carry no code: stock Qwen loads
        return llm_embedder_reference(self.ckpt.path, attn_implementation=None, query_instruction_format=fmt,
                                      trust_remote_code=trust, **kwargs)

    def parity_examples(self) -> None:
        return None

    def run_parity(self, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True):
        """The llm-embedder recipe (encode, encode_queries with the checkpoint's instruction format, truncation),
        plus encode_corpus and the bundle with the other padding side."""
        import numpy as np

        from bge_export.parity import cosine_rows, gate
        from bge_export.parity_run import cached_reference, load_for_parity, quiet_stderr
        from bge_export.families.llm_embedder import QUERY_INSTRUCTION

        # "" has no tokens with Qwen's tokenizers: FlagLLMModel pools a padding token for it (a constant vector that
        # carries no text), the runtime refuses it (parity_tests/test_qwen_embedder.py); compare on the others
        tok = self.tokenizer()
        texts = {**texts, "edge_cases": [t for t in texts["edge_cases"] if tok(t)["input_ids"]]}
        checks, golden = embedder_parity(self, bundle_path, precision, texts, log=log)
        reference = cached_reference(self, query_instruction_for_retrieval=QUERY_INSTRUCTION)
        model = load_for_parity(bundle_path, batch_size=16, query_instruction_for_retrieval=QUERY_INSTRUCTION)
        corpus = texts["edge_cases"] + texts["corpus"][:40]
        with quiet_stderr():
            ref = reference.encode_corpus(corpus, batch_size=32)
        got = model.encode_corpus(corpus)
        cos = cosine_rows(ref, got)
        checks += gate(self.name, "corpus", precision, {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())},
                       {"cosine_min": f"{self.reference_api}.encode_corpus"})
        flipped = with_other_padding(model, lambda: model.encode_corpus(corpus))
        cos = cosine_rows(got, flipped)
        checks += gate(self.name, "padding", precision,
                       {"cosine_min": float(cos.min()), "max_abs": float(np.abs(got - flipped).max())},
                       {"cosine_min": f"the bundle padded on the {model.tokenizer.padding_side} vs the other side"})
        return checks, golden


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
