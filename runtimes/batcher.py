"""The one seam between token sequences and the engine: padded batches in, every output of every item back.

A family runtime turns a call into token sequences (``runtimes.tokenizer.Encoded``: ids, type ids, per-row extra
inputs such as ``query_lengths``) and hands them to a :class:`Batcher`, which

* orders them (by descending length, so that a batch pads little; or in the caller's order when a family's result
  depends on which items share a batch, as BGEM3FlagModel.compute_score's ColBERT scores do),
* cuts the order into batches of ``batch_size`` rows, pads each on the tokenizer's padding side (rounded up to
  ``pad_to_multiple_of``), adds the per-row extra inputs and runs ``backend.infer``,
* gives back, for every item, ALL of the engine's outputs: per item (sequence-axis outputs cut to the item's own
  positions, on the side its batch was padded), stacked in input order (outputs without a sequence axis), or as
  the padded engine batches themselves for a finishing step that needs them.

Nothing here knows a model family. A call becomes a :class:`Job` (its sequences, the outputs it reads, and the
step that turns each item's outputs into the call's result); :meth:`Batcher.execute` runs one job in-process, and a
server runs the items of many jobs in shared engine batches (``runtimes.server.engine``) and finishes each job
with the same step, so both give the same numbers. :meth:`Batcher.run_groups` pools several calls' items here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtimes.errors import InputError


@dataclass
class EngineBatch:
    """One engine call: which items it ran, in row order (``indices`` into the run's items, and the ``items``), its
    padded inputs (``feeds``: input_ids, attention_mask, token_type_ids and the extra per-row inputs), the engine's
    ``outputs`` (padded, as the engine returned them), the padded ``length``, the side it was padded on, and
    ``sequence_axes`` (output name -> its sequence axis, for the outputs that have one)."""

    indices: np.ndarray
    items: list
    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    length: int
    padding_side: str
    sequence_axes: dict[str, int]

    def positions(self, row: int) -> slice:
        """The padded positions that hold row ``row``'s own tokens."""
        n = len(self.items[row].ids)
        return slice(self.length - n, self.length) if self.padding_side == "left" else slice(0, n)

    def output(self, name: str, row: int) -> np.ndarray:
        """Output ``name`` of row ``row``: a view, cut to the row's own positions on a sequence axis."""
        value = self.outputs[name][row]
        ax = self.sequence_axes.get(name)
        if ax is None:
            return value
        index = [slice(None)] * value.ndim
        index[ax - 1] = self.positions(row)  # the row's axes lose the batch axis
        return value[tuple(index)]

    def item(self, row: int) -> dict[str, np.ndarray]:
        """Every output of row ``row`` (see :meth:`output`)."""
        return {name: self.output(name, row) for name in self.outputs}


class Results(Sequence):
    """The outputs of one :meth:`Batcher.run`, in the items' order: ``results[i]`` is item i's dict of outputs
    (output name -> array, sequence axes cut to its own positions); ``stack(name)`` is one output of every item as
    one array (outputs without a sequence axis); ``batches`` are the engine batches as they ran."""

    def __init__(self, batches: list[EngineBatch], count: int):
        self.batches = batches
        self._count = count
        self._where: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if self._where is None:
            where = [(0, 0)] * self._count
            for b, batch in enumerate(self.batches):
                for row, index in enumerate(batch.indices):
                    where[index] = (b, row)
            self._where = where
        if not -self._count <= i < self._count:
            raise IndexError(f"item {i} of {self._count}")
        b, row = self._where[i if i >= 0 else i + self._count]
        return self.batches[b].item(row)

    def stack(self, name: str) -> np.ndarray:
        """Output ``name`` of every item, stacked in the items' order (a fresh array)."""
        if not self.batches:
            raise InputError("no items were run: nothing to stack")
        if name in self.batches[0].sequence_axes:
            raise InputError(f"output '{name}' has a sequence axis, its items differ in length: index the results "
                             "per item instead of stacking them")
        order = np.concatenate([b.indices for b in self.batches])
        out = np.concatenate([b.outputs[name] for b in self.batches], axis=0)
        if np.array_equal(order, np.arange(len(order))):
            return out
        result = np.empty_like(out)
        result[order] = out
        return result


@dataclass
class Job:
    """One API call, as the batcher sees it.

    ``items``: its token sequences; ``outputs``: the engine outputs it reads (None: all); ``per_item(outputs,
    item)``: the finishing step of one item, run as soon as its batch ran (None: keep the outputs as they are);
    ``finish(values)``: the per-item values in the items' order -> the call's result; ``batch_size``: rows per
    engine batch in-process. A job whose result depends on which items share a batch (BGEM3FlagModel.compute_score)
    sets ``exclusive(batcher)`` instead: it runs its own batches and returns the result, and is never pooled."""

    items: list
    finish: Callable[[list], Any]
    outputs: tuple[str, ...] | None = None
    batch_size: int = 256
    per_item: Callable[[dict, Any], Any] | None = None
    exclusive: Callable[["Batcher"], Any] | None = None

    @property
    def tokens(self) -> int:
        """The job's tokens, unpadded."""
        return sum(len(e.ids) for e in self.items)

    def finish_item(self, outputs: dict, item) -> Any:
        return outputs if self.per_item is None else self.per_item(outputs, item)


class Batcher:
    """Pads token sequences into engine batches and runs them on ``backend``.

    ``tokenizer`` pads (its ``padding_side`` and ``pad_token_id`` are read at each batch, so a side changed later
    applies); ``input_names`` are the engine's inputs; ``pad_to_multiple_of`` rounds the padded length up."""

    def __init__(self, backend, tokenizer, input_names: list[str], *, pad_to_multiple_of: int | None = None):
        self.backend = backend
        self.tokenizer = tokenizer
        self.input_names = list(input_names)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.sequence_axes = {spec["name"]: list(spec["axes"]).index("sequence")
                              for spec in getattr(backend, "output_specs", []) if "sequence" in spec["axes"]}

    # --- one batch ---------------------------------------------------------------------------------------
    def _pad(self, items: Sequence) -> dict[str, np.ndarray]:
        padded = self.tokenizer.pad(items, self.pad_to_multiple_of)
        for name in items[0].extra:
            padded[name] = np.array([e.extra[name] for e in items], dtype=np.int64)
        return padded

    def feeds(self, items: Sequence) -> dict[str, np.ndarray]:
        """The engine feeds of one batch: the items padded together, plus their extra per-row inputs."""
        padded = self._pad(items)
        return {name: padded[name] for name in self.input_names}

    def run_batch(self, items: Sequence, indices, outputs: Sequence[str] | None = None) -> EngineBatch:
        """Pad ``items`` (the run's items at ``indices``, in that order) into one batch and run it; ``outputs``
        keeps only those engine outputs (all by default)."""
        side = self.tokenizer.padding_side
        padded = self._pad(items)
        result = self.backend.infer({name: padded[name] for name in self.input_names})
        if outputs is not None:
            result = {name: result[name] for name in outputs}
        return EngineBatch(np.asarray(indices), list(items), padded, result, padded["input_ids"].shape[1], side,
                           self.sequence_axes)

    # --- many ------------------------------------------------------------------------------------------
    @staticmethod
    def longest_first(items: Sequence) -> np.ndarray:
        """The item indices by descending length, equal lengths in the items' order."""
        return np.argsort([-len(e.ids) for e in items], kind="stable")

    @staticmethod
    def plan(items: Sequence, batch_size: int, *, keep_order: bool = False) -> list[np.ndarray]:
        """The item indices of each batch: by descending length (stable), or in the items' order with
        ``keep_order`` (the caller's batch composition: items [0, batch_size) first, and so on)."""
        order = np.arange(len(items)) if keep_order else Batcher.longest_first(items)
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

    def plan_tokens(self, items: Sequence, max_tokens: int) -> list[np.ndarray]:
        """The item indices of each batch by a token budget: by descending length (stable), each batch as many
        items as fit ``max_tokens`` padded tokens (at least one)."""
        order = self.longest_first(items)
        out, start = [], 0
        while start < len(order):
            longest = len(items[order[start]].ids)  # the first of a batch is its longest
            rows = max(1, max_tokens // max(1, self.padded_tokens(longest, 1)))
            out.append(order[start:start + rows])
            start += rows
        return out

    def batches(self, items: Sequence, batch_size: int, *, keep_order: bool = False,
                outputs: Sequence[str] | None = None, max_tokens: int | None = None) -> Iterator[EngineBatch]:
        """The engine batches of ``items``, each run when it is reached (a caller can finish one batch before the
        next runs, and drop it); ``max_tokens`` batches by padded tokens instead of ``batch_size`` rows."""
        plan = self.plan_tokens(items, max_tokens) if max_tokens else self.plan(items, batch_size,
                                                                                keep_order=keep_order)
        for indices in plan:
            yield self.run_batch([items[i] for i in indices], indices, outputs)

    def run(self, items: Sequence, batch_size: int, *, keep_order: bool = False,
            outputs: Sequence[str] | None = None) -> Results:
        """Run every item; their outputs in the items' order (see :class:`Results`). ``outputs`` keeps only those
        engine outputs (all by default)."""
        return Results(list(self.batches(items, batch_size, keep_order=keep_order, outputs=outputs)), len(items))

    def map(self, items: Sequence, batch_size: int, finish: Callable[[dict, object], object], *,
            keep_order: bool = False, outputs: Sequence[str] | None = None, max_tokens: int | None = None) -> list:
        """``finish(item_outputs, item)`` for every item, in the items' order; each engine batch is finished as
        soon as it ran and then dropped, so only the finished results stay in memory."""
        done: list = [None] * len(items)
        for batch in self.batches(items, batch_size, keep_order=keep_order, outputs=outputs, max_tokens=max_tokens):
            for row, index in enumerate(batch.indices):
                done[index] = finish(batch.item(row), items[index])
        return done

    def execute(self, job: Job, max_tokens: int | None = None) -> Any:
        """Run one job in-process: its items in batches of ``job.batch_size`` sorted by length (or of up to
        ``max_tokens`` padded tokens), each finished as its batch ran; then the job's result."""
        if job.exclusive is not None:
            return job.exclusive(self)
        return job.finish(self.map(job.items, job.batch_size, job.finish_item, outputs=job.outputs,
                                   max_tokens=max_tokens))

    def padded_tokens(self, longest: int, rows: int) -> int:
        """What a batch of ``rows`` rows whose longest has ``longest`` tokens costs the engine, padding included."""
        m = self.pad_to_multiple_of
        return (-(-longest // m) * m if m else longest) * rows

    def run_groups(self, groups: Sequence[Sequence], batch_size: int) -> list[list[dict[str, np.ndarray]]]:
        """Pool the items of several groups (e.g. the sequences of several requests) into one set of engine
        batches, sorted by length across groups; each group gets its items' outputs back, in its own order."""
        pooled = [e for group in groups for e in group]
        results = self.run(pooled, batch_size)
        out, start = [], 0
        for group in groups:
            out.append(results[start:start + len(group)])
            start += len(group)
        return out
