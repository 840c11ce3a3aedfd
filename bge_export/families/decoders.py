"""The decoder-only families: LLM reranker, layer-wise MiniCPM reranker, token-compressed Gemma2 reranker and the
LLM embedders (bge-multilingual-gemma2, bge-en-icl).

Graphs come from bge_export/export/decoders.py (our own implementation, no trust_remote_code); prompt building
stays on the host (runtimes/llm.py), exactly as FlagEmbedding builds it. Cutoff layers, compression settings,
the Gemma2 attention choice and the export dtype are export-time variants recorded in the manifest.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from bge_export.bench.recipe import BenchRecipe, Workload
from bge_export.errors import CheckpointError, InternalError, UnsupportedFamilyError
from bge_export.families.base import Family, TensorSpec, TestCase, register_family
from bge_export.options import Option

EXPORT_DTYPES = ("fp32", "fp16", "bf16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
LLM_RERANK_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query "
                     "by providing a prediction of either 'Yes' or 'No'.")
LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
#: what the shimmed lightweight reranker runs: FlagEmbedding's CostWise model uses SDPA (no attention soft-cap)
#: under both transformers 4.46 and 4.57
LIGHTWEIGHT_ATTN_IMPLEMENTATION = "sdpa"


GROUP = "decoder families (export-time variants, recorded in the manifest)"
EXPORT_DTYPE = Option("export_dtype", "--export-dtype", "weight dtype of the decoder graph (default fp32; norms, RoPE "
                      "and softmax stay fp32; bf16 graphs do not run on ONNX Runtime CPU)", choices=EXPORT_DTYPES,
                      group=GROUP)
CUTOFF_LAYERS = Option("cutoff_layers", "--cutoff-layers", "layer-wise / lightweight rerankers: the layers to score at, "
                       "e.g. 28,40 (default: the last layer); the graph stops at the deepest one and outputs one score "
                       "per layer", metavar="L1,L2", group=GROUP)
COMPRESS_RATIO = Option("compress_ratio", "--compress-ratio", "lightweight reranker: average the passage tokens N at a "
                        "time (default 1: no compression)", metavar="N", type=int, group=GROUP)
COMPRESS_LAYERS = Option("compress_layers", "--compress-layers", "lightweight reranker: compress before these layers "
                         "(default: 8, as FlagEmbedding)", metavar="L1,L2", group=GROUP)
ATTENTION = Option("attention", "--attention", "Gemma2 embedders: eager keeps the attention soft-cap the model was "
                   "trained with (default), sdpa drops it as transformers' SDPA does; the reference is pinned to the "
                   "same", choices=("eager", "sdpa"), group=GROUP)
EMBEDDER_APIS = ("FlagLLMModel", "FlagICLModel")
EMBEDDER_API = Option("api", "--embedder-api", "decoder embedders: the FlagEmbedding API to serve (default: "
                      "FlagICLModel for bge-en-icl)", choices=EMBEDDER_APIS, group=GROUP)


def parse_layers(value, what: str) -> list[int] | None:
    """'28,40' / [28, 40] / 28 -> [28, 40]; None stays None."""
    from bge_export.options import parse_int_list

    values = parse_int_list(value, what, minimum=0, example="28,40", error=UnsupportedFamilyError)
    return None if values is None else list(values)


class DecoderFamily(Family, abstract=True):
    """What the decoder families share: config checks, model info, FLOPs, the export dtype variant."""

    export_module_is_reference = True  # our own implementation: the export check reuses the exported module
    ort_fusions = "decoder"  # norms only; attention stays unfused (build/ort.py)
    half_export = True  # fp16 / bf16 graphs come from --export-dtype (build/half.py)
    model_types: tuple[str, ...] = ()
    variant_keys: tuple[str, ...] = ("export_dtype",)
    options = (EXPORT_DTYPE,)

    def __init__(self, ckpt, **variant_options):
        if not any(ckpt.has(f) for f in TOKENIZER_FILES):
            raise CheckpointError(f"{ckpt.path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the "
                                  "tokenizer files of the original checkpoint next to the weights")
        from bge_export.export.decoders import spec_from_config

        spec_from_config(ckpt.config, ckpt.path)  # fails early on missing or unsupported config fields
        super().__init__(ckpt, **variant_options)

    @classmethod
    def options_from_variant(cls, variant: dict) -> dict:
        return {k: variant[k] for k in cls.variant_keys if k in variant}

    def common_variant(self, options: dict) -> dict:
        if options.pop("pooling", None) is not None:
            raise UnsupportedFamilyError(f"--pooling does not apply to the {self.name} family (it pools the last token)")
        dtype = options.pop("export_dtype", None) or "fp32"
        if dtype not in EXPORT_DTYPES:
            raise UnsupportedFamilyError(f"--export-dtype {dtype} is not supported; choose one of {', '.join(EXPORT_DTYPES)}")
        unknown = {k: v for k, v in options.items() if v is not None}
        if unknown:
            raise UnsupportedFamilyError(f"the {self.name} family has no option(s) {sorted(unknown)}")
        return {"architecture": self.ckpt.config["model_type"], "export_dtype": dtype}

    def half_dtype(self) -> str:
        """bf16 for the Gemma-based models: Gemma scales embeddings by sqrt(hidden) and overflows fp16."""
        return "bf16" if "gemma" in self.ckpt.config["model_type"] else "fp16"

    def half_dtype_reason(self) -> str:
        return ("it is Gemma-based: Gemma scales its embeddings by sqrt(hidden) and overflows fp16; use --target "
                "trt-bf16 or ort-cuda-fp16 (bf16 for it), or --target onnx --export-dtype bf16 for the bf16 graph that "
                "trt-bf16 compiles")

    def attn_softcap(self) -> bool:
        """Whether the graph applies Gemma2's attention soft-cap: what the FlagEmbedding reference runs."""
        return True

    def spec(self):
        from bge_export.export.decoders import spec_from_config

        return spec_from_config(self.ckpt.config, self.ckpt.path, attn_softcap=self.attn_softcap())

    def layers_in_graph(self) -> int:
        return int(self.ckpt.config["num_hidden_layers"])

    def model_info(self) -> dict:
        s = self.spec()
        return {"model_type": self.ckpt.config["model_type"], "hidden_size": s.hidden, "num_hidden_layers": s.layers,
                "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim,
                "intermediate_size": s.intermediate, "vocab_size": s.vocab, "layers_in_graph": self.layers_in_graph()}

    @classmethod
    def flops(cls, info: dict, batch: int, seq: int, variant: dict | None = None) -> float:
        h, i, n = info["hidden_size"], info["intermediate_size"], info["layers_in_graph"]
        q, kv = info["num_attention_heads"] * info["head_dim"], info["num_key_value_heads"] * info["head_dim"]
        per_token_layer = 2 * (2 * h * q + 2 * h * kv + 3 * h * i) + 2 * 2 * seq * q
        return float(batch * seq * n * per_token_layer)

    def max_sequence_length(self) -> int:
        return int(self.ckpt.config.get("max_position_embeddings") or 8192)

    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.variant["export_dtype"]]

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, "int64", ("batch", "sequence")) for n in ("input_ids", "attention_mask")]

    def tokenizer(self):
        from bge_export.checkpoint import load_tokenizer

        return load_tokenizer(self.ckpt)

    def build(self, head_layers: int, state=None):
        from bge_export.export.decoders import build_stack

        return build_stack(self.ckpt.path, self.spec(), head_layers, self.torch_dtype(), state)


class DecoderRerankerFamily(DecoderFamily, abstract=True):
    """The three LLM rerankers: FlagEmbedding's pair building (reference-semantics §6-§8) and score parity."""

    parity_outputs = ("tokens", "score", "golden")
    summary_columns = (("score", "max_abs_rel_spread"), ("score", "max_abs"), ("score", "score_spread"),
                       ("score", "spearman"), ("score", "padding_side_max_abs_rel_spread"),
                       ("score", "reference_self_max_abs"))
    prompt = LLM_RERANK_PROMPT  # FlagEmbedding's default prompt of this class
    always_bos = False  # FlagLLMReranker adds BOS only when it differs from PAD; the layer-wise classes always do
    right_padding_only = False  # the lightweight reranker forces right padding (its compression needs it)

    def runtime_defaults(self) -> dict:
        """What the host-side pair building needs (FlagEmbedding's own defaults)."""
        tok = self.tokenizer()
        bos = tok.bos_token_id
        if self.always_bos and (bos is None or tok.pad_token_id is None):
            raise CheckpointError(f"{self.ckpt.path}: the {self.name} family needs a tokenizer with bos and pad tokens")
        return {"max_length": 512, "prompt": self.prompt, "bos_token_id": bos, "pad_to_multiple_of": 8,
                "add_bos": self.always_bos or (bos is not None and bos != tok.pad_token_id)}

    def run_parity(self, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True):
        return reranker_parity(self, bundle_path, precision, texts, log=log)

    @staticmethod
    def golden_values(model, sample: dict) -> dict:
        return score_sample_values(model, sample)


@register_family
class LLMRerankerFamily(DecoderRerankerFamily):
    name = "llm-reranker"
    reference_api = "FlagLLMReranker"
    description = "LLM reranker scoring the 'Yes' logit of a causal LM: bge-reranker-v2-gemma"
    checkpoints = ("BAAI/bge-reranker-v2-gemma",)
    test_cases = (TestCase("tiny-llm-reranker", lambda d: tiny_gemma_reranker(d), "bge-reranker-v2-gemma"),)
    model_types = ("gemma", "gemma2", "llama", "mistral")

    @classmethod
    def matches(cls, ckpt) -> bool:
        mtype = ckpt.config.get("model_type")
        return mtype in cls.model_types and (ckpt.config.get("architectures") or [""])[0].endswith("ForCausalLM")

    def make_variant(self, **options: Any) -> dict:
        variant = self.common_variant(options)
        ids = self.tokenizer()("Yes", add_special_tokens=False)["input_ids"]
        if not ids:
            raise CheckpointError(f"{self.ckpt.path}: the tokenizer has no token for 'Yes'; it is not an LLM reranker")
        return {**variant, "yes_token_id": int(ids[0])}

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("score", "float32", ("batch",))]

    def torch_module(self, *, reference: bool = False):
        from bge_export.export.decoders import YesScorer, load_state_dict

        state = load_state_dict(self.ckpt.path)
        head = state.get("lm_head.weight")
        if head is None:  # tied embeddings (Gemma)
            head = state.get("model.embed_tokens.weight", state.get("embed_tokens.weight"))
        stack = self.build(self.layers_in_graph(), state)
        return YesScorer(stack, head[self.variant["yes_token_id"]],
                         self.ckpt.config.get("final_logit_softcapping")).eval()


class CutoffRerankerFamily(DecoderRerankerFamily, abstract=True):
    """Rerankers with one scoring head per layer (layer-wise MiniCPM, lightweight Gemma2): the cutoff layers are
    an export-time variant, the graph stops at the deepest one and outputs one score per cutoff."""

    always_bos = True
    options = DecoderFamily.options + (CUTOFF_LAYERS,)
    required_config: tuple[str, ...] = ("start_layer",)
    original: str = ""  # the BGE checkpoint whose config.json holds the fields

    def __init__(self, ckpt, **variant_options):
        missing = [k for k in self.required_config if k not in ckpt.config]
        if missing:
            raise CheckpointError(f"{ckpt.path}/config.json lacks the {self.name} fields {missing}; restore "
                                  f"config.json of the original {self.original} checkpoint")
        self.check_heads(ckpt.config, ckpt.path)
        super().__init__(ckpt, **variant_options)

    @staticmethod
    def check_heads(cfg: dict, path) -> None:
        """Refuse head layouts FlagEmbedding's inference class cannot serve."""

    def valid_cutoffs(self) -> list[int]:
        """The layers with a scoring head: range(start_layer, num_hidden_layers + 1, layer_sep)."""
        c = self.ckpt.config
        return list(range(int(c["start_layer"]), int(c["num_hidden_layers"]) + 1, int(c.get("layer_sep", 1))))

    def cutoff_variant(self, cutoff_layers) -> list[int]:
        valid = self.valid_cutoffs()
        cutoffs = parse_layers(cutoff_layers, "--cutoff-layers") or [valid[-1]]
        bad = [c for c in cutoffs if c not in valid]
        if bad:
            raise UnsupportedFamilyError(
                f"--cutoff-layers {bad} are outside this model's scoring layers {valid[0]}..{valid[-1]}; these are "
                f"not scoring layers of this model, which has heads for layers {valid}")
        return sorted(set(cutoffs))

    def layers_in_graph(self) -> int:
        return max(self.variant["cutoff_layers"])

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("scores", "float32", ("batch", len(self.variant["cutoff_layers"])))]

    def runtime_defaults(self) -> dict:
        return {**super().runtime_defaults(), "cutoff_layers": self.variant["cutoff_layers"]}

    def head_indices(self) -> list[int]:
        """Which ``lm_head.{k}`` scores each cutoff, in the graph's column order."""
        raise NotImplementedError

    def head_weights(self, state):
        import torch

        try:
            return torch.stack([state[f"lm_head.{k}.linear_head.weight"][0] for k in self.head_indices()])
        except KeyError as exc:
            raise CheckpointError(f"{self.ckpt.path}: the weights lack the scoring head {exc.args[0]}; the checkpoint "
                                  "is incomplete") from None

    def reference_options(self) -> dict:
        return {"cutoff_layers": list(self.variant["cutoff_layers"])}


@register_family
class LayerwiseRerankerFamily(CutoffRerankerFamily):
    name = "layerwise-reranker"
    reference_api = "LayerWiseFlagLLMReranker"
    description = "layer-wise MiniCPM reranker, one score per cutoff layer: bge-reranker-v2-minicpm-layerwise"
    checkpoints = ("BAAI/bge-reranker-v2-minicpm-layerwise",)
    test_cases = (TestCase("tiny-layerwise", lambda d: tiny_minicpm_layerwise(d), "bge-reranker-v2-minicpm-layerwise",
                           variant={"cutoff_layers": [2, 3, 4]}),)
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


@register_family
class CompressedRerankerFamily(CutoffRerankerFamily):
    name = "compressed-reranker"
    reference_api = "LightWeightFlagLLMReranker"
    description = ("token-compressed Gemma2 reranker with cutoff layers: bge-reranker-v2.5-gemma2-lightweight")
    checkpoints = ("BAAI/bge-reranker-v2.5-gemma2-lightweight",)
    test_cases = (TestCase("tiny-lightweight", lambda d: tiny_gemma2_lightweight(d),
                           "bge-reranker-v2.5-gemma2-lightweight",
                           variant={"cutoff_layers": [2, 4], "compress_ratio": 2, "compress_layers": [2, 3]}),)
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
        from runtimes.llm import effective_compress_layers

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


@register_family
class LLMEmbedderFamily(DecoderFamily):
    name = "llm-embedder"
    reference_api = "FlagLLMModel"
    description = "decoder-only embedders with last-token pooling: bge-multilingual-gemma2, bge-en-icl (ICL prompts)"
    checkpoints = ("BAAI/bge-multilingual-gemma2", "BAAI/bge-en-icl")
    test_cases = (TestCase("tiny-gemma2-embedder", lambda d: tiny_gemma2_embedder(d), "bge-multilingual-gemma2"),
                  TestCase("tiny-icl", lambda d: tiny_mistral_icl(d), "bge-en-icl"))
    summary_columns = (("dense", "cosine_min"), ("dense", "cosine_mean"), ("dense", "max_abs"),
                       ("dense", "reference_self_max_abs"))
    parity_outputs = ("tokens", "dense", "golden")
    model_types = ("gemma2", "mistral", "llama", "gemma")
    variant_keys = ("export_dtype", "api", "attention")
    options = DecoderFamily.options + (ATTENTION, EMBEDDER_API)
    APIS = EMBEDDER_APIS

    @classmethod
    def matches(cls, ckpt) -> bool:
        mtype = ckpt.config.get("model_type")
        archs = ckpt.config.get("architectures") or [""]
        return mtype in cls.model_types and archs[0].endswith("Model") and not archs[0].endswith("ForCausalLM")

    def __init__(self, ckpt, **variant_options):
        super().__init__(ckpt, **variant_options)
        self.reference_api = self.variant["api"]  # per checkpoint: FlagLLMModel or FlagICLModel

    def make_variant(self, *, api=None, attention=None, **options: Any) -> dict:
        variant = self.common_variant(options)
        if api is None:  # FlagEmbedding's own dispatch: bge-en-icl is the in-context-learning model
            api = "FlagICLModel" if "icl" in self.ckpt.name.lower() else "FlagLLMModel"
        if api not in self.APIS:
            raise UnsupportedFamilyError(f"--embedder-api {api} is not one of {', '.join(self.APIS)}")
        gemma2 = self.ckpt.config["model_type"] == "gemma2"
        attention = attention or "eager"
        if attention not in ("eager", "sdpa"):
            raise UnsupportedFamilyError(f"--attention {attention} is not one of eager, sdpa")
        # Gemma2's attention soft-cap exists only in eager attention (transformers' SDPA drops it, §0.6): the
        # graph implements the choice and the reference is pinned to the same implementation.
        return {**variant, "api": api, "attention": attention,
                "attn_softcap": bool(gemma2 and attention == "eager" and self.ckpt.config.get("attn_logit_softcapping"))}

    def attn_softcap(self) -> bool:
        return self.variant["attn_softcap"]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("pooled", "float32", ("batch", "hidden"))]

    def runtime_defaults(self) -> dict:
        fmt = "<instruct>{}\n<query>{}" if self.variant["api"] == "FlagICLModel" else "Instruct: {}\nQuery: {}"
        return {"max_length": 512, "query_instruction_format": fmt,
                "clean_up_tokenization_spaces": bool(self.tokenizer().clean_up_tokenization_spaces)}

    def torch_module(self, *, reference: bool = False):
        from bge_export.export.decoders import LastTokenEmbedder

        return LastTokenEmbedder(self.build(self.layers_in_graph())).eval()

    def reference_options(self) -> dict:
        return {"attn_implementation": self.variant["attention"]}

    def reference(self, **kwargs):
        """FlagLLMModel / FlagICLModel with the attention implementation of the variant pinned."""
        make = icl_embedder_reference if self.variant["api"] == "FlagICLModel" else llm_embedder_reference
        return make(self.ckpt.path, **{**self.reference_options(), **kwargs})

    def parity_examples(self) -> list[dict] | None:
        """The in-context examples parity sets on both sides (FlagICLModel only)."""
        return ICL_EXAMPLES if self.variant["api"] == "FlagICLModel" else None

    def run_parity(self, bundle_path, precision: str, texts: dict, *, log=print, gate_retrieval: bool = True):
        return embedder_parity(self, bundle_path, precision, texts, log=log)

    @staticmethod
    def golden_values(model, sample: dict) -> dict:
        from bge_export.parity import dense_sample_values

        return dense_sample_values(sample["reference"], model.encode(sample["texts"]))


# --- FlagEmbedding references: the compatibility fixes these classes need on transformers 4.57 ----------------
# (reference-semantics §0.5, §0.6), applied to the returned INSTANCE only:
# * layer-wise MiniCPM reranker: ``model.config.use_cache = False`` (4.57's DynamicCache has no
#   ``get_usable_length``);
# * lightweight Gemma2 reranker: every Gemma2 decoder layer of the loaded model gets an instance-level ``forward``
#   that computes ``(cos, sin)`` from the ``position_ids`` it receives with transformers' ``Gemma2RotaryEmbedding``
#   (what 4.46's attention did internally) and passes them as ``position_embeddings``, without a cache. The module
#   tree and the state dict are unchanged. With this shim 4.57 is bit-identical to an unmodified 4.46 run;
# * LLM / ICL embedders: the attention implementation is pinned (``eager`` keeps Gemma2's attention soft-cap,
#   ``sdpa`` drops it silently), so the reference does not depend on the transformers version's default.

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


def lightweight_reference(path, **kwargs: Any):
    """``LightWeightFlagLLMReranker`` (bge-reranker-v2.5-gemma2-lightweight) in fp32 on CPU, with the
    ``position_embeddings`` shim on each Gemma2 decoder layer and ``use_cache=False``. Attention stays SDPA."""
    from bge_export import reference

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


def llm_embedder_reference(path, *, attn_implementation: str | None = "eager", **kwargs: Any):
    """``FlagLLMModel`` (bge-multilingual-gemma2 and other last-token decoder embedders) in fp32 on CPU, with the
    attention implementation pinned: ``"eager"`` applies Gemma2's ``tanh(s/50)*50`` attention soft-cap (what
    transformers 4.46 ran), ``"sdpa"`` silently drops it (4.57's default). ``None`` keeps the loaded default.
    Note the constructor's default query template is ``"Instruct: {}\\nQuery: {}"`` (§0.1)."""
    from bge_export import reference

    embedder = reference.flag_class("FlagLLMModel")(str(path), **reference.cpu_fp32(kwargs))
    if attn_implementation is not None:
        reference.pin_attention(embedder.model, attn_implementation)
    return embedder


def icl_embedder_reference(path, *, attn_implementation: str | None = "eager", **kwargs: Any):
    """``FlagICLModel`` (bge-en-icl) in fp32 on CPU, with the attention implementation pinned as in
    :func:`llm_embedder_reference` (Mistral has no soft-cap, so eager and sdpa agree to float rounding)."""
    from bge_export import reference

    embedder = reference.flag_class("FlagICLModel")(str(path), **reference.cpu_fp32(kwargs))
    if attn_implementation is not None:
        reference.pin_attention(embedder.model, attn_implementation)
    return embedder


# --- parity recipes: rerankers (pair ids, scores per cutoff, both padding sides), embedders (cosines) ---------

QUERY_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query."
ICL_EXAMPLES = [
    {"instruct": QUERY_INSTRUCTION, "query": "what is a virtual interface",
     "response": "A virtual interface is a software-defined abstraction that mimics a network interface."},
    {"instruct": QUERY_INSTRUCTION, "query": "causes of back pain in female for a week",
     "response": "Back pain in females lasting a week can stem from muscle strain or poor posture."},
]


def score_sample_values(model, sample: dict) -> dict:
    """Reranker scores (one row per cutoff layer) against the bundle's stored reference sample."""
    import numpy as np

    from bge_export.parity import rel_spread_error, spearman

    got = np.asarray(model.compute_score([list(p) for p in sample["pairs"]]), dtype=np.float64)
    ref = np.asarray(sample["reference"], dtype=np.float64)
    return {"max_abs_rel_spread": rel_spread_error(ref, got), "spearman": spearman(ref.ravel(), got.ravel())}


# --- rerankers ----------------------------------------------------------------------------------------------

def reference_pair_ids(family, reference, pairs, query_max_length: int, max_length: int) -> list[list[int]]:
    """FlagEmbedding's pair token ids, built with its own tokenizer and truncation helper."""
    from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

    tok = reference.tokenizer
    prompt_ids = tok(family.prompt, add_special_tokens=False)["input_ids"]
    sep = tok("\n", add_special_tokens=False)["input_ids"]
    add_bos = family.always_bos or (tok.bos_token_id is not None and tok.bos_token_id != tok.pad_token_id)
    out = []
    for q, p in pairs:
        q_ids = tok("A: " + q, add_special_tokens=False, max_length=query_max_length, truncation=True)["input_ids"]
        p_ids = tok("B: " + p, add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
        item = prepare_for_model_compat(tok, ([tok.bos_token_id] if add_bos else []) + q_ids, sep + p_ids,
                                        truncation="only_second", max_length=max_length + len(sep) + len(prompt_ids),
                                        padding=False, return_attention_mask=False, return_token_type_ids=False,
                                        add_special_tokens=False)
        out.append(item["input_ids"] + sep + prompt_ids)
    return out


def reranker_parity(family, bundle_path, precision: str, texts: dict, *, log=print):
    import numpy as np

    from bge_export.parity import SCALE_FLOOR, gate, rel_spread_error, scaled_error, spearman, spread
    from bge_export.parity_run import cached_reference, load_for_parity, quiet_stderr, rerank_pairs

    reference = cached_reference(family)  # built with the bundle's cutoff layers and compression
    model = load_for_parity(bundle_path, batch_size=16)
    pairs, edge_pairs = rerank_pairs(texts)
    pairs = pairs[:160]
    everything = pairs + edge_pairs
    n = model.max_length

    mismatched = 0
    for ml in (n, 32):
        want = reference_pair_ids(family, reference, everything, ml * 3 // 4, ml)
        got = model.build_pairs(["A: " + q for q, _ in everything], ["B: " + p for _, p in everything],
                                ml * 3 // 4, ml, None)
        mismatched += sum(w != g.ids for w, g in zip(want, got))
    checks = gate(family.name, "tokens", "*", {"mismatched_pairs": mismatched})

    log(f"running FlagEmbedding {family.reference_api} (fp32, CPU) and the bundle on {len(everything)} pairs")

    def rows(scores, n_pairs):  # one row per cutoff layer: (n_cutoff, N)
        return np.asarray(scores, dtype=np.float64).reshape(-1, n_pairs)

    with quiet_stderr():
        ref = rows(reference.compute_score(everything, batch_size=32, max_length=n), len(everything))
        ref_short = rows(reference.compute_score(edge_pairs, max_length=32), len(edge_pairs))
        ref_single = rows(reference.compute_score(edge_pairs[:8], batch_size=1, max_length=n), 8)
    got = rows(model.compute_score(everything), len(everything))
    got_short = rows(model.compute_score(edge_pairs, max_length=32), len(edge_pairs))
    r, g = np.concatenate([ref, ref_short], axis=1), np.concatenate([got, got_short], axis=1)
    ref_edge = ref[:, len(pairs):]
    values = {"max_abs_rel_spread": rel_spread_error(r, g), "max_abs": float(np.abs(r - g).max()),
              "score_spread": spread(r), "spearman": min(spearman(a, b) for a, b in zip(r, g)),
              "reference_self_max_abs": float(np.abs(ref_single - ref_edge[:, :8]).max())}
    notes = {"score_spread": "max - min of the reference scores",
             "max_abs_rel_spread": f"max |ref - bundle| / max(spread, {SCALE_FLOOR:g})",
             "reference_self_max_abs": f"{family.reference_api} batch 1 vs batch 32"}
    if not family.right_padding_only:
        side = model.tokenizer.padding_side
        model.tokenizer.padding_side = "left" if side == "right" else "right"
        flipped = rows(model.compute_score(everything), len(everything))
        model.tokenizer.padding_side = side
        values["padding_side_max_abs_rel_spread"] = scaled_error(got, flipped, spread(r))
        notes["padding_side_max_abs_rel_spread"] = "the bundle with left vs right padding"
    checks += gate(family.name, "score", precision, values, notes)
    golden = {"pairs": edge_pairs, "reference": ref_edge[0] if len(ref_edge) == 1 else ref_edge,
              "n_texts": len(everything)}
    return checks, golden


# --- embedders ----------------------------------------------------------------------------------------------

def embedder_parity(family, bundle_path, precision: str, texts: dict, *, log=print):
    import numpy as np

    from bge_export.parity import cosine_rows, gate
    from bge_export.parity_run import cached_reference, load_for_parity, quiet_stderr, text_token_mismatches

    reference = cached_reference(family, query_instruction_for_retrieval=QUERY_INSTRUCTION)
    model = load_for_parity(bundle_path, batch_size=16, query_instruction_for_retrieval=QUERY_INSTRUCTION)
    edge, queries, corpus = texts["edge_cases"], texts["queries"], texts["corpus"][:120]

    checks = gate(family.name, "tokens", "*",
                  {"mismatched_texts": text_token_mismatches(family, model, edge + queries + corpus, 512)})
    log(f"running FlagEmbedding {family.reference_api} (fp32, CPU) and the bundle on "
        f"{len(edge) + 2 * len(queries) + len(corpus)} texts")
    with quiet_stderr():
        ref = [reference.encode(edge + corpus, batch_size=32), reference.encode_queries(queries + edge, batch_size=32),
               reference.encode(edge, max_length=16)]
        ref_single = reference.encode(edge[:8], batch_size=1)
    got = [model.encode(edge + corpus), model.encode_queries(queries + edge), model.encode(edge, max_length=16)]
    examples = family.parity_examples()
    if examples is not None:  # the in-context examples prefix, set on both sides
        with quiet_stderr():
            reference.set_examples(examples)
            ref.append(reference.encode_queries(queries + edge, batch_size=32))
        model.set_examples(examples)
        got.append(model.encode_queries(queries + edge))
    r, g = np.concatenate(ref), np.concatenate(got)
    cos = cosine_rows(r, g)
    values = {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "max_abs": float(np.abs(r - g).max()),
              "reference_self_max_abs": float(np.abs(ref_single - ref[0][:8]).max())}
    checks += gate(family.name, "dense", precision, values,
                   {"reference_self_max_abs": f"{family.reference_api} batch 1 vs batch 32"})
    golden = {"texts": list(edge), "reference": ref[0][:len(edge)], "n_texts": sum(len(x) for x in ref)}
    return checks, golden

# --- tiny test checkpoints (reference-semantics §3, §4, §6-§9), built at test time ---------------------------
# Tiny random-weight decoder checkpoints with the real on-disk layouts (reference-semantics §3, §4, §6-§9).
# 
# Each builder writes into ``folder`` and returns it. The caller picks the folder and must give it the real repo
# name (``bge-reranker-v2-gemma``, ``bge-reranker-v2-minicpm-layerwise``, ``bge-reranker-v2.5-gemma2-lightweight``,
# ``bge-multilingual-gemma2``, ``bge-en-icl``) because FlagEmbedding dispatches on the basename.
# 
# Everything is built offline and deterministically (``torch.manual_seed``). ``initializer_range=0.2``: at the HF
# default of 0.02 the outputs barely depend on the input and parity proves nothing (§9.2). The shape keywords
# default to the tiny values of the doc; pass larger ones (and any other config field as an extra keyword) to
# build a mid-sized model for benchmarks. ``head_dim`` defaults to ``hidden_size // num_attention_heads`` (16 for
# the tiny shapes) and ``query_pre_attn_scalar`` to ``head_dim``.

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
    from bge_export.parity_run import parity_texts

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


# --- bench recipes (the decoder rerankers: compute_score with the bundle's cutoff layers / compression (the family builds the
# reference with the same settings); the reference's engine runs on exactly the tensors of the bundle's engine
# (token-identical to FlagEmbedding's own pair building: checked by the parity suite))


def _decoder_pairs(model, pairs, s):
    """The runtime's token-level pairs for ``compute_score(pairs, max_length=s)`` (instructions applied)."""
    def inst(fmt, instruction, text):
        return text if instruction is None else model.apply_instruction(fmt, instruction, text)

    qs = [inst(model.query_instruction_format, model.query_instruction_for_rerank, q) for q, _ in pairs]
    ps = [inst(model.passage_instruction_format, model.passage_instruction_for_rerank, p) for _, p in pairs]
    return model.build_pairs(qs, ps, s * 3 // 4, s, None)


def _decoder_pair_inputs(w: Workload, b, s):
    """b pairs whose whole model input (bos, 'A: ' query of s/4 tokens, 'B: ' passage, separators, prompt) is about
    s tokens: the passage gives up what the prompt and instructions take."""
    q_len = s // 4
    probe = [[w.texts(1, q_len)[0], w.texts(1, s - q_len, offset=5)[0]]]
    overhead = len(_decoder_pairs(w.model, probe, s)[0].ids) - s
    p_len = max(8, s - q_len - overhead)
    return [list(p) for p in zip(w.texts(b, q_len), w.texts(b, p_len, offset=5))]


def _decoder_pair_tokens(w: Workload, x, b, s):
    n = sum(len(e.ids) for e in _decoder_pairs(w.model, x, s))
    return {"e2e": n, "engine": n}


def _llm_rerank_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.base import last_logit_pool

    logits = ref.model(**enc, output_hidden_states=True).logits
    return last_logit_pool(logits, enc["attention_mask"])[:, ref.yes_loc]


def _layerwise_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.layerwise import last_logit_pool_layerwise

    out = ref.model(**enc, output_hidden_states=True, cutoff_layers=ref.cutoff_layers)
    return [last_logit_pool_layerwise(logits, enc["attention_mask"]) for logits in out.logits]


def _lightweight_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.lightweight import last_logit_pool_lightweight

    out = ref.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True,
                    compress_layer=ref.compress_layers, compress_ratio=ref.compress_ratio,
                    query_lengths=enc["query_lengths"], prompt_lengths=enc["prompt_lengths"],
                    cutoff_layers=ref.cutoff_layers)
    return [last_logit_pool_lightweight(logits, mask) for logits, mask in zip(out.logits, out.attention_masks)]


def decoder_reranker_recipe(forward, ref_list_feeds: tuple[str, ...] = ()) -> BenchRecipe:
    """A decoder reranker's recipe: ``forward`` is its reference's bare forward + pooling."""
    return BenchRecipe(
        inputs=_decoder_pair_inputs,
        e2e={"e2e": lambda obj, x, b, s: obj.compute_score(x, batch_size=b, max_length=s)},
        engine_feeds=lambda model, x, s: model.feeds_for(_decoder_pairs(model, x, s)),
        ref_forward=forward,
        ref_list_feeds=ref_list_feeds,
        tokens=_decoder_pair_tokens,
        check="scores",
    )




# --- the LLM embedders: encode_corpus / encode_queries (with a retrieval instruction) ----------------------

def _query_overhead(model, n_tok, text):
    """Tokens an embedder's query template (instruction, ICL suffix) adds to a query text."""
    formatted = model.apply_instruction(model.query_instruction_format, model.query_instruction_for_retrieval, text)
    return n_tok(formatted + getattr(model, "suffix", "")) - n_tok(text)


def _embedder_inputs(w: Workload, b, s):
    """Corpus texts of exactly s tokens; queries shortened so that the templated query is about s tokens."""
    overhead = _query_overhead(w.model, w.n_tok, w.texts(1, s // 2)[0])
    return {"corpus": w.texts(b, s), "queries": w.texts(b, max(8, s - overhead), offset=3)}


def _embedder_tokens(w: Workload, x, b, s):
    q = sum(w.n_tok(q) + _query_overhead(w.model, w.n_tok, q) for q in x["queries"])
    return {"e2e": b * s, "e2e-queries": q, "engine": b * s}


def _embedder_forward(ref, enc):
    from FlagEmbedding.inference.embedder.decoder_only.base import last_token_pool

    return last_token_pool(ref.model(**enc, return_dict=True).last_hidden_state, enc["attention_mask"])


LLM_EMBEDDER_BENCH = BenchRecipe(
    inputs=_embedder_inputs,
    e2e={"e2e": lambda obj, x, b, s: obj.encode_corpus(x["corpus"], batch_size=b, max_length=s),
         "e2e-queries": lambda obj, x, b, s: obj.encode_queries(x["queries"], batch_size=b, max_length=s)},
    engine_feeds=lambda model, x, s: model.feeds_for(model.tokenizer.encode(x["corpus"], s)),
    ref_forward=_embedder_forward,  # on the bundle engine's feeds (ref_tensors None)
    tokens=_embedder_tokens,
    options={"query_instruction_for_retrieval": QUERY_INSTRUCTION},
    check="vectors",
)


LLMRerankerFamily.bench_recipe = decoder_reranker_recipe(_llm_rerank_forward)
LayerwiseRerankerFamily.bench_recipe = decoder_reranker_recipe(_layerwise_forward)
# the lightweight reranker's forward takes the query and prompt lengths as python lists
CompressedRerankerFamily.bench_recipe = decoder_reranker_recipe(_lightweight_forward, ("query_lengths", "prompt_lengths"))
LLMEmbedderFamily.bench_recipe = LLM_EMBEDDER_BENCH
