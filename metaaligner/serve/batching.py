"""The request batcher: concurrent requests are aligned together.

Requests are admitted up to ``max_queue`` at once (waiting or being aligned); one more raises
``QueueFull`` (the app answers 429 with ``Retry-After``). One worker task takes the first waiting
request, waits up to ``batch_wait_ms`` for more to arrive (up to ``max_batch_size``), and aligns
them as ONE engine call: for the in-process engine in its one worker thread (the event loop stays
free, and the model runs one batch at a time); for a remote engine batches run concurrently.
A streamed request runs alone (its tokens go to one client as they come), after the batch it
arrived beside. In-process, each request is answered as soon as its own row stops, while the
batch's longer rows go on decoding, and (``continuous``, the default) requests that wait while a
batch runs join it between decoding steps as its rows end, up to ``max_batch_size`` rows at once.
A request whose client disconnected is dropped before its batch starts; inside a running batch
its row stops at the next decoding step (the fast engine asks between steps; another backend's
row finishes with its batch and the result is discarded); a streamed one stops at its next token.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from metaaligner.serve.engine import BaseEngine, LocalEngine, Outcome, Row


class QueueFull(Exception):
    """More requests than ``max_queue`` are admitted."""


@dataclass
class Job:
    row: Row
    future: asyncio.Future
    stream: bool = False
    pieces: asyncio.Queue | None = None   # streamed text pieces, then None at the end
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled.set()
        if not self.future.done():
            self.future.cancel()


def _answer(job: Job, outcome: Outcome) -> None:
    if not job.future.done():
        job.future.set_result(outcome)


class Batcher:
    def __init__(self, engine: BaseEngine, max_batch_size: int = 16, batch_wait_ms: float = 20.0,
                 max_queue: int = 256, metrics=None, continuous: bool = True):
        self.engine = engine
        self.continuous = continuous  # in-process: requests join a running batch between steps
        self._joinable: collections.deque | None = None  # while a batch runs: requests it may take
        self._streams_waiting = threading.Event()  # set: the running batch takes no more (streams wait)
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_wait = max(0.0, float(batch_wait_ms)) / 1000.0
        self.max_queue = max(1, int(max_queue))
        self.metrics = metrics
        self.admitted = 0
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aligner")
        self._running: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for task in list(self._running):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run_in_worker(self, fn: Callable, *args):
        """``fn(*args)`` in the aligner's worker thread (model loading, warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ------------------------------------------------------------------ admission
    def _admit(self) -> None:
        if self.admitted >= self.max_queue:
            if self.metrics is not None:
                self.metrics.rejected.inc()
            raise QueueFull(f"{self.admitted} requests are already waiting for the aligner (--max_queue "
                            f"{self.max_queue}); retry shortly")
        self.admitted += 1
        self._gauge()

    def _release(self, job: Job) -> None:
        if not job.future.cancelled():
            job.future.exception()  # retrieved here, so a failure nobody waits for any more is not logged again
        self.admitted -= 1
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.admitted)

    def submit(self, row: Row, stream: bool = False) -> Job:
        """Admit ``row`` (or raise ``QueueFull``) and queue it; await ``job.future`` for its ``Outcome``."""
        self._admit()
        loop = asyncio.get_running_loop()
        job = Job(row, loop.create_future(), stream, asyncio.Queue() if stream else None)
        job.future.add_done_callback(lambda _f: self._release(job))
        if self._joinable is not None and not stream:
            self._joinable.append(job)  # the running batch takes it between steps, or it is queued after
        else:
            if self._joinable is not None:  # a stream runs alone: the running batch stops taking requests
                self._streams_waiting.set()
            self._queue.put_nowait(job)
        return job

    async def align(self, row: Row) -> Outcome:
        """Submit one row and wait for it; a cancelled wait (the client left) cancels the job."""
        job = self.submit(row)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            self._cancelled(job)
            raise

    def _cancelled(self, job: Job) -> None:
        if not job.future.done() and self.metrics is not None:
            self.metrics.cancelled.inc()
        job.cancel()

    def cancel(self, job: Job) -> None:
        self._cancelled(job)

    # ------------------------------------------------------------------ the worker
    async def _loop(self) -> None:
        queue = self._queue
        while True:
            first = await queue.get()
            if first.future.done():
                continue
            if first.stream:
                await self._dispatch(self._run_stream(first))
                continue
            batch, held = [first], []
            deadline = time.perf_counter() + self.batch_wait
            while len(batch) < self.max_batch_size:
                if queue.empty():
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                else:
                    job = queue.get_nowait()
                (held if job.stream else batch).append(job)
            batch = [j for j in batch if not j.future.done()]
            if batch:
                self._streams_waiting.clear()
                if held:  # a batch that takes no joiners ends, and the held streams get their turn
                    self._streams_waiting.set()
                await self._dispatch(self._run_batch(batch))
            for job in held:
                if not job.future.done():
                    await self._dispatch(self._run_stream(job))

    async def _dispatch(self, coro) -> None:
        if not self.engine.concurrent:
            await coro
            return
        task = asyncio.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _observe(self, n: int, seconds: float, outcomes: list[Outcome]) -> None:
        """One aligner call's metrics; ``outcomes``: its rows not counted yet (``_count``)."""
        if self.metrics is None:
            return
        self.metrics.batch_size.observe(n)
        self.metrics.aligner_seconds.observe(seconds)
        for outcome in outcomes:
            self._count(outcome)

    def _count(self, outcome: Outcome) -> None:
        """One row's tokens and guard fallback (thread-safe counters: also from the worker thread, as
        the row ends, so they are counted by the time its request is answered)."""
        if self.metrics is not None:
            self.metrics.tokens.inc(outcome.tokens)
            if outcome.guard_fallback:
                self.metrics.guard_fallbacks.inc()

    async def _run_batch(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        rows = [j.row for j in batch]
        loop = asyncio.get_running_loop()
        local = isinstance(self.engine, LocalEngine)  # its rows are counted as they end (``delivered``)

        def delivered(i: int, outcome: Outcome) -> None:  # from the worker thread, as each row ends
            self._count(outcome)
            loop.call_soon_threadsafe(_answer, batch[i], outcome)

        try:
            if local:
                outcomes = await self._run_local(batch, rows, delivered)
            else:
                outcomes = await self.engine.align_batch_async(rows)
        except asyncio.CancelledError:
            for job in batch:
                job.cancel()
            raise
        except Exception as exc:  # the whole batch failed: every waiting request gets the error
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._observe(len(batch), time.perf_counter() - start, [] if local else outcomes)
        for job, outcome in zip(batch, outcomes):
            _answer(job, outcome)

    async def _run_local(self, batch: list[Job], rows: list[Row], delivered) -> list[Outcome]:
        """The in-process engine on ``batch``. With ``continuous``, the requests waiting now and those
        that arrive meanwhile (``_joinable``) join it between decoding steps while it has fewer than
        ``max_batch_size`` rows (``more``, in the worker thread); those it did not take are queued
        again, in order, when it ends. A streamed request waiting stops the joining, so that the
        batch ends and the stream (which runs alone) is next: under steady load a batch that kept
        taking requests would never end."""
        def stopped(i: int) -> bool:
            return batch[i].cancelled.is_set()

        if not self.continuous:
            return await self.run_in_worker(self.engine.align_batch, rows, delivered, stopped)
        waiting = self._drain()
        joinable = self._joinable = collections.deque(j for j in waiting if not j.stream)
        if any(j.stream for j in waiting):
            self._streams_waiting.set()

        def more(live: int) -> list[Row]:
            taken = []
            while len(taken) < self.max_batch_size - live and joinable and not self._streams_waiting.is_set():
                job = joinable.popleft()
                if not job.cancelled.is_set():
                    taken.append(job)
            batch.extend(taken)
            if self.metrics is not None and live + len(taken):
                self.metrics.step_rows.observe(live + len(taken))  # asked before every step: its rows
            return [j.row for j in taken]

        try:
            return await self.run_in_worker(self.engine.align_batch, rows, delivered, stopped, more)
        finally:
            self._joinable = None
            later = self._drain()  # streams first: they waited for this batch to end
            for job in [j for j in waiting + later if j.stream] + list(joinable) + [j for j in later if not j.stream]:
                self._queue.put_nowait(job)

    def _drain(self) -> list[Job]:
        jobs = []
        while not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        return jobs

    async def _run_stream(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()

        def emit(piece: str) -> None:  # from the worker thread or the loop
            loop.call_soon_threadsafe(job.pieces.put_nowait, piece)

        try:
            if isinstance(self.engine, LocalEngine):
                outcome = await self.run_in_worker(self.engine.align_stream, job.row, emit, job.cancelled)
            else:
                outcome = await self.engine.align_stream_async(job.row, job.pieces.put_nowait)
        except asyncio.CancelledError:
            job.cancel()
            raise
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(exc)
        else:
            self._observe(1, time.perf_counter() - start, [outcome])
            if not job.future.done():
                job.future.set_result(outcome)
        finally:
            loop.call_soon_threadsafe(job.pieces.put_nowait, None)
