"""The padding-aware batch rule (runtimes.batcher.Padding) and the server's engine worker that forms batches by it,
on a fake engine: bounded padding for a given queue, the same batches in-process and for a lone request, and no
starvation of a long request behind a stream of short ones."""
import random
import threading
import time

import numpy as np
import pytest

from runtimes.batcher import Batcher, Job, Padding
from runtimes.server.engine import EngineWorker
from runtimes.server.metrics import Metrics
from tests.test_batcher import FakeBackend, FakeTokenizer, items


def floored_efficiency(rule: Padding, lengths) -> float:
    """The rule's ratio: rows floored at ``short`` tokens, against the unrounded longest."""
    return sum(max(n, rule.short) for n in lengths) / (max(max(lengths), rule.short) * len(lengths))


def batches_of(lengths, sizes):
    out, start = [], 0
    for n in sizes:
        out.append(lengths[start:start + n])
        start += n
    return out


def test_cut_splits_where_the_lengths_jump():
    rule = Padding(min_efficiency=0.8, short=8)
    lengths = [200, 190, 180, 20, 18, 15, 5, 3]
    assert batches_of(lengths, rule.cut(lengths)) == [[200, 190, 180], [20, 18, 15], [5, 3]]
    # rows under `short` tokens count as `short`: a 5 and a 3 share a batch (one engine call, not two)
    assert rule.cut([5, 3, 1]) == [3]
    # rounding up to a multiple is the same for every composition: equal rows always share a batch
    assert Padding(pad_to_multiple_of=8).cut([9] * 10) == [10]


def test_cut_keeps_every_batch_within_the_limits_and_the_efficiency():
    rng = random.Random(1)
    rule = Padding(min_efficiency=0.8, short=8, pad_to_multiple_of=8)
    for _ in range(50):
        lengths = sorted((rng.randint(1, 300) for _ in range(rng.randint(1, 200))), reverse=True)
        sizes = rule.cut(lengths, max_rows=32, max_tokens=2048)
        assert sum(sizes) == len(lengths)
        for batch in batches_of(lengths, sizes):
            assert len(batch) <= 32
            assert len(batch) == 1 or rule.padded(batch[0], len(batch)) <= 2048
            assert floored_efficiency(rule, batch) >= 0.8


def test_efficiency_zero_is_the_plain_length_sorted_cut():
    rule = Padding(min_efficiency=0)
    lengths = sorted([300, 2, 150, 7, 90, 1, 64], reverse=True)
    assert rule.cut(lengths, max_rows=3) == [3, 3, 1]
    assert rule.cut(lengths, max_tokens=900) == [3, 4]  # 3 x 300 = 900 fits, a fourth row would not; 4 x 64 fit


def test_a_queue_gives_a_batch_of_bounded_padding_around_its_oldest_sequence():
    rule = Padding(min_efficiency=0.8, short=8)
    queue = [100, 5, 95, 300, 98, 6, 120, 40]  # arrival order
    batch = rule.grow(queue, 0, max_tokens=4096)
    assert batch == [6, 0, 4, 2]  # 120, 100, 98, 95: the oldest and its nearest lengths, longest first
    assert rule.efficiency([queue[i] for i in batch]) >= 0.8
    assert rule.grow(queue, 1, max_tokens=4096) == [5, 1]  # a short query batches with the other short one
    assert rule.grow(queue, 3, max_tokens=4096) == [3]  # nothing is near 300 tokens
    assert rule.grow(queue, 0, max_tokens=250) == [0, 4]  # the token budget still bounds it: 100 and 98
    # arrival order decides among equal lengths
    assert rule.grow([7, 50, 50, 50], 1, max_rows=2) == [1, 2]


def test_a_lone_request_within_the_budget_gets_the_batches_of_the_in_process_call():
    rng = random.Random(7)
    rule = Padding(min_efficiency=0.8, short=8)
    for _ in range(30):
        lengths = sorted((rng.choice([rng.randint(1, 16), rng.randint(20, 250)]) for _ in range(rng.randint(1, 40))),
                         reverse=True)
        queue = list(lengths)  # the worker queues a request's sequences longest first
        served = []
        while queue:
            rows = rule.grow(queue, 0, max_tokens=16384)
            served.append([queue[i] for i in rows])
            queue = [n for i, n in enumerate(queue) if i not in set(rows)]
        assert served == batches_of(lengths, rule.cut(lengths, max_tokens=16384))


class GatedBackend(FakeBackend):
    """A fake engine whose first call waits for a gate, and that calls ``during(call number)`` inside each call."""

    def __init__(self, during=None):
        super().__init__()
        self.gate, self.entered, self.during = threading.Event(), threading.Event(), during

    def infer(self, feeds):
        self.entered.set()
        self.gate.wait(30)
        if self.during is not None:
            self.during(len(self.calls))
        return super().infer(feeds)


class Model:
    def __init__(self, backend, rule=None):
        self.batcher = Batcher(backend, FakeTokenizer(), ["input_ids", "attention_mask"], padding=rule)


def idle(worker) -> bool:
    with worker._cond:
        return not worker._queue


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the engine worker did not finish its queue in time"
        time.sleep(0.005)


def submit(worker, lengths, done_order, tag):
    job = Job(items(lengths), finish=lambda values: values)
    calls = worker.batcher.backend.calls
    return worker.submit(job, lambda t: done_order.append((tag, len(calls))))


def test_a_long_request_behind_a_stream_of_short_ones_is_not_starved():
    done: list = []  # (tag, engine calls so far) as requests finish
    extra = []

    def more_short_ones(call):  # 4 new short requests arrive during each of the first 40 engine calls
        if call < 40:
            extra.extend(submit(worker, [5, 6, 7], done, f"late-{call}-{k}") for k in range(4))

    backend = GatedBackend(more_short_ones)
    metrics = Metrics()
    worker = EngineWorker(Model(backend), max_batch_tokens=256, name="m", metrics=metrics)
    try:
        submit(worker, [8], done, "first")
        assert backend.entered.wait(30)
        for k in range(30):
            submit(worker, [5, 6, 7], done, f"early-{k}")
        submit(worker, [200], done, "long")
        backend.gate.set()
        wait_until(lambda: idle(worker) and len(done) == 32 + len(extra))
    finally:
        backend.gate.set()
        worker.stop(30)
    call = dict(done)
    assert len(extra) == 160
    # every batch takes the oldest queued sequence: the long one runs in the batch right after the last of the
    # sequences queued before it, alone (200 tokens pad no short query), while short ones keep arriving
    assert call["long"] == max(call[f"early-{k}"] for k in range(30)) + 1
    assert (1, 200) in [c["input_ids"].shape for c in backend.calls]
    assert sum(tag.startswith("late") and n > call["long"] for tag, n in done) > 100
    text = metrics.render()
    assert "bge_batch_padding_efficiency_bucket" in text and "bge_batch_real_tokens" in text


def test_the_engine_worker_batches_a_mixed_queue_by_length():
    backend = GatedBackend()
    worker = EngineWorker(Model(backend), max_batch_tokens=4096, name="m")
    done: list = []
    try:
        submit(worker, [3], done, "warm")
        assert backend.entered.wait(30)
        for k, lengths in enumerate([[120, 6], [5, 118], [119, 7, 4]]):
            submit(worker, lengths, done, k)
        backend.gate.set()
        wait_until(lambda: len(done) == 4)
    finally:
        backend.gate.set()
        worker.stop(30)
    shapes = [c["input_ids"].shape for c in backend.calls[1:]]
    assert shapes == [(3, 120), (4, 7)]  # the three long passages together, the four short queries together
    assert sorted(tag for tag, _ in done[1:]) == [0, 1, 2]


def test_padding_rule_values_are_checked_by_the_server_settings():
    state = pytest.importorskip("runtimes.server.state")
    from runtimes.errors import InputError

    with pytest.raises(InputError, match="min-padding-efficiency"):
        state.ServerSettings(min_padding_efficiency=1.5)
    assert state.ServerSettings(min_padding_efficiency=0).min_padding_efficiency == 0
    assert np.isclose(Padding().efficiency([10, 5]), 0.75)
