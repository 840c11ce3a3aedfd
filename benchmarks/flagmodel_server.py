"""The server users write by hand: FastAPI + FlagEmbedding's FlagModel, one encode() per request (no batching
across requests). A baseline for benchmarks/run_server.py; serves OpenAI's /v1/embeddings.

    python -m benchmarks.flagmodel_server MODEL_FOLDER --port 8091 [--pooling mean]
"""
from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--pooling", default="cls")
    args = p.parse_args()

    import fastapi
    import uvicorn
    from FlagEmbedding import FlagModel

    model = FlagModel(args.model, pooling_method=args.pooling, use_fp16=False, devices="cpu")
    app = fastapi.FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(body: dict):  # a plain def: FastAPI runs it on its thread pool, one encode per request
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vecs = model.encode(texts, batch_size=len(texts))
        return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                                           for i, v in enumerate(vecs.reshape(len(texts), -1))]}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
