"""Decoder architectures: how a checkpoint's config.json becomes the numbers of bge-export's one decoder stack
(bge_export/export/decoders.py). Torch-free, so families can check a checkpoint before anything heavy loads.

The stack is generic: GQA attention with optional projection biases and per-head q/k RMSNorm, RoPE, an optional
sliding window (on every layer or on the even ones), optional attention soft-cap, Gemma's offset norms, embedding
scale and sandwich norms, MiniCPM's residual scale. An architecture is one function from config.json to the fields
that differ from the plain Llama defaults, registered under its ``model_type``s with :func:`register_architecture`.
A family module that brings a new backbone registers it there (families/qwen_embedder.py does); nothing else
changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from bge_export.errors import CheckpointError


@dataclass(frozen=True)
class DecoderSpec:
    arch: str  # the registered architecture: llama | mistral | gemma | gemma2 | minicpm | qwen2 | qwen3 | ...
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    rope_theta: float
    activation: str = "silu"  # silu | gelu_tanh
    norm_offset: bool = False  # Gemma: the RMSNorm weight is stored as (w - 1)
    embed_scale: float = 1.0  # Gemma: sqrt(hidden) in the weight dtype; MiniCPM: scale_emb
    residual_scale: float = 1.0  # MiniCPM: scale_depth / sqrt(layers)
    attn_scale: float = 0.0  # 0: head_dim ** -0.5
    attn_softcap: float | None = None  # Gemma2 with eager attention: tanh(s / cap) * cap on the logits
    sandwich_norms: bool = False  # Gemma2: extra norms after attention and around the MLP
    sliding_window: int | None = None
    sliding_layers: str = "none"  # "all" | "even" (Gemma2: layers 0, 2, 4, ...) | "none"
    qkv_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    o_bias: bool = False  # the output projection carries one too (Llama-style attention_bias=True)
    qk_norm: bool = False  # per-head RMSNorm on queries and keys before RoPE (Qwen3: q_norm / k_norm)

    @property
    def scale(self) -> float:
        return self.attn_scale or self.head_dim ** -0.5


ArchFields = Callable[[dict, Path, dict], dict]
ARCHITECTURES: dict[str, tuple[str, ArchFields]] = {}  # model_type -> (arch name, config -> DecoderSpec fields)
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
SPEC_FIELDS = {f.name for f in fields(DecoderSpec)}


def register_architecture(arch: str, *model_types: str):
    """Decorator: ``fn(cfg, path, common) -> dict`` gives the DecoderSpec fields of ``arch`` that differ from the
    defaults (``common`` holds the parsed shared ones and ``attn_softcap``, the family's attention choice)."""
    def deco(fn: ArchFields) -> ArchFields:
        for mtype in model_types or (arch,):
            if mtype in ARCHITECTURES and ARCHITECTURES[mtype][1] is not fn:
                raise ValueError(f"decoder model_type {mtype!r} is already registered (as {ARCHITECTURES[mtype][0]})")
            ARCHITECTURES[mtype] = (arch, fn)
        return fn
    return deco


def spec_from_config(cfg: dict, path: Path, *, attn_softcap: bool = True) -> DecoderSpec:
    """The architecture numbers of a decoder config.json (missing or unsupported fields are a CheckpointError)."""
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise CheckpointError(f"{path}/config.json lacks {missing}; restore it from the original checkpoint")
    mtype = cfg.get("model_type")
    if mtype not in ARCHITECTURES:
        raise CheckpointError(f"{path}: decoder model_type {mtype!r} is not implemented ({', '.join(sorted(ARCHITECTURES))}"
                              " are)")
    if cfg.get("rope_scaling"):
        raise CheckpointError(f"{path}: rope_scaling {cfg['rope_scaling']} is not supported by bge-export's decoder "
                              "implementation (no BGE release uses it)")
    if cfg.get("mlp_bias"):
        raise CheckpointError(f"{path}: MLP biases are not supported (no BGE decoder release has them)")
    hidden, heads, layers = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
    if act not in ("silu", "gelu_pytorch_tanh", "gelu_tanh", "gelu"):
        raise CheckpointError(f"{path}: activation {act!r} is not supported (silu, gelu_pytorch_tanh are)")
    bias = bool(cfg.get("attention_bias"))
    common = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                  head_dim=int(cfg.get("head_dim") or hidden // heads), intermediate=int(cfg["intermediate_size"]),
                  vocab=int(cfg["vocab_size"]), eps=float(cfg.get("rms_norm_eps", 1e-6)),
                  rope_theta=float(cfg.get("rope_theta", 10000.0)), activation=act, qkv_bias=bias, o_bias=bias)
    arch, arch_fields = ARCHITECTURES[mtype]
    extra = arch_fields(cfg, path, {**common, "attn_softcap": attn_softcap})
    unknown = set(extra) - SPEC_FIELDS
    if unknown:
        raise TypeError(f"architecture {arch} returned unknown DecoderSpec fields {sorted(unknown)}")
    spec = DecoderSpec(arch=arch, **{**common, **extra})
    if spec.activation not in ("silu", "gelu_tanh"):
        raise CheckpointError(f"{path}: activation {act!r} is not supported for {arch} (silu is)")
    return spec


# --- the architectures of the BGE decoder releases ----------------------------------------------------------------

@register_architecture("llama")
def _llama(cfg: dict, path: Path, common: dict) -> dict:
    return {}


@register_architecture("mistral")
def _mistral(cfg: dict, path: Path, common: dict) -> dict:
    window = cfg.get("sliding_window")
    return {"sliding_window": int(window), "sliding_layers": "all"} if window else {}


def _gemma_common(cfg: dict, common: dict) -> dict:
    act = common["activation"]
    return {"activation": "gelu_tanh" if act in ("gelu_pytorch_tanh", "gelu_tanh", "gelu") else act,
            "norm_offset": True, "embed_scale": math.sqrt(common["hidden"])}


@register_architecture("gemma")
def _gemma(cfg: dict, path: Path, common: dict) -> dict:
    return _gemma_common(cfg, common)


@register_architecture("gemma2", "gemma2", "cost_wise_gemma")
def _gemma2(cfg: dict, path: Path, common: dict) -> dict:
    window = cfg.get("sliding_window")
    cap = cfg.get("attn_logit_softcapping")
    return {**_gemma_common(cfg, common), "sandwich_norms": True,
            "attn_scale": float(cfg.get("query_pre_attn_scalar") or common["head_dim"]) ** -0.5,
            "attn_softcap": float(cap) if cap and common["attn_softcap"] else None,
            "sliding_window": int(window) if window else None, "sliding_layers": "even" if window else "none"}


@register_architecture("minicpm")
def _minicpm(cfg: dict, path: Path, common: dict) -> dict:
    for k in ("scale_emb", "scale_depth"):
        if k not in cfg:
            raise CheckpointError(f"{path}/config.json lacks the MiniCPM field '{k}'; restore it from the original "
                                  "bge-reranker-v2-minicpm-layerwise config")
    return {"embed_scale": float(cfg["scale_emb"]),
            "residual_scale": float(cfg["scale_depth"]) / math.sqrt(common["layers"])}
