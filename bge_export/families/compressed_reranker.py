"""Token-compressed Gemma2 reranker (bge-reranker-v2.5-gemma2-lightweight) with cutoff layers, FlagEmbedding's
LightWeightFlagLLMReranker (its reference needs the Gemma2 position-embeddings shim on transformers 4.57,
reference-semantics §0.5, §0.6)."""
from __future__ import annotations

import warnings
from typing import Any

from bge_export import reference
from bge_export.errors import CheckpointError, UnsupportedFamilyError
from bge_export.families.base import TensorSpec, register_family
from bge_export.families.decoders import (GROUP, LIGHTWEIGHT_PROMPT, CutoffRerankerFamily, decoder_reranker_recipe,
                                          parse_layers)
from bge_export.options import Option
from runtimes.llm import effective_compress_layers

#: what the shimmed lightweight reranker runs: FlagEmbedding's CostWise model uses SDPA (no attention soft-cap)
#: under both transformers 4.46 and 4.57
LIGHTWEIGHT_ATTN_IMPLEMENTATION = "sdpa"
COMPRESS_RATIO = Option("compress_ratio", "--compress-ratio", "lightweight reranker: average the passage tokens N at a "
                        "time (default 1: no compression)", metavar="N", type=int, group=GROUP)
COMPRESS_LAYERS = Option("compress_layers", "--compress-layers", "lightweight reranker: compress before these layers "
                         "(default: 8, as FlagEmbedding)", metavar="L1,L2", group=GROUP)


def _lightweight_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.lightweight import last_logit_pool_lightweight

    out = ref.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True,
                    compress_layer=ref.compress_layers, compress_ratio=ref.compress_ratio,
                    query_lengths=enc["query_lengths"], prompt_lengths=enc["prompt_lengths"],
                    cutoff_layers=ref.cutoff_layers)
    return [last_logit_pool_lightweight(logits, mask) for logits, mask in zip(out.logits, out.attention_masks)]


def lightweight_reference(path, **kwargs: Any):
    """``LightWeightFlagLLMReranker`` (bge-reranker-v2.5-gemma2-lightweight) in fp32 on CPU, with the
    ``position_embeddings`` shim on each Gemma2 decoder layer and ``use_cache=False``. Attention stays SDPA."""
    options = {"use_bf16": False, **reference.cpu_fp32(kwargs)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cannot both be `False`.*")
        reranker = reference.flag_class("LightWeightFlagLLMReranker")(str(path), **options)
    model = reranker.model
    model.config.use_cache = False
    if model.config._attn_implementation != LIGHTWEIGHT_ATTN_IMPLEMENTATION:
        reference.pin_attention(model, LIGHTWEIGHT_ATTN_IMPLEMENTATION)
    install_gemma2_position_embeddings_shim(model)
    return reranker


def install_gemma2_position_embeddings_shim(model) -> int:
    """Make the 4.4x-style calls ``layer(h, attention_mask=, position_ids=, past_key_value=, ...)`` that
    FlagEmbedding's CostWise model makes work on transformers >= 4.48, whose ``Gemma2DecoderLayer`` needs
    ``position_embeddings``. Instance-level and idempotent; returns the number of layers shimmed (0 on 4.4x)."""
    import inspect

    from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer, Gemma2RotaryEmbedding

    if "position_embeddings" not in inspect.signature(Gemma2DecoderLayer.forward).parameters:
        return 0  # transformers <= 4.47 computes the rotary embedding inside the attention
    rotary = Gemma2RotaryEmbedding(config=model.config)  # not registered as a submodule: state dict unchanged
    shimmed = 0
    for layer in model.modules():
        if isinstance(layer, Gemma2DecoderLayer) and not getattr(layer, "_bge_position_embeddings_shim", False):
            layer.forward = _shimmed_forward(layer.forward, rotary)
            layer._bge_position_embeddings_shim = True
            shimmed += 1
    return shimmed


def _shimmed_forward(original_forward, rotary):
    import torch

    def forward(hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                output_attentions=False, use_cache=False, cache_position=None, position_embeddings=None,
                past_key_values=None, **kwargs):
        if position_embeddings is None:
            if position_ids is None:
                position_ids = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
            position_embeddings = rotary(hidden_states, position_ids)  # fp32 math, cast to the hidden dtype
        return original_forward(hidden_states, position_embeddings=position_embeddings,
                                attention_mask=attention_mask, position_ids=position_ids, past_key_values=None,
                                output_attentions=output_attentions, use_cache=False,
                                cache_position=cache_position, **kwargs)

    return forward


@register_family
class CompressedRerankerFamily(CutoffRerankerFamily):
    name = "compressed-reranker"
    reference_api = "LightWeightFlagLLMReranker"
    description = ("token-compressed Gemma2 reranker with cutoff layers: bge-reranker-v2.5-gemma2-lightweight")
    checkpoints = ("BAAI/bge-reranker-v2.5-gemma2-lightweight",)
    # its reference forward takes the query and prompt lengths as python lists
    bench_recipe = decoder_reranker_recipe(_lightweight_forward,
                                           ("query_lengths", "prompt_lengths"))
    variant_keys = ("export_dtype", "cutoff_layers", "compress_ratio", "compress_layers")
    options = CutoffRerankerFamily.options + (COMPRESS_RATIO, COMPRESS_LAYERS)
    required_config = ("start_layer", "layer_sep", "layer_wise")
    original = "bge-reranker-v2.5-gemma2-lightweight"
    prompt = LIGHTWEIGHT_PROMPT
    right_padding_only = True

    @classmethod
    def matches(cls, ckpt) -> bool:
        return ckpt.config.get("model_type") == "cost_wise_gemma"

    @staticmethod
    def check_heads(cfg: dict, path) -> None:
        if not cfg["layer_wise"]:
            raise CheckpointError(f"{path}: layer_wise is false; FlagEmbedding's lightweight reranker (and "
                                  "bge-export) need the layer-wise heads")

    def attn_softcap(self) -> bool:
        # FlagEmbedding runs this model's Gemma2 layers with SDPA attention, which has no attention soft-cap
        # (reference-semantics §0.6); the graph follows the reference.
        return False

    def make_variant(self, *, cutoff_layers=None, compress_ratio=None, compress_layers=None, **options: Any) -> dict:
        variant = self.common_variant(options)
        cutoffs = self.cutoff_variant(cutoff_layers)
        ratio = 1 if compress_ratio is None else compress_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
            raise UnsupportedFamilyError(f"--compress-ratio must be a positive int (1 = no compression), got {ratio!r}")
        layers = parse_layers(compress_layers, "--compress-layers") or [8]
        n = int(self.ckpt.config["num_hidden_layers"])
        if any(not 0 <= x <= n for x in layers):
            raise UnsupportedFamilyError(f"--compress-layers {layers} must lie in 0..{n}")
        return {**variant, "cutoff_layers": cutoffs, "compress_ratio": ratio, "compress_layers": sorted(set(layers)),
                "effective_compress_layers": effective_compress_layers(cutoffs, ratio, layers)}

    def inputs(self) -> list[TensorSpec]:
        return super().inputs() + [TensorSpec(n, "int64", ("batch",)) for n in ("query_lengths", "prompt_lengths")]

    def runtime_defaults(self) -> dict:
        v = self.variant
        return {**super().runtime_defaults(), "compress_ratio": v["compress_ratio"], "compress_layers": v["compress_layers"]}

    def reference(self, **kwargs):
        return lightweight_reference(self.ckpt.path, **{**self.reference_options(), **kwargs})

    def head_indices(self) -> list[int]:
        # FlagEmbedding scores the i-th recorded state with head i (not the head of that layer)
        return list(range(len(self.variant["cutoff_layers"])))

    def torch_module(self, *, reference: bool = False):
        from bge_export.export.decoders import CompressedScorer, load_state_dict

        state = load_state_dict(self.ckpt.path)
        v = self.variant
        return CompressedScorer(self.build(self.layers_in_graph(), state), v["cutoff_layers"], self.head_weights(state),
                                v["compress_ratio"], v["compress_layers"],
                                self.ckpt.config.get("final_logit_softcapping")).eval()

    def example_feeds(self, feeds: dict) -> dict:
        """Consistent per-row lengths for the export check: about a third query, a quarter prompt."""
        import numpy as np

        real = feeds["attention_mask"].sum(1)
        q = np.maximum(1, real // 3)
        r = np.maximum(1, real // 4)
        return {**feeds, "query_lengths": q.astype(np.int64), "prompt_lengths": np.minimum(r, real - q).astype(np.int64)}

    def reference_options(self) -> dict:
        v = self.variant
        return {**super().reference_options(), "compress_ratio": v["compress_ratio"],
                "compress_layers": list(v["compress_layers"])}
