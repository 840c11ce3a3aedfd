"""FlagEmbedding fp32 CPU reference objects for the decoder families, runnable on transformers 4.57
(reference-semantics §0.5, §0.6).

Every fix is applied to the returned INSTANCE only; FlagEmbedding and transformers modules are never patched:

* layer-wise MiniCPM reranker: ``model.config.use_cache = False`` (4.57's DynamicCache has no ``get_usable_length``);
* lightweight Gemma2 reranker: every Gemma2 decoder layer of the loaded model gets an instance-level ``forward``
  that computes ``(cos, sin)`` from the ``position_ids`` it receives with transformers' ``Gemma2RotaryEmbedding``
  (what 4.46's attention did internally) and passes them as ``position_embeddings``, without a cache. The module
  tree and the state dict are unchanged. With this shim 4.57 is bit-identical to an unmodified 4.46 run;
* LLM / ICL embedders: the attention implementation is pinned (``eager`` keeps Gemma2's attention soft-cap,
  ``sdpa`` drops it silently), so the reference does not depend on the transformers version's default.

The classes are constructed directly, so the checkpoint folder's basename does not matter here (only
``FlagAutoModel`` / ``FlagAutoReranker`` dispatch on it). Heavy imports happen inside the functions.
"""
from __future__ import annotations

import warnings
from typing import Any

#: what the shimmed lightweight reranker runs: FlagEmbedding's CostWise model uses SDPA (no attention soft-cap)
#: under both transformers 4.46 and 4.57
LIGHTWEIGHT_ATTN_IMPLEMENTATION = "sdpa"


def _flag():
    from runtimes._optional import require

    return require("FlagEmbedding")


def _cpu_fp32(kwargs: dict) -> dict:
    return {"use_fp16": False, "devices": "cpu", **kwargs}


def flag(api: str, path, **kwargs: Any):
    """FlagEmbedding's class ``api`` on the checkpoint at ``path``, fp32 on CPU, with the fixes below where that
    class needs them (the others, e.g. ``FlagModel`` or ``FlagLLMReranker``, run on 4.57 as shipped)."""
    fixed = {"LayerWiseFlagLLMReranker": layerwise_reranker, "LightWeightFlagLLMReranker": lightweight_reranker,
             "FlagLLMModel": llm_embedder, "FlagICLModel": icl_embedder}
    if api in fixed:
        return fixed[api](path, **kwargs)
    return getattr(_flag(), api)(str(path), **_cpu_fp32(kwargs))


def layerwise_reranker(path, **kwargs: Any):
    """``LayerWiseFlagLLMReranker`` (bge-reranker-v2-minicpm-layerwise) in fp32 on CPU, with ``use_cache=False``.

    ``use_bf16=False`` loads fp32 weights. The constructor then warns and sets ``use_fp16=True`` (§0.2); the instance
    flag is reset to the requested value so the reference stays fp32 even on a GPU device."""
    flag = _flag()
    options = {"use_bf16": False, **_cpu_fp32(kwargs)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cannot both be `False`.*")
        reranker = flag.LayerWiseFlagLLMReranker(str(path), **options)
    reranker.use_fp16 = bool(options["use_fp16"])
    reranker.model.config.use_cache = False
    return reranker


def lightweight_reranker(path, **kwargs: Any):
    """``LightWeightFlagLLMReranker`` (bge-reranker-v2.5-gemma2-lightweight) in fp32 on CPU, with the
    ``position_embeddings`` shim on each Gemma2 decoder layer and ``use_cache=False``. Attention stays SDPA."""
    flag = _flag()
    options = {"use_bf16": False, **_cpu_fp32(kwargs)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*cannot both be `False`.*")
        reranker = flag.LightWeightFlagLLMReranker(str(path), **options)
    model = reranker.model
    model.config.use_cache = False
    if model.config._attn_implementation != LIGHTWEIGHT_ATTN_IMPLEMENTATION:
        _pin_attention(model, LIGHTWEIGHT_ATTN_IMPLEMENTATION)
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


def _pin_attention(model, attn_implementation: str) -> None:
    """Set the loaded model's attention implementation and check that it took effect."""
    if hasattr(model, "set_attn_implementation"):  # transformers >= 4.56
        model.set_attn_implementation(attn_implementation)
    else:
        model.config._attn_implementation = attn_implementation
    got = model.config._attn_implementation
    if got != attn_implementation:
        from bge_export.errors import BgeExportError

        raise BgeExportError(f"could not set attn_implementation={attn_implementation!r} on "
                             f"{type(model).__name__} (it stays {got!r}): the reference needs transformers 4.57.x, "
                             "as pinned by the [export] extra; reinstall it with pip install -e '.[export]'")


def llm_embedder(path, *, attn_implementation: str | None = "eager", **kwargs: Any):
    """``FlagLLMModel`` (bge-multilingual-gemma2 and other last-token decoder embedders) in fp32 on CPU, with the
    attention implementation pinned: ``"eager"`` applies Gemma2's ``tanh(s/50)*50`` attention soft-cap (what
    transformers 4.46 ran), ``"sdpa"`` silently drops it (4.57's default). ``None`` keeps the loaded default.
    Note the constructor's default query template is ``"Instruct: {}\\nQuery: {}"`` (§0.1)."""
    embedder = _flag().FlagLLMModel(str(path), **_cpu_fp32(kwargs))
    if attn_implementation is not None:
        _pin_attention(embedder.model, attn_implementation)
    return embedder


def icl_embedder(path, *, attn_implementation: str | None = "eager", **kwargs: Any):
    """``FlagICLModel`` (bge-en-icl) in fp32 on CPU, with the attention implementation pinned as in
    :func:`llm_embedder` (Mistral has no soft-cap, so eager and sdpa agree to float rounding)."""
    embedder = _flag().FlagICLModel(str(path), **_cpu_fp32(kwargs))
    if attn_implementation is not None:
        _pin_attention(embedder.model, attn_implementation)
    return embedder
