"""Tokenization without transformers: the bundle's ``tokenizer.json`` run by the `tokenizers` library.

Matches ``AutoTokenizer(...)(texts, truncation=True, max_length=n)`` of the fast HF tokenizer the bundle was
built from (the parity suite checks the ids), then pads batches on the manifest's padding side.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtimes._optional import require


@dataclass
class Encoded:
    """Unpadded token ids of one text."""

    ids: list[int]
    type_ids: list[int]
    extra: dict = field(default_factory=dict)  # per-row scalar graph inputs (e.g. query_lengths)
    truncated: bool | None = None  # whether truncation cut the text (None: not recorded)


class Tokenizer:
    def __init__(self, folder: Path, *, pad_token_id: int, padding_side: str, truncation_side: str = "right"):
        self._json = (Path(folder) / "tokenizer.json").read_text(encoding="utf-8")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        # Truncation is a setting of a tokenizers.Tokenizer; one configured instance per max_length, never
        # changed after creation, keeps concurrent encode calls with different lengths correct.
        self._by_length: dict[int, object] = {}
        self._lock = threading.Lock()

    def _for_length(self, max_length: int):
        tok = self._by_length.get(max_length)
        if tok is None:
            with self._lock:
                tok = self._by_length.get(max_length)
                if tok is None:
                    tok = require("tokenizers").Tokenizer.from_str(self._json)
                    tok.no_padding()
                    tok.enable_truncation(max_length, strategy="longest_first", direction=self.truncation_side)
                    self._by_length[max_length] = tok
        return tok

    def encode(self, texts: list[str], max_length: int) -> list[Encoded]:
        encodings = self._for_length(max_length).encode_batch(texts, add_special_tokens=True)
        return [Encoded(e.ids, e.type_ids, truncated=bool(e.overflowing)) for e in encodings]

    def encode_plain(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        """``tokenizer(texts, add_special_tokens=False[, truncation=True, max_length=n])['input_ids']``."""
        tok = self._for_length(max_length if max_length is not None else 1 << 30)
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    def count(self, texts: list[str]) -> list[int]:
        """Each text's token count with the special tokens of one sequence, untruncated."""
        return [len(e.ids) for e in self._for_length(1 << 30).encode_batch(texts, add_special_tokens=True)]

    def details(self, texts: list[str], add_special_tokens: bool = True) -> list[list[dict]]:
        """text-embeddings-inference's /tokenize: each token's id, text, whether it is special, and its character
        span in the input (start, stop)."""
        out = []
        for text, e in zip(texts, self._for_length(1 << 30).encode_batch(texts, add_special_tokens=add_special_tokens)):
            tokens = []
            for tid, token, special, (start, stop) in zip(e.ids, e.tokens, e.special_tokens_mask, e.offsets):
                tokens.append({"id": tid, "text": token if special else text[start:stop], "special": bool(special),
                               "start": None if special else start, "stop": None if special else stop})
            out.append(tokens)
        return out

    def vocab_size(self) -> int:
        return self._for_length(1 << 30).get_vocab_size(with_added_tokens=True)

    def decode_plain(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """The tokenizers library's decode (text-embeddings-inference's /decode)."""
        return self._for_length(1 << 30).decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_one(self, token_id: int, clean_up_tokenization_spaces: bool) -> str:
        """``tokenizer.decode([token_id])`` as transformers does it (special tokens kept)."""
        return self.decode([token_id], clean_up_tokenization_spaces)

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool) -> str:
        """``tokenizer.decode(ids)`` as transformers does it (special tokens kept)."""
        text = self._for_length(1 << 30).decode(ids, skip_special_tokens=False)
        if clean_up_tokenization_spaces:  # transformers' clean_up_tokenization
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def encode_pairs(self, queries: list[str], passages: list[str], query_max_length: int, max_length: int) -> list[Encoded]:
        """FlagReranker's pair building: the query cut to ``query_max_length`` and the passage to ``max_length``
        (both without special tokens), then the pair framed by the tokenizer's template and cut to ``max_length``
        by shortening the passage only ('only_second'; left alone if the passage is too short to absorb it)."""
        q_tok, p_tok = self._for_length(query_max_length), self._for_length(max_length)
        qs = q_tok.encode_batch(queries, add_special_tokens=False)
        ps = p_tok.encode_batch(passages, add_special_tokens=False)
        special = p_tok.num_special_tokens_to_add(is_pair=True)
        out = []
        for q, p in zip(qs, ps):
            cut = bool(q.overflowing or p.overflowing)
            excess = len(q.ids) + len(p.ids) + special - max_length
            if 0 < excess < len(p.ids):
                p.truncate(len(p.ids) - excess, direction=self.truncation_side)
                cut = True
            pair = p_tok.post_process(q, p, add_special_tokens=True)
            out.append(Encoded(pair.ids, pair.type_ids, truncated=cut))
        return out

    def pad(self, batch: list[Encoded], pad_to_multiple_of: int | None = None) -> dict[str, np.ndarray]:
        """Pad to the longest member (rounded up to ``pad_to_multiple_of``): input_ids, attention_mask,
        token_type_ids (int64, (B, L))."""
        n, length = len(batch), max(len(e.ids) for e in batch)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((n, length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        for i, e in enumerate(batch):
            k = len(e.ids)
            sl = slice(0, k) if self.padding_side == "right" else slice(length - k, length)
            ids[i, sl] = e.ids
            mask[i, sl] = 1
            types[i, sl] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
