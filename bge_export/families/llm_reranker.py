"""LLM reranker (bge-reranker-v2-gemma): the 'Yes' logit of a causal LM, FlagEmbedding's FlagLLMReranker."""
from __future__ import annotations

from typing import Any

from bge_export.errors import CheckpointError
from bge_export.families.base import TensorSpec, register_family
from bge_export.families.decoders import DecoderRerankerFamily, decoder_reranker_recipe

def _llm_rerank_forward(ref, enc):
    from FlagEmbedding.inference.reranker.decoder_only.base import last_logit_pool

    logits = ref.model(**enc, output_hidden_states=True).logits
    return last_logit_pool(logits, enc["attention_mask"])[:, ref.yes_loc]


@register_family
class LLMRerankerFamily(DecoderRerankerFamily):
    name = "llm-reranker"
    reference_api = "FlagLLMReranker"
    description = "LLM reranker scoring the 'Yes' logit of a causal LM: bge-reranker-v2-gemma"
    checkpoints = ("BAAI/bge-reranker-v2-gemma",)
    bench_recipe = decoder_reranker_recipe(_llm_rerank_forward)
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
