"""Layer-wise MiniCPM reranker (bge-reranker-v2-minicpm-layerwise): one score per cutoff layer, FlagEmbedding's
LayerWiseFlagLLMReranker (its reference needs ``use_cache=False`` on transformers 4.57, reference-semantics §0.5)."""
from __future__ import annotations

import warnings
from typing import Any

from bge_export import reference
from bge_export.errors import CheckpointError
from bge_export.families.base import register_family
from bge_export.families.decoders import CutoffRerankerFamily, decoder_reranker_recipe

def _layerwise_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.layerwise import last_logit_pool_layerwise

    out = ref.model(**enc, output_hidden_states=True, cutoff_layers=ref.cutoff_layers)
    return [last_logit_pool_layerwise(logits, enc["attention_mask"]) for logits in out.logits]


def layerwise_reference(path, **kwargs: Any):
    """``LayerWiseFlagLLMReranker`` (bge-reranker-v2-minicpm-layerwise) in fp32 on CPU, with ``use_cache=False``.

    ``use_bf16=False`` loads fp32 weights. The constructor then warns and sets ``use_fp16=True`` (§0.2); the instance
    flag is reset to the requested value so the reference stays fp32 even on a GPU device."""
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
