"""Decoder-only embedders with last-token pooling (bge-multilingual-gemma2, bge-en-icl): FlagEmbedding's
FlagLLMModel and FlagICLModel (the API is picked per checkpoint, --embedder-api overrides it)."""
from __future__ import annotations

from typing import Any

from bge_export import reference
from bge_export.bench.recipe import BenchRecipe, Workload
from bge_export.errors import UnsupportedFamilyError
from bge_export.families.base import TensorSpec, register_family
from bge_export.families.decoders import GROUP, DecoderFamily
from bge_export.options import Option
from bge_export.parity import cosine_rows, dense_sample_values, gate
from bge_export.parity_run import cached_reference, load_for_parity, quiet_stderr, text_token_mismatches

ATTENTION = Option("attention", "--attention", "Gemma2 embedders: eager keeps the attention soft-cap the model was "
                   "trained with (default), sdpa drops it as transformers' SDPA does; the reference is pinned to the "
                   "same", choices=("eager", "sdpa"), group=GROUP)
EMBEDDER_APIS = ("FlagLLMModel", "FlagICLModel")
EMBEDDER_API = Option("api", "--embedder-api", "decoder embedders: the FlagEmbedding API to serve (default: "
                      "FlagICLModel for bge-en-icl)", choices=EMBEDDER_APIS, group=GROUP)
QUERY_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query."
ICL_EXAMPLES = [
    {"instruct": QUERY_INSTRUCTION, "query": "what is a virtual interface",
     "response": "A virtual interface is a software-defined abstraction that mimics a network interface."},
    {"instruct": QUERY_INSTRUCTION, "query": "causes of back pain in female for a week",
     "response": "Back pain in females lasting a week can stem from muscle strain or poor posture."},
]


@register_family
class LLMEmbedderFamily(DecoderFamily):
    name = "llm-embedder"
    reference_api = "FlagLLMModel"
    description = "decoder-only embedders with last-token pooling: bge-multilingual-gemma2, bge-en-icl (ICL prompts)"
    checkpoints = ("BAAI/bge-multilingual-gemma2", "BAAI/bge-en-icl")
    summary_columns = (("dense", "cosine_min"), ("dense", "cosine_mean"), ("dense", "max_abs"),
                       ("dense", "reference_self_max_abs"))
    parity_outputs = ("tokens", "dense", "golden")
    model_types = ("gemma2", "mistral", "llama", "gemma")
    variant_keys = ("export_dtype", "api", "attention")
    reference_apis = EMBEDDER_APIS
    reference_state_calls = ("set_examples",)  # FlagICLModel's in-context examples
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
        return dense_sample_values(sample["reference"], model.encode(sample["texts"]))


# --- FlagEmbedding references: the attention implementation pinned ---------------------------------------------

def llm_embedder_reference(path, *, attn_implementation: str | None = "eager", **kwargs: Any):
    """``FlagLLMModel`` (bge-multilingual-gemma2 and other last-token decoder embedders) in fp32 on CPU, with the
    attention implementation pinned: ``"eager"`` applies Gemma2's ``tanh(s/50)*50`` attention soft-cap (what
    transformers 4.46 ran), ``"sdpa"`` silently drops it (4.57's default). ``None`` keeps the loaded default.
    Note the constructor's default query template is ``"Instruct: {}\\nQuery: {}"`` (§0.1)."""
    embedder = reference.flag_class("FlagLLMModel")(str(path), **reference.cpu_fp32(kwargs))
    if attn_implementation is not None:
        reference.pin_attention(embedder.model, attn_implementation)
    return embedder


def icl_embedder_reference(path, *, attn_implementation: str | None = "eager", **kwargs: Any):
    """``FlagICLModel`` (bge-en-icl) in fp32 on CPU, with the attention implementation pinned as in
    :func:`llm_embedder_reference` (Mistral has no soft-cap, so eager and sdpa agree to float rounding)."""
    embedder = reference.flag_class("FlagICLModel")(str(path), **reference.cpu_fp32(kwargs))
    if attn_implementation is not None:
        reference.pin_attention(embedder.model, attn_implementation)
    return embedder


# --- parity recipe: encode / encode_queries (with an instruction; ICL also with examples) / encode_corpus ------

def embedder_parity(family, bundle_path, precision: str, texts: dict, *, log=print):
    import numpy as np

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


# --- bench recipe: encode_corpus / encode_queries (with a retrieval instruction) -------------------------------

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
LLMEmbedderFamily.bench_recipe = LLM_EMBEDDER_BENCH
