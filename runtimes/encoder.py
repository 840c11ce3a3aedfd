"""The encoder family's runtime: FlagEmbedding's ``FlagModel`` API on an engine bundle."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from runtimes.batcher import Job
from runtimes.bundle import Bundle
from runtimes.errors import InputError
from runtimes.flag_api import EMBED_HEAD, EMBED_TAIL
from runtimes.postprocess import finish_embeddings
from runtimes.service import BundleModel, Call


class EncoderModel(BundleModel):
    """Drop-in for ``FlagEmbedding.FlagModel``: ``encode``, ``encode_queries``, ``encode_corpus``.

    Returns float32 numpy arrays ``(N, H)``, or ``(H,)`` for a single string, in input order. Unlike
    FlagModel 1.4.2, which stores but ignores a constructor ``max_length``, ``max_length=`` here sets the
    default of both query and passage lengths.
    ``backend_options`` go to the engine backend (ONNX Runtime: ``intra_op_num_threads``, ``allow_spinning``,
    ``providers``, ``io_binding``, ``buckets``, ``cuda_graph``, ``device_id``; TensorRT: ``device_id``).
    """

    output_name = "pooled"  # the graph output holding the pooled vector
    api_methods = ("encode", "encode_queries", "encode_corpus")
    calls = {"encode": Call("sentences"), "encode_queries": Call("queries"), "encode_corpus": Call("corpus")}
    per_call_options = ("normalize_embeddings", "truncate_dim")
    flag_signature = EMBED_HEAD + [("query_instruction_format", "{}{}"), ("devices", None), ("pooling_method", "cls"),
                                   ("trust_remote_code", False), ("cache_dir", None)] + EMBED_TAIL + [
        ("convert_to_numpy", True), ("truncate_dim", None)]
    auto_model_class = ("embedder", "encoder-only-base")
    loads_half_on_cpu = True

    def __init__(
        self,
        bundle: Bundle,
        *,
        normalize_embeddings: bool = True,
        query_instruction_for_retrieval: str | None = None,
        query_instruction_format: str = "{}{}",
        batch_size: int = 256,
        max_length: int | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        truncate_dim: int | None = None,
        convert_to_numpy: bool = True,
        passage_instruction_for_retrieval: str | None = None,
        passage_instruction_format: str = "{}{}",
        backend_options: dict | None = None,
    ):
        super().__init__(bundle, backend_options=backend_options)
        self.hidden_size = int(bundle.manifest.data["model"]["hidden_size"])
        self.init_embedder_options(
            normalize_embeddings=normalize_embeddings, query_instruction_for_retrieval=query_instruction_for_retrieval,
            query_instruction_format=query_instruction_format, batch_size=batch_size, max_length=max_length,
            passage_instruction_for_retrieval=passage_instruction_for_retrieval,
            passage_instruction_format=passage_instruction_format, query_max_length=query_max_length,
            passage_max_length=passage_max_length, truncate_dim=truncate_dim, truncate_limit=self.hidden_size)
        self.convert_to_numpy = self._check_numpy(convert_to_numpy)

    @property
    def max_length(self) -> int:
        return self.passage_max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.query_max_length = self.passage_max_length = self.check_max_length(value)

    # --- FlagModel API: encode, encode_queries and encode_corpus run these jobs (BundleModel) --------------
    def encode_queries_job(self, queries, batch_size=None, max_length=None, convert_to_numpy=None, **kwargs: Any):
        return self.encode_job(
            queries,
            batch_size=batch_size,
            max_length=max_length if max_length is not None else self.query_max_length,
            convert_to_numpy=convert_to_numpy,
            instruction=self.query_instruction_for_retrieval,
            instruction_format=self.query_instruction_format,
            **kwargs,
        )

    def encode_corpus_job(self, corpus, batch_size=None, max_length=None, convert_to_numpy=None, **kwargs: Any):
        return self.encode_job(
            corpus,
            batch_size=batch_size,
            max_length=max_length if max_length is not None else self.passage_max_length,
            convert_to_numpy=convert_to_numpy,
            instruction=self.passage_instruction_for_retrieval,
            instruction_format=self.passage_instruction_format,
            **kwargs,
        )

    def encode_job(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        max_length: int | None = None,
        convert_to_numpy: bool | None = None,
        instruction: str | None = None,
        instruction_format: str | None = None,
        **kwargs: Any,
    ) -> Job:
        if kwargs:
            raise InputError(f"encode() got unsupported keyword arguments {sorted(kwargs)}")
        self._check_numpy(convert_to_numpy if convert_to_numpy is not None else self.convert_to_numpy)
        single, texts = self.check_texts(sentences, "sentences")
        if instruction is not None:
            fmt = self.check_instruction_format(instruction_format or "{}{}", "instruction_format")
            texts = [self.apply_instruction(fmt, instruction, t) for t in texts]
        batch_size = self.check_batch_size(batch_size if batch_size is not None else self.batch_size)
        max_length = self.check_max_length(max_length if max_length is not None else self.passage_max_length)
        return self.embed_job(self.tokenizer.encode(texts, max_length), batch_size, single)

    def embed_job(self, encoded, batch_size: int, single: bool) -> Job:
        """Token sequences -> finished embeddings in input order: each item's pooled vector, stacked, truncated to
        truncate_dim, L2-normalised."""
        name, truncate_dim, normalize = self.output_name, self.truncate_dim, self.normalize_embeddings

        def finish(pooled: list) -> np.ndarray:
            out = finish_embeddings(np.stack(pooled), truncate_dim=truncate_dim, normalize=normalize)
            return out[0] if single else out

        return Job(encoded, finish, outputs=(name,), batch_size=batch_size, per_item=lambda out, item: out[name])

    # --- validation -----------------------------------------------------------------------------
    @staticmethod
    def _check_numpy(value):
        if value is False:
            raise InputError(
                "convert_to_numpy=False (torch tensors) is not supported by the bundle runtime, which returns "
                "float32 numpy arrays; wrap the result with torch.from_numpy(...) if you need a tensor"
            )
        return True
