"""The benchmark's inputs: distinct texts of an exact token length, built from the built-in parity corpus."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from bge_export.bench.recipe import Workload
from bge_export.errors import BgeExportError
from bge_export.parity_run import parity_texts
from runtimes.tokenizer import Tokenizer


def exact_length_texts(tokenize: Callable[[str], int], words: list[str], n: int, seq: int) -> list[str]:
    """``n`` distinct texts of exactly ``seq`` tokens (special tokens included) under ``tokenize``."""
    out = []
    for i in range(n):
        ws = words[(i * 37) % len(words):] + words
        lo, hi = 0, min(len(ws), seq)
        while lo < hi:  # largest prefix that fits
            mid = (lo + hi + 1) // 2
            if tokenize(" ".join(ws[:mid])) <= seq:
                lo = mid
            else:
                hi = mid - 1
        text = " ".join(ws[:lo])
        while tokenize(text) < seq:
            text += " a"
        if tokenize(text) != seq:
            raise BgeExportError(f"could not build a text of exactly {seq} tokens")
        out.append(text)
    return out


def bundle_workload(bundle: Path, meta: dict, model) -> Workload:
    """The Workload of a bench run: texts counted with the tokenizer of ``bundle`` (manifest data ``meta``) and
    its runtime ``model``."""
    tok = Tokenizer(Path(bundle) / meta["tokenizer"]["dir"], pad_token_id=meta["tokenizer"]["pad_token_id"],
                    padding_side=meta["tokenizer"]["padding_side"])

    words = " ".join(parity_texts()["corpus"]).split()
    n_tok = lambda text: len(tok.encode([text], 100_000)[0].ids)  # noqa: E731
    return Workload(lambda n, length, offset=0: exact_length_texts(n_tok, words[offset * 101:] + words, n, length),
                    n_tok, model)
