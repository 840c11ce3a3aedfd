"""The runtime's registry: which class serves each FlagEmbedding API a bundle's manifest can name.

Data only, and light to import: the classes are named as "module:Class" and imported on first use (they load
numpy, the tokenizer and the batcher), so every module can read the registry at its top without a cycle.
"""
from __future__ import annotations

import importlib

# the FlagEmbedding API a bundle's manifest names -> the class that serves it ("module:Class")
RUNTIME_APIS = {
    "FlagModel": "runtimes.encoder:EncoderModel",
    "FlagReranker": "runtimes.reranker:CrossEncoderModel",
    "BGEM3FlagModel": "runtimes.m3:M3Model",
    "FlagLLMReranker": "runtimes.llm:LLMRerankerModel",
    "LayerWiseFlagLLMReranker": "runtimes.llm:LayerWiseRerankerModel",
    "LightWeightFlagLLMReranker": "runtimes.llm:LightWeightRerankerModel",
    "FlagLLMModel": "runtimes.llm:LLMEmbedderModel",
    "FlagICLModel": "runtimes.llm:ICLEmbedderModel",
}

# FlagEmbedding's class names, served by runtimes.flag_api (``from runtimes import FlagModel``)
DROP_IN = tuple(RUNTIME_APIS) + ("FlagAutoModel", "FlagAutoReranker")


def runtime_class(api: str) -> type:
    """The runtime class serving a FlagEmbedding API name (imported on first use)."""
    module, cls = RUNTIME_APIS[api].split(":")
    return getattr(importlib.import_module(module), cls)
