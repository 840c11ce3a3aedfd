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
from bge_export.families.base import register_family
from bge_export.families.decoder_archs import register_architecture
from bge_export.families.decoders import DecoderFamily, with_other_padding
from bge_export.families.llm_embedder import (LLMEmbedderFamily, QUERY_INSTRUCTION, embedder_parity,
                                              llm_embedder_reference)
from bge_export.parity import cosine_rows, gate
from bge_export.parity_run import cached_reference, load_for_parity, quiet_stderr

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
