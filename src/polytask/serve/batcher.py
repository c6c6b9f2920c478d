"""An asyncio micro-batcher: requests that arrive within a few milliseconds share one forward
pass.

Each request is a :class:`Job` (its rows, the tasks asked for, a preference). The rows are a
DataFrame (a CSV body) or :class:`Records` (a JSON body's validated records, which the torch
runtime predicts without building a DataFrame: its few-row records path). The
batcher's worker takes the first waiting job, then keeps taking jobs until ``max_batch`` rows
are gathered or ``max_wait`` has passed since the first; the gathered jobs are grouped by what a
forward pass must share (tasks, preference, columns and dtypes), each group's rows are
concatenated into one frame and predicted once, and each job gets its own slice back. The
forward pass runs in one worker thread, so the event loop keeps accepting requests meanwhile;
one thread, because a preference-conditioned model holds its preference as state during the
pass, and two passes at once would mix them up.

The queue is bounded: :meth:`MicroBatcher.submit` raises :class:`QueueFull` rather than let a
burst pile up unbounded memory and latency. :meth:`MicroBatcher.close` stops taking new jobs
and finishes every job already queued (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from polytask.errors import PolytaskError


@dataclass(frozen=True)
class Records:
    """A JSON request's validated records (one dict per row). ``to_frame`` gives the DataFrame
    a runtime reads when it cannot take records; ``extra`` names the keys sent beside the
    features (the id, a template's task column): they change a prediction's columns, so jobs
    that differ there never share a forward pass."""

    rows: list[dict[str, Any]]
    frame_of: Callable[[list[dict[str, Any]]], pd.DataFrame] = field(repr=False)
    extra: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    def to_frame(self) -> pd.DataFrame:
        return self.frame_of(self.rows)


#: A request's rows.
Rows = pd.DataFrame | Records
#: Predictions of some rows, row for row: a frame, or JSON-ready dicts (from records).
Predictions = pd.DataFrame | list[dict[str, Any]]
#: ``predict(rows, tasks, preference)`` of a runtime.
PredictFn = Callable[[Rows, list[str] | None, list[float] | None], Predictions]


def _concat(parts: list[Rows]) -> Rows:
    """The rows of several jobs of one group as one."""
    first = parts[0]
    if isinstance(first, Records):
        rows = [row for part in parts if isinstance(part, Records) for row in part.rows]
        return Records(rows, first.frame_of, first.extra)
    return pd.concat([p for p in parts if isinstance(p, pd.DataFrame)], ignore_index=True)


def _rows_slice(predicted: Predictions, start: int, end: int) -> Predictions:
    if isinstance(predicted, list):
        return predicted[start:end]
    part: pd.DataFrame = predicted.iloc[start:end].reset_index(drop=True)
    return part


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` jobs already (answered 503)."""


class Closed(Exception):
    """The batcher is shutting down and takes no new jobs (answered 503)."""


@dataclass
class Job:
    """One request's rows and what it asks of them."""

    frame: Rows
    tasks: tuple[str, ...] | None
    preference: tuple[float, ...] | None
    future: asyncio.Future[Predictions] = field(repr=False)

    @property
    def key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share one forward pass: same tasks and preference, and
        records with the same extra keys, or frames whose concatenation changes no column's
        dtype."""
        if isinstance(self.frame, Records):
            return (self.tasks, self.preference, "records", self.frame.extra)
        dtypes = tuple((str(c), str(t)) for c, t in self.frame.dtypes.items())
        return (self.tasks, self.preference, dtypes)


@dataclass
class BatchStats:
    """What one forward pass served (for the metrics)."""

    rows: int
    requests: int
    seconds: float


class MicroBatcher:
    """Gathers jobs into batches and predicts each batch in one worker thread."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch: int = 256,
        max_wait: float = 0.002,
        max_queue: int = 1024,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise PolytaskError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        #: Requests being received or parsed that will submit a job soon (see :meth:`arriving`).
        self._arriving = 0

    # -- life cycle ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done() and not self._closing

    @property
    def depth(self) -> int:
        """Jobs waiting for a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the worker on the running event loop (idempotent). A worker left on another
        loop (a test client that runs each call on a fresh loop) is cancelled there."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._worker is not None and not self._worker.done():
            return
        self._stop_elsewhere()
        self._loop = loop
        self._closing = False
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="polytask-predict")
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._worker = loop.create_task(self._run(), name="polytask-batcher")

    def _stop_elsewhere(self) -> None:
        worker, loop = self._worker, self._loop
        if worker is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(worker.cancel)
        self._worker = None

    async def close(self) -> None:
        """Take no new jobs, finish the queued ones, stop the worker."""
        self._closing = True
        worker = self._worker
        if worker is not None and not worker.done() and self._loop is asyncio.get_running_loop():
            assert self._queue is not None
            await self._queue.join()
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._stop_elsewhere()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- submitting ----------------------------------------------------------------------
    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as on its way (its body being read and checked) for the block: a
        batch waits up to ``max_wait`` for it, and no longer waits once none is on its way."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def enqueue(
        self,
        frame: Rows,
        tasks: Sequence[str] | None,
        preference: Sequence[float] | None,
    ) -> asyncio.Future[Predictions]:
        """Queue ``frame``'s rows; the future holds their predictions once their batch ran.
        Raises :class:`Closed` while shutting down and :class:`QueueFull` when the queue is
        full (both at once, never after waiting)."""
        if self._closing:
            raise Closed("the server is shutting down")
        self.start()
        assert self._queue is not None and self._loop is not None
        job = Job(
            frame,
            tuple(tasks) if tasks else None,
            tuple(preference) if preference is not None else None,
            self._loop.create_future(),
        )
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests are already waiting") from None
        return job.future

    async def submit(
        self,
        frame: Rows,
        tasks: Sequence[str] | None = None,
        preference: Sequence[float] | None = None,
    ) -> Predictions:
        """:meth:`enqueue`, then wait for the predictions."""
        return await self.enqueue(frame, tasks, preference)

    # -- the worker ----------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            jobs = [await queue.get()]
            rows = len(jobs[0].frame)
            deadline = time.monotonic() + self.max_wait
            while rows < self.max_batch:
                # Take what is already queued; wait (until the deadline) only while a request
                # is on its way in, so a lone client never waits for company that won't come.
                if queue.empty():
                    left = deadline - time.monotonic()
                    if left <= 0 or self._arriving <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(queue.get(), left)
                    except asyncio.TimeoutError:  # not the builtin TimeoutError on 3.10
                        break
                else:
                    job = queue.get_nowait()
                jobs.append(job)
                rows += len(job.frame)
            try:
                await self._serve(jobs)
            except Exception as exc:
                # The worker must outlive any failure, or every later request would hang.
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                for _ in jobs:
                    queue.task_done()

    async def _serve(self, jobs: list[Job]) -> None:
        groups: dict[tuple[Any, ...], list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.key, []).append(job)
        assert self._loop is not None and self._executor is not None
        for group in groups.values():
            started = time.perf_counter()
            results = await self._loop.run_in_executor(self._executor, self._predict_group, group)
            if self.on_batch is not None:
                rows = sum(len(j.frame) for j in group)
                self.on_batch(BatchStats(rows, len(group), time.perf_counter() - started))
            for job, result in zip(group, results, strict=True):
                if job.future.done():  # the client went away and its request was cancelled
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _predict_group(self, group: list[Job]) -> list[Predictions | BaseException]:
        """Predictions of every job of ``group`` from one forward pass (runs in the worker
        thread). When the pass fails on a user error, each job is predicted alone, so one bad
        request (a value the preprocessing refuses) fails only itself."""
        first = group[0]
        tasks = list(first.tasks) if first.tasks else None
        preference = list(first.preference) if first.preference is not None else None
        if len(group) > 1:
            frame = _concat([j.frame for j in group])
            try:
                predicted = self.predict(frame, tasks, preference)
            except Exception:
                pass  # each job is predicted alone below, and reports its own error
            else:
                out: list[Predictions | BaseException] = []
                start = 0
                for job in group:
                    end = start + len(job.frame)
                    out.append(_rows_slice(predicted, start, end))
                    start = end
                return out
        alone: list[Predictions | BaseException] = []
        for job in group:
            try:
                alone.append(self.predict(job.frame, tasks, preference))
            except Exception as exc:  # reported to that job's request, which decides the status
                alone.append(exc)
        return alone
