"""Realistic embedding traffic: short queries beside long passages, from real text, 1 to 8 texts per request.

The texts are real: the passages are the 800 four-verse blocks of the King James Bible retrieval set that
bge-export ships (bge_export/data/retrieval_kjv.json: 10 to 148 words, median 76, the length range of web passage
corpora such as MS MARCO's, whose mean is 56 words) and the 270 one-sentence passages of the parity corpus (about
20 words); the queries are the 40 search questions of the parity set (1 to 10 words, mean 6.4, English and
Chinese, as MS MARCO's queries average 6 words). Two kinds of request share the server, as search and indexing
share a RAG deployment:

* a search request: one query;
* an indexing request: 1 to 8 passages (uniform).

Half the requests are of each kind (``mixed``), or every request is one text, a query or a passage with equal odds
(``single``, the shape of the issue's first measurement). The draw is seeded: every server gets the same requests in
the same order. Token counts come from the served model's tokenizer (special tokens included, cut at its
max_length), so the real-token figures of a run are exact.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Request:
    texts: tuple[str, ...]
    tokens: tuple[int, ...]  # per text, as the model's tokenizer counts them (special tokens included)
    kind: str  # "search" or "index"

    def body(self, model: str | None = None, route: str = "openai") -> bytes:
        """The request's JSON: OpenAI's /v1/embeddings body (``input``, ``model``) or TEI's /embed (``inputs``)."""
        if route == "openai":
            return json.dumps({"input": list(self.texts), "model": model or "m"}).encode()
        return json.dumps({"inputs": list(self.texts), "truncate": True}).encode()


def pools() -> tuple[list[str], list[str]]:
    """(queries, passages): the real texts the traffic is drawn from."""
    data = resources.files("bge_export").joinpath("data")
    parity = json.loads(data.joinpath("parity_texts.json").read_text(encoding="utf-8"))
    kjv = json.loads(data.joinpath("retrieval_kjv.json").read_text(encoding="utf-8"))
    return list(parity["queries"]), [p["text"] for p in kjv["passages"]] + list(parity["corpus"])


def counter(tokenizer_json: str, max_length: int):
    """A function text -> token count with the model's tokenizer (special tokens included, cut at max_length)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length)
    return lambda text: len(tok.encode(text).ids)


def requests(count: int, count_tokens, *, shape: str = "mixed", max_texts: int = 8, seed: int = 0) -> list[Request]:
    """``count`` requests of the given shape (``mixed`` or ``single``), seeded."""
    if shape not in ("mixed", "single"):
        raise ValueError(f"shape is 'mixed' or 'single', not {shape!r}")
    queries, passages = pools()
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if shape == "single":
            texts = [rng.choice(queries if rng.random() < 0.5 else passages)]
            kind = "single"
        elif rng.random() < 0.5:
            texts, kind = [rng.choice(queries)], "search"
        else:
            texts, kind = rng.sample(passages, rng.randint(1, max_texts)), "index"
        out.append(Request(tuple(texts), tuple(count_tokens(t) for t in texts), kind))
    return out


def describe(reqs: list[Request]) -> dict:
    """The traffic's shape: texts per request, tokens per text (percentiles), the share of each kind."""
    import numpy as np

    tokens = np.array([t for r in reqs for t in r.tokens])
    per = np.array([len(r.texts) for r in reqs])
    return {"requests": len(reqs), "texts_per_request_mean": round(float(per.mean()), 2),
            "tokens_per_text": {f"p{q}": int(np.percentile(tokens, q)) for q in (0, 10, 25, 50, 75, 90, 99, 100)},
            "tokens_per_text_mean": round(float(tokens.mean()), 1),
            "kinds": {k: sum(r.kind == k for r in reqs) for k in sorted({r.kind for r in reqs})}}
