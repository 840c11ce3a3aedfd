"""One engine worker per bundle: a queue of token sequences from every request, cut into batches of similar lengths.

text-embeddings-inference's design with a padding-aware batch: requests are tokenized off the event loop and their
sequences queued; when the engine is free the worker forms one batch around the **oldest** queued sequence from the
queued sequences nearest it in length (``runtimes.batcher.Padding.grow``), up to ``max_batch_tokens`` padded tokens
(rows x the longest, rounded up to the bundle's ``pad_to_multiple_of``) and while the batch's padding efficiency
(real tokens / padded tokens) stays at or above the rule's minimum. Sequences of different requests share a batch,
a short query waits for no long passage to pad it, and every batch takes the oldest sequence, so nothing waits
behind more than the sequences queued before it (no starvation). No wait timer: a lone request runs at once, in
the batches the in-process call would run when its sequences fit one budget. A sequence above a default budget runs
alone (a reranker's pair, an in-context query can exceed the model's max_length); above a budget the user set, it is
refused. Sequences of a request whose client went away are dropped before they
reach the engine. The engine (ONNX Runtime, OpenVINO) releases the GIL while it runs, so the event loop and the
tokenizer threads keep going.

A job whose result depends on which items share a batch (``Job.exclusive``: BGEM3FlagModel.compute_score) runs
alone, in its own batches, when it reaches the head of the queue.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from runtimes.batcher import Job
from runtimes.errors import InputError

log = logging.getLogger("bge_export.server")

WINDOW = 4096  # queued sequences a batch is chosen from (the default --max-concurrent-requests allows 512)


class WorkerStopped(RuntimeError):
    """The worker no longer takes work (the server is shutting down)."""


class Ticket:
    """One request's job in flight: its items' raw outputs as batches hand them back, its timings, and how the
    request learns it is done (``on_done(ticket)`` is called once, from the worker thread)."""

    __slots__ = ("job", "outputs", "remaining", "cancelled", "submitted", "started", "ended", "error", "value",
                 "on_done")

    def __init__(self, job: Job, on_done: Callable[["Ticket"], None]):
        self.job = job
        self.outputs: list[dict | None] = [None] * len(job.items)
        self.remaining = len(job.items)
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.started: float | None = None  # the first batch holding one of its items began
        self.ended: float | None = None
        self.error: BaseException | None = None
        self.value: Any = None  # an exclusive job's result
        self.on_done = on_done

    @property
    def queue_seconds(self) -> float:
        return ((self.started or self.ended or time.perf_counter()) - self.submitted)

    @property
    def inference_seconds(self) -> float:
        return (self.ended - self.started) if self.started is not None and self.ended is not None else 0.0

    def finish(self) -> Any:
        """The job's result (the call's return value): its finishing steps on the outputs (not on the worker)."""
        if self.error is not None:
            raise self.error
        if self.job.exclusive is not None:
            return self.value
        job = self.job
        return job.finish([job.finish_item(out, item) for out, item in zip(self.outputs, job.items)])


class _Entry:
    __slots__ = ("ticket", "index", "length")

    def __init__(self, ticket: Ticket, index: int, length: int):
        self.ticket, self.index, self.length = ticket, index, length


def _ticket(entry) -> Ticket:
    return entry.ticket if isinstance(entry, _Entry) else entry


class EngineWorker:
    """Runs one bundle's engine on its own thread. ``submit`` is thread-safe; ``stop`` finishes what was queued."""

    def __init__(self, model, *, max_batch_tokens: int, name: str, metrics=None, strict: bool = True):
        self.batcher = model.batcher
        self.max_batch_tokens = int(max_batch_tokens)
        self.strict = strict  # refuse a sequence above the budget (a budget the user set); else it runs alone
        self.name = name
        self.metrics = metrics
        self._queue: deque[_Entry | Ticket] = deque()  # an exclusive job sits in the queue as its Ticket
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # --- producer side ------------------------------------------------------------------------------------
    def check(self, job: Job) -> None:
        """Refuse a job that can never be batched: a sequence above the token budget on its own."""
        if job.exclusive is not None or not self.strict:
            return
        longest = max((len(e.ids) for e in job.items), default=0)
        if self.batcher.padded_tokens(longest, 1) > self.max_batch_tokens:
            raise InputError(f"an input takes {longest} tokens, above this server's --max-batch-tokens "
                             f"{self.max_batch_tokens}; shorten it, send truncate=true, or restart the server with a "
                             "larger --max-batch-tokens")

    def submit(self, job: Job, on_done: Callable[[Ticket], None]) -> Ticket:
        self.check(job)
        ticket = Ticket(job, on_done)
        with self._cond:
            if self._stopping:
                raise WorkerStopped(f"the engine of '{self.name}' is shutting down; retry on another replica")
            if job.exclusive is not None:
                self._queue.append(ticket)
            else:
                # the request's own sequences longest first, in the in-process batcher's order
                for i in self.batcher.longest_first(job.items):
                    self._queue.append(_Entry(ticket, int(i), len(job.items[i].ids)))
            self._gauge()
            self._cond.notify()
        return ticket

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Run what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    # --- the engine thread ----------------------------------------------------------------------------------
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_size(self.name, len(self._queue))

    def _next(self) -> list[_Entry] | Ticket | None:
        """The next batch (entries of live requests within the budget), an exclusive ticket, or None to stop."""
        with self._cond:
            while True:
                while self._queue and _ticket(self._queue[0]).cancelled:
                    self._drop(self._queue.popleft())
                if self._queue:
                    break
                if self._stopping:
                    return None
                self._cond.wait()
            if isinstance(self._queue[0], Ticket):
                ticket = self._queue.popleft()
                self._gauge()
                return ticket
            window: list[_Entry] = []  # live sequences in arrival order (the head is one), up to an exclusive job
            for entry in self._queue:
                if isinstance(entry, Ticket) or len(window) == WINDOW:
                    break
                if not entry.ticket.cancelled:
                    window.append(entry)
            rows = self.batcher.padding.grow([e.length for e in window], 0, max_tokens=self.max_batch_tokens)
            batch = [window[i] for i in rows]
            taken = {id(e) for e in batch}
            kept: deque[_Entry | Ticket] = deque()
            for entry in self._queue:
                if id(entry) in taken:
                    continue
                if isinstance(entry, _Entry) and entry.ticket.cancelled:
                    self._drop(entry)
                else:
                    kept.append(entry)
            self._queue = kept
            self._gauge()
            return batch

    def _drop(self, entry) -> None:
        ticket = _ticket(entry)
        if self.metrics is not None:
            self.metrics.dropped(self.name)
        ticket.remaining = ticket.remaining - 1 if isinstance(entry, _Entry) else 0
        if ticket.remaining == 0 and ticket.ended is None:
            ticket.ended = time.perf_counter()
            ticket.on_done(ticket)

    def _loop(self) -> None:
        while True:
            work = self._next()
            if work is None:
                return
            if isinstance(work, Ticket):
                self._run_exclusive(work)
            elif work:
                self._run_batch(work)

    def _run_exclusive(self, ticket: Ticket) -> None:
        ticket.started = time.perf_counter()
        try:
            ticket.value = ticket.job.exclusive(self.batcher)
        except BaseException as exc:  # handed to the request, which answers it
            ticket.error = exc
        ticket.ended = time.perf_counter()
        if self.metrics is not None:
            self.metrics.batch(self.name, len(ticket.job.items), ticket.job.tokens, ticket.ended - ticket.started)
        ticket.on_done(ticket)

    def _run_batch(self, batch: list[_Entry]) -> None:
        start = time.perf_counter()
        tickets = {id(e.ticket): e.ticket for e in batch}
        for t in tickets.values():
            if t.started is None:
                t.started = start
        wanted = set()
        for t in tickets.values():
            if t.job.outputs is None:
                wanted = None
                break
            wanted.update(t.job.outputs)
        items = [e.ticket.job.items[e.index] for e in batch]
        try:
            ran = self.batcher.run_batch(items, range(len(items)), None if wanted is None else sorted(wanted))
        except BaseException as exc:  # every request in the batch gets the error; the worker goes on
            log.exception("engine %s: a batch of %d rows failed", self.name, len(items))
            error = exc
            ran = None
        end = time.perf_counter()
        if self.metrics is not None:
            padded = self.batcher.padded_tokens(max(e.length for e in batch), len(batch))
            self.metrics.batch(self.name, len(batch), padded, end - start, real=sum(e.length for e in batch))
        for row, entry in enumerate(batch):
            ticket = entry.ticket
            if ran is None:
                ticket.error = ticket.error or error
            else:
                names = ticket.job.outputs if ticket.job.outputs is not None else ran.outputs
                ticket.outputs[entry.index] = {name: ran.output(name, row) for name in names}
            ticket.remaining -= 1
            if ticket.remaining == 0:
                ticket.ended = end
                ticket.on_done(ticket)
