"""Request bodies, in the peers' JSON (text-embeddings-inference, OpenAI, Cohere / infinity) plus bge-export's own.

Validated strictly (a string is not a number, a number is not a bool); unknown fields are ignored, as the peers
ignore them, except on the FlagEmbedding routes, whose keywords go to the Python API that names what it takes.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Texts = Union[str, list[str]]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None


class _Embedding(_Body):
    truncate: bool | None = None
    truncation_direction: Literal["Right", "Left", "right", "left"] | None = None
    normalize: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    prompt_name: str | None = None
    input_type: str | None = None  # query | passage (also Cohere's search_query / search_document)
    examples: list[dict[str, str]] | None = None  # in-context examples (FlagICLModel's examples_for_task)

    def call_options(self) -> dict:
        """The keywords of runtimes.server.infer.Inference.embed these fields give."""
        return {"normalize": self.normalize, "dimensions": self.dimensions, "examples": self.examples,
                "prompt_name": self.prompt_name or self.input_type, "truncate": self.truncate,
                "truncation_direction": self.truncation_direction}


class EmbedRequest(_Embedding):
    """text-embeddings-inference's /embed, /embed_sparse, /embed_all."""

    inputs: Texts


class OpenAIEmbeddingRequest(_Embedding):
    """OpenAI's /v1/embeddings."""

    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class RerankRequest(_Body):
    """text-embeddings-inference's /rerank."""

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["Right", "Left", "right", "left"] | None = None
    cutoff_layers: int | list[int] | None = None  # LayerWise / LightWeight rerankers: one layer here
    prompt: str | None = None  # the LLM rerankers' prompt


class CohereRerankRequest(_Body):
    """Cohere's / infinity's /v1/rerank."""

    query: str
    documents: list[Union[str, dict[str, Any]]]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    raw_scores: bool = False
    truncate: bool | None = None
    cutoff_layers: int | list[int] | None = None
    prompt: str | None = None


class TokenizeRequest(_Body):
    inputs: Texts
    add_special_tokens: bool = True


class DecodeRequest(_Body):
    ids: Union[list[int], list[list[int]]]
    skip_special_tokens: bool = True


class FlagCallRequest(BaseModel):
    """/v1/flag/{method}: the FlagEmbedding call's own keywords (``sentences``, ``queries``, ``corpus`` or
    ``sentence_pairs`` and the rest), ``options`` for per-call constructor options (``truncate_dim``,
    ``normalize_embeddings``, ``examples_for_task``), and ``model``."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
