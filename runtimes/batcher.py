"""The one seam between token sequences and the engine: padded batches in, every output of every item back.

A family runtime turns a call into token sequences (``runtimes.tokenizer.Encoded``: ids, type ids, per-row extra
inputs such as ``query_lengths``) and hands them to a :class:`Batcher`, which

* orders them (by descending length, so that a batch pads little; or in the caller's order when a family's result
  depends on which items share a batch, as BGEM3FlagModel.compute_score's ColBERT scores do),
* cuts the order into batches of at most ``batch_size`` rows (or ``max_tokens`` padded tokens), and also where the
  lengths jump, so that padding stays a small part of every batch (:class:`Padding`: the same rule the server's
  engine worker forms batches by), pads each on the tokenizer's padding side (rounded up to
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
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Padding:
    """Which sequences may share an engine batch: the padding-aware rule of in-process calls and of the server.

    A batch pads every row to its longest, and on a CPU every padded token costs as much as a real one, so a batch
    of a 5-token query and a 200-token passage spends 49% of its work on padding. The rule: a batch takes a
    sequence only while its **padding efficiency** (real tokens / padded tokens) stays at or above
    ``min_efficiency``, besides the row and token limits. A row shorter than ``short`` tokens counts as ``short``
    tokens on both sides of that ratio: the engine spends about as much on a row of 3 tokens as on one of
    ``short`` (its fixed cost per row and per call), so short queries still share a batch. ``min_efficiency`` 0
    turns the rule off (rows up to the limits, the plain length-sorted cut).

    In-process calls cut their length-sorted items with :meth:`cut`; the server's engine worker grows each batch
    from the oldest queued sequence with :meth:`grow` (nothing waits behind more than the queue ahead of it)."""

    min_efficiency: float = 0.8
    short: int = 8
    pad_to_multiple_of: int | None = None

    def padded(self, longest: int, rows: int) -> int:
        """Padded tokens of ``rows`` rows whose longest has ``longest`` tokens (rounded up to the multiple)."""
        m = self.pad_to_multiple_of
        return (-(-longest // m) * m if m else longest) * rows

    def efficiency(self, lengths: Sequence[int]) -> float:
        """Real tokens / padded tokens of one batch of these lengths (the true ratio, no floor)."""
        return sum(lengths) / max(1, self.padded(max(lengths), len(lengths)))

    def _admit(self, real: int, rows: int, longest: int, length: int, max_tokens: int | None,
               max_rows: int | None) -> float | None:
        """The batch's floored efficiency with one more row of ``length`` tokens, or None when the row may not join
        a batch of ``rows`` rows, ``real`` floored real tokens and longest ``longest``."""
        rows += 1
        longest = max(longest, length)
        if (max_rows and rows > max_rows) or (max_tokens and self.padded(longest, rows) > max_tokens):
            return None
        # the ratio against the unrounded longest: rounding up to pad_to_multiple_of is the same for any composition
        eff = (real + max(length, self.short)) / (max(longest, self.short) * rows)
        return eff if eff >= self.min_efficiency else None

    def cut(self, lengths: Sequence[int], *, max_rows: int | None = None, max_tokens: int | None = None) -> list[int]:
        """Batch sizes for ``lengths`` sorted by descending length: each batch as many rows as the limits and the
        efficiency allow (at least one)."""
        sizes, start, n = [], 0, len(lengths)
        while start < n:
            longest = lengths[start]
            real, rows = max(longest, self.short), 1
            while start + rows < n:
                length = lengths[start + rows]
                if self._admit(real, rows, longest, length, max_tokens, max_rows) is None:
                    break
                real += max(length, self.short)
                rows += 1
            sizes.append(rows)
            start += rows
        return sizes

    def grow(self, lengths: Sequence[int], anchor: int = 0, *, max_rows: int | None = None,
             max_tokens: int | None = None) -> list[int]:
        """One batch from a queue of sequence lengths (in arrival order): the ``anchor`` (the oldest) and the
        queued sequences nearest it in length, taken one at a time from just below or just above the batch's range,
        whichever keeps the efficiency higher (the longer one on a tie), while the rule allows. Returns queue
        indices by descending length, arrival order among equals (the rows of a lone request come out in the order
        :meth:`cut` gives them)."""
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        lo = hi = order.index(anchor)
        longest = lengths[anchor]
        real, rows = max(longest, self.short), 1
        while True:
            best = None
            for j in (hi + 1, lo - 1):
                if 0 <= j < len(order):
                    eff = self._admit(real, rows, longest, lengths[order[j]], max_tokens, max_rows)
                    if eff is not None and (best is None or eff > best[0]):
                        best = (eff, j)
            if best is None:
                break
            j = best[1]
            lo, hi = min(lo, j), max(hi, j)
            longest = max(longest, lengths[order[j]])
            real += max(lengths[order[j]], self.short)
            rows += 1
        return sorted(order[lo:hi + 1], key=lambda i: (-lengths[i], i))


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
    applies); ``input_names`` are the engine's inputs; ``pad_to_multiple_of`` rounds the padded length up;
    ``padding`` is the rule that decides which sequences share a batch (:class:`Padding`)."""

    def __init__(self, backend, tokenizer, input_names: list[str], *, pad_to_multiple_of: int | None = None,
                 padding: Padding | None = None):
        self.backend = backend
        self.tokenizer = tokenizer
        self.input_names = list(input_names)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.rule = padding or Padding()
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

    @property
    def padding(self) -> Padding:
        """The batch rule with this batcher's current ``pad_to_multiple_of``."""
        if self.rule.pad_to_multiple_of != self.pad_to_multiple_of:
            self.rule = replace(self.rule, pad_to_multiple_of=self.pad_to_multiple_of)
        return self.rule

    def plan(self, items: Sequence, batch_size: int, *, keep_order: bool = False,
             max_tokens: int | None = None) -> list[np.ndarray]:
        """The item indices of each batch: by descending length (stable), cut by :class:`Padding` into batches of
        at most ``batch_size`` rows (or ``max_tokens`` padded tokens, when given); or in the items' order with
        ``keep_order``, ``batch_size`` rows each (the caller's batch composition: items [0, batch_size) first, and
        so on)."""
        if keep_order:
            order = np.arange(len(items))
            return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        order = self.longest_first(items)
        sizes = self.padding.cut([len(items[i].ids) for i in order], max_rows=None if max_tokens else batch_size,
                                 max_tokens=max_tokens)
        bounds = np.cumsum([0] + sizes)
        return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def batches(self, items: Sequence, batch_size: int, *, keep_order: bool = False,
                outputs: Sequence[str] | None = None, max_tokens: int | None = None) -> Iterator[EngineBatch]:
        """The engine batches of ``items``, each run when it is reached (a caller can finish one batch before the
        next runs, and drop it); ``max_tokens`` batches by padded tokens instead of ``batch_size`` rows."""
        for indices in self.plan(items, batch_size, keep_order=keep_order, max_tokens=max_tokens):
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
        return self.padding.padded(longest, rows)

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
