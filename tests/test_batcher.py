"""runtimes.batcher on a fake engine: ordering, padding sides, per-item outputs, pooled groups."""
import numpy as np
import pytest

from runtimes.batcher import Batcher
from runtimes.errors import InputError
from runtimes.tokenizer import Encoded, Tokenizer


class FakeTokenizer:
    pad = Tokenizer.pad  # the real padding code; it reads pad_token_id and padding_side only

    def __init__(self, padding_side="right"):
        self.pad_token_id, self.padding_side = 0, padding_side


class FakeBackend:
    """Outputs: 'total' (batch,) = sum of ids; 'ids' (batch, sequence) = ids as floats; 'pairs' (batch, sequence,
    2) = (id, position); records every feed dict it ran."""

    output_specs = [{"name": "total", "axes": ["batch"]}, {"name": "ids", "axes": ["batch", "sequence"]},
                    {"name": "pairs", "axes": ["batch", "sequence", 2]}]

    def __init__(self):
        self.calls = []

    def infer(self, feeds):
        self.calls.append(feeds)
        ids = feeds["input_ids"].astype(np.float32)
        pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.float32), ids.shape)
        return {"total": ids.sum(1), "ids": ids, "pairs": np.stack([ids, pos], -1)}


def items(lengths, extra=False):
    out = []
    for i, n in enumerate(lengths):
        ids = [10 * (i + 1) + j for j in range(n)]
        out.append(Encoded(ids, [0] * n, {"query_lengths": i} if extra else {}))
    return out


def batcher(side="right", names=("input_ids", "attention_mask"), multiple=None):
    backend = FakeBackend()
    return Batcher(backend, FakeTokenizer(side), list(names), pad_to_multiple_of=multiple), backend


@pytest.mark.parametrize("side", ["right", "left"])
def test_sorted_batches_give_every_output_back_in_input_order(side):
    b, backend = batcher(side)
    seqs = items([2, 5, 1, 4, 3])
    results = b.run(seqs, batch_size=2)
    assert [c["input_ids"].shape for c in backend.calls] == [(2, 5), (2, 3), (1, 1)]  # descending length
    assert len(results) == 5
    for e, out in zip(seqs, results):
        assert set(out) == {"total", "ids", "pairs"}
        assert out["total"] == sum(e.ids)
        assert out["ids"].tolist() == e.ids  # cut to the item's own positions on its padding side
        assert out["pairs"][:, 0].tolist() == e.ids
    assert results.stack("total").tolist() == [sum(e.ids) for e in seqs]
    with pytest.raises(InputError, match="sequence axis"):
        results.stack("ids")
    assert results[-1]["ids"].tolist() == seqs[-1].ids
    assert [r["ids"].tolist() for r in results[1:3]] == [seqs[1].ids, seqs[2].ids]


def test_keep_order_keeps_the_callers_batches_and_their_padding():
    b, backend = batcher()
    seqs = items([2, 5, 1, 4, 3])
    batches = list(b.batches(seqs, 2, keep_order=True))
    assert [bt.indices.tolist() for bt in batches] == [[0, 1], [2, 3], [4]]
    assert [c["input_ids"].shape for c in backend.calls] == [(2, 5), (2, 4), (1, 3)]
    first = batches[0]
    assert first.length == 5 and first.outputs["ids"].shape == (2, 5)  # the padded batch, as the engine gave it
    assert first.feeds["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1] * 5]
    assert first.output("ids", 0).tolist() == seqs[0].ids


def test_batches_run_lazily():
    b, backend = batcher()
    it = b.batches(items([1, 2, 3]), 1, keep_order=True)
    assert backend.calls == []
    next(it)
    assert len(backend.calls) == 1


def test_left_padding_positions_and_multiple():
    b, backend = batcher("left", multiple=4)
    seqs = items([2, 5])
    results = b.run(seqs, batch_size=2)
    assert backend.calls[0]["input_ids"].shape == (2, 8)
    assert backend.calls[0]["attention_mask"][1].tolist() == [0] * 6 + [1, 1]  # row 1: the shorter, sorted last
    assert results[0]["ids"].tolist() == seqs[0].ids
    assert results[0]["pairs"][:, 1].tolist() == [6, 7]  # the positions it really held
    assert results.batches[0].positions(1) == slice(6, 8)


def test_extra_inputs_and_output_filter():
    b, backend = batcher(names=("input_ids", "attention_mask", "query_lengths"))
    seqs = items([3, 1, 2], extra=True)
    results = b.run(seqs, batch_size=3, outputs=["total"])
    assert backend.calls[0]["query_lengths"].tolist() == [0, 2, 1]  # sorted rows carry their own extras
    assert backend.calls[0]["query_lengths"].dtype == np.int64
    assert set(results[0]) == {"total"}
    assert b.feeds(seqs[:1]).keys() == {"input_ids", "attention_mask", "query_lengths"}


def test_map_finishes_each_item_in_input_order():
    b, _ = batcher()
    seqs = items([1, 3, 2])
    assert b.map(seqs, 2, lambda out, item: (len(item.ids), out["ids"].tolist())) == \
        [(len(e.ids), e.ids) for e in seqs]


def test_groups_are_pooled_into_shared_batches():
    b, backend = batcher()
    a, c = items([1, 4]), items([3, 2, 5])
    out = b.run_groups([a, c], batch_size=4)
    assert len(backend.calls) == 2  # five sequences of two calls in two engine batches
    assert [[r["ids"].tolist() for r in group] for group in out] == [[e.ids for e in a], [e.ids for e in c]]
