"""The routes of each API family, one module each: text-embeddings-inference's (``tei``), OpenAI's (``openai``),
Cohere's / infinity's rerank (``cohere``) and FlagEmbedding's own calls (``flag``). Each only translates its JSON into
calls of runtimes.server.infer.Inference and their results back into its JSON; runtimes.server.app registers them."""
