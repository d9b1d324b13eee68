"""Micro-batching: requests that arrive together share one call of the network.

Each request thread hands its images (a uint8 tensor (n, 3, S, S)) to a
:class:`Batcher` and blocks on the result. One worker thread takes the first
waiting request, gathers the others that are already queued or still being
decoded (up to ``max_wait`` seconds), concatenates them along the batch axis,
runs the network once and hands every request its own rows back. A request
that is alone never waits: the batcher only waits for requests it knows are
coming (those inside :meth:`Batcher.expect` that have not submitted yet), so
one client pays no latency for the batching that many clients profit from.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Iterator, NamedTuple

import torch


class _Job(NamedTuple):
    x: torch.Tensor  # (n, ...)
    future: Future


class Batcher:
    """Runs ``fn`` on concatenated inputs in one worker thread; ``fn(x)`` returns one row per row of ``x``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 64, max_wait: float = 0.005,
                 name: str = "cnnlab-batcher"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait}")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._coming = 0  # requests inside expect() that have not submitted yet
        self._local = threading.local()
        self.batches = 0  # network calls so far
        self.items = 0  # rows they held
        self.largest = 0
        self._name = name
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        thread.start()
        return thread

    # --- the request side ------------------------------------------------------------

    @contextlib.contextmanager
    def expect(self) -> Iterator[None]:
        """Around a request that will submit: the worker waits for it while it decodes its images."""
        with self._lock:
            self._coming += 1
        self._local.pending = True
        try:
            yield
        finally:
            self._arrived()

    def _arrived(self) -> None:
        if getattr(self._local, "pending", False):
            self._local.pending = False
            with self._lock:
                self._coming -= 1

    def submit(self, x: torch.Tensor) -> Future:
        """A future of ``fn``'s rows for ``x`` (n, ...), computed in a batch with whatever else is waiting."""
        future: Future = Future()
        if len(x) == 0:
            future.set_result(x.new_zeros((0,)))
            return future
        with self._lock:
            if not self._thread.is_alive():  # closed (an app's lifespan ended) and used again: work again
                self._thread = self._start()
        self._queue.put(_Job(x, future))
        self._arrived()
        return future

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.submit(x).result()

    def close(self) -> None:
        """Stop the worker once the requests queued before are done; a later submit starts it again."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    # --- the worker ----------------------------------------------------------------------

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, rows, stop = [first], len(first.x), False
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                with self._lock:
                    coming = self._coming
                left = deadline - time.monotonic()
                if coming == 0 or left <= 0:
                    break
                try:  # short waits, so a request that fails before submitting does not hold the batch
                    job = self._queue.get(timeout=min(left, 0.001))
                except queue.Empty:
                    continue
            if job is None:
                stop = True
                break
            if rows + len(job.x) > self.max_batch:
                self._queue.put(job)  # next batch; order among concurrent requests does not matter
                break
            jobs.append(job)
            rows += len(job.x)
        return jobs, stop

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        try:
            x = jobs[0].x if len(jobs) == 1 else torch.cat([j.x for j in jobs])
            out = self.fn(x)
            if len(out) != len(x):
                raise RuntimeError(f"the batched function returned {len(out)} rows for {len(x)} inputs")
        except BaseException as e:  # noqa: BLE001 -- every waiting request gets the error, the worker lives on
            for j in jobs:
                j.future.set_exception(e)
            return
        self.batches += 1
        self.items += len(x)
        self.largest = max(self.largest, len(x))
        start = 0
        for j in jobs:
            j.future.set_result(out[start:start + len(j.x)])
            start += len(j.x)

    def stats(self) -> dict:
        return {"batches": self.batches, "images": self.items, "largest_batch": self.largest,
                "mean_batch": round(self.items / self.batches, 2) if self.batches else None,
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000}
