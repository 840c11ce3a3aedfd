"""Layer-wise MiniCPM reranker (bge-reranker-v2-minicpm-layerwise): one score per cutoff layer, FlagEmbedding's
LayerWiseFlagLLMReranker (its reference needs ``use_cache=False`` on transformers 4.57, reference-semantics §0.5)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from bge_export.errors import CheckpointError
from bge_export.families.base import TestCase, register_family
from bge_export.families.decoders import (DECODER_INIT_RANGE, CutoffRerankerFamily, add_remote_code,
                                          tokenizer_vocab_size, decoder_reranker_recipe, llama_tokenizer)

def _layerwise_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.layerwise import last_logit_pool_layerwise

    out = ref.model(**enc, output_hidden_states=True, cutoff_layers=ref.cutoff_layers)
    return [last_logit_pool_layerwise(logits, enc["attention_mask"]) for logits in out.logits]


def layerwise_reference(path, **kwargs: Any):
    """``LayerWiseFlagLLMReranker`` (bge-reranker-v2-minicpm-layerwise) in fp32 on CPU, with ``use_cache=False``.

    ``use_bf16=False`` loads fp32 weights. The constructor then warns and sets ``use_fp16=True`` (§0.2); the instance
    flag is reset to the requested value so the reference stays fp32 even on a GPU device."""
    from bge_export import reference

    options = {"use_bf16": False, **reference.cpu_fp32(kwargs)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cannot both be `False`.*")
        reranker = reference.flag_class("LayerWiseFlagLLMReranker")(str(path), **options)
    reranker.use_fp16 = bool(options["use_fp16"])
    reranker.model.config.use_cache = False
    return reranker


@register_family
class LayerwiseRerankerFamily(CutoffRerankerFamily):
    name = "layerwise-reranker"
    reference_api = "LayerWiseFlagLLMReranker"
    description = "layer-wise MiniCPM reranker, one score per cutoff layer: bge-reranker-v2-minicpm-layerwise"
    checkpoints = ("BAAI/bge-reranker-v2-minicpm-layerwise",)
    bench_recipe = decoder_reranker_recipe(_layerwise_forward)
    test_cases = (TestCase("tiny-layerwise", lambda d: tiny_minicpm_layerwise(d), "bge-reranker-v2-minicpm-layerwise",
                           variant={"cutoff_layers": [2, 3, 4]},
                 targets=("ov-cpu-int8", "ov-cpu-bf16", "ort-cuda-fp16", "onnx-fp16", "onnx-int8")),)
    variant_keys = ("export_dtype", "cutoff_layers")
    required_config = ("start_layer", "scale_emb", "scale_depth", "head_type")
    original = "bge-reranker-v2-minicpm-layerwise"

    @classmethod
    def matches(cls, ckpt) -> bool:
        return ckpt.config.get("model_type") == "minicpm"

    @staticmethod
    def check_heads(cfg: dict, path) -> None:
        if cfg["head_type"] != "simple" or not cfg.get("head_multi", True):
            raise CheckpointError(f"{path}: head_type={cfg['head_type']!r}, head_multi={cfg.get('head_multi')!r}; "
                                  "FlagEmbedding's layer-wise reranker (and bge-export) serve head_type 'simple' with "
                                  "one head per layer")

    def make_variant(self, *, cutoff_layers=None, **options: Any) -> dict:
        return {**self.common_variant(options), "cutoff_layers": self.cutoff_variant(cutoff_layers)}

    def reference(self, **kwargs):
        return layerwise_reference(self.ckpt.path, **{**self.reference_options(), **kwargs})

    def head_indices(self) -> list[int]:
        start = int(self.ckpt.config["start_layer"])  # MiniCPM: the head of layer c is lm_head[c - start_layer]
        return [c - start for c in self.variant["cutoff_layers"]]

    def torch_module(self, *, reference: bool = False):
        from bge_export.export.decoders import LayerwiseScorer, load_state_dict

        state = load_state_dict(self.ckpt.path)
        return LayerwiseScorer(self.build(self.layers_in_graph(), state), self.variant["cutoff_layers"],
                               self.head_weights(state)).eval()


# --- tiny test checkpoint ------------------------------------------------------------------------------------

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
        vocab_size=vocab_size or tokenizer_vocab_size(folder), hidden_size=hidden_size, intermediate_size=intermediate_size,
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
    add_remote_code(folder, ("configuration_minicpm_reranker.py", "modeling_minicpm_reranker.py"), {
        "AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
        "AutoModel": "modeling_minicpm_reranker.LayerWiseMiniCPMModel",
        "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM",
    })
    return folder
