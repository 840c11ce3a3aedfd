"""What the decoder-only families share (bge_export/families/llm_reranker.py, layerwise_reranker.py,
compressed_reranker.py, llm_embedder.py): config checks, model info, FLOPs, the export dtype variant, the rerankers'
pair building, parity recipe and bench recipe (their tiny test checkpoints: parity_tests/tiny_checkpoints.py).

Graphs come from bge_export/export/decoders.py (our own implementation, no trust_remote_code), its architectures
from bge_export/families/decoder_archs.py (a new backbone registers itself there from its family module); prompt
building stays on the host (runtimes/llm.py), exactly as FlagEmbedding builds it. Cutoff layers, compression settings,
the Gemma2 attention choice and the export dtype are export-time variants recorded in the manifest.
"""
from __future__ import annotations


from bge_export.bench.recipe import BenchRecipe, Workload
from bge_export.checkpoint import load_tokenizer
from bge_export.errors import CheckpointError, UnsupportedFamilyError
from bge_export.families.decoder_archs import spec_from_config
from bge_export.families.base import Family, TensorSpec
from bge_export.options import Option, parse_int_list
from bge_export.parity import SCALE_FLOOR, gate, rel_spread_error, scaled_error, spearman, spread
from bge_export.parity_run import cached_reference, load_for_parity, quiet_stderr, rerank_pairs

EXPORT_DTYPES = ("fp32", "fp16", "bf16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
LLM_RERANK_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query "
                     "by providing a prediction of either 'Yes' or 'No'.")
LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."

GROUP = "decoder families (export-time variants, recorded in the manifest)"
EXPORT_DTYPE = Option("export_dtype", "--export-dtype", "weight dtype of the decoder graph (default fp32; norms, RoPE "
                      "and softmax stay fp32; bf16 graphs do not run on ONNX Runtime CPU)", choices=EXPORT_DTYPES,
                      group=GROUP)
CUTOFF_LAYERS = Option("cutoff_layers", "--cutoff-layers", "layer-wise / lightweight rerankers: the layers to score at, "
                       "e.g. 28,40 (default: the last layer); the graph stops at the deepest one and outputs one score "
                       "per layer", metavar="L1,L2", group=GROUP)


def parse_layers(value, what: str) -> list[int] | None:
    """'28,40' / [28, 40] / 28 -> [28, 40]; None stays None."""
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
        return load_tokenizer(self.ckpt)

    def build(self, head_layers: int, state=None):
        from bge_export.export.decoders import build_stack  # imports torch

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


def with_other_padding(model, call):
    """``call()`` with the bundle's tokenizer padding on the other side (left vs right), the side restored after."""
    side = model.tokenizer.padding_side
    model.tokenizer.padding_side = "left" if side == "right" else "right"
    try:
        return call()
    finally:
        model.tokenizer.padding_side = side


# --- the rerankers' parity recipe: pair ids, scores per cutoff, both padding sides -------------------------

def score_sample_values(model, sample: dict) -> dict:
    """Reranker scores (one row per cutoff layer) against the bundle's stored reference sample."""
    import numpy as np

    got = np.asarray(model.compute_score([list(p) for p in sample["pairs"]]), dtype=np.float64)
    ref = np.asarray(sample["reference"], dtype=np.float64)
    return {"max_abs_rel_spread": rel_spread_error(ref, got), "spearman": spearman(ref.ravel(), got.ravel())}


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
        flipped = rows(with_other_padding(model, lambda: model.compute_score(everything)), len(everything))
        values["padding_side_max_abs_rel_spread"] = scaled_error(got, flipped, spread(r))
        notes["padding_side_max_abs_rel_spread"] = "the bundle with left vs right padding"
    checks += gate(family.name, "score", precision, values, notes)
    golden = {"pairs": edge_pairs, "reference": ref_edge[0] if len(ref_edge) == 1 else ref_edge,
              "n_texts": len(everything)}
    return checks, golden


# --- the rerankers' bench recipe: compute_score with the bundle's cutoff layers / compression (the family builds
# the reference with the same settings); the reference's engine runs on exactly the tensors of the bundle's engine
# (token-identical to FlagEmbedding's own pair building: checked by the parity suite) -------------------------

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
