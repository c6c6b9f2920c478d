"""Progress of the long steps before training: sentence embeddings, audio and image decoding,
molecule featurisation.

These steps sit in the data layer, far below the command that knows whether the user wants a
progress display (``train.progress``, ``quiet``, rank 0 of a data-parallel run). Rather than
threading a callback through every input processor's signature, the run installs a *sink* for
the duration of its data preparation (:func:`reporting`), and a step announces itself with
:func:`long_step`; with no sink installed (a library call, a quiet run, a test) a step costs
one context-variable lookup and prints nothing.

:func:`console_sink` is the sink of the command line: a live bar on a terminal; on a redirected
stream (a log file, a batch job) a line when a step starts, a line every
:data:`LOG_EVERY_S` seconds and a line when it ends, so that a log shows where minutes went
without carriage-return noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Called with the number of items just finished.
Advance = Callable[[int], None]
#: ``sink(description, total, unit)``: a context manager around one step, yielding its
#: :data:`Advance`.
ProgressSink = Callable[[str, int, str], AbstractContextManager[Advance]]

#: Steps over fewer items than this are not announced (a handful of rows finish at once).
MIN_ITEMS = 64
#: Seconds between the lines a redirected stream gets while a step runs.
LOG_EVERY_S = 30.0

_SINK: ContextVar[ProgressSink | None] = ContextVar("polytask_progress_sink", default=None)


def _ignore(done: int) -> None:
    """The :data:`Advance` of a step nobody watches."""


@contextmanager
def reporting(sink: ProgressSink | None) -> Iterator[None]:
    """Send the progress of every :func:`long_step` inside the block to ``sink`` (``None``:
    nowhere); the previous sink is restored after it."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


@contextmanager
def long_step(description: str, total: int, unit: str = "rows") -> Iterator[Advance]:
    """One long step over ``total`` items; call the yielded function with each number of items
    finished. Reported to the sink installed by :func:`reporting`, if any and if the step is
    long enough to be worth a line (:data:`MIN_ITEMS`)."""
    sink = _SINK.get()
    if sink is None or total < MIN_ITEMS:
        yield _ignore
        return
    with sink(description, total, unit) as advance:
        yield advance


def console_sink(console: Console) -> ProgressSink:
    """A sink printing to ``console``: a live bar on a terminal, timed lines otherwise (module
    docstring)."""

    @contextmanager
    def sink(description: str, total: int, unit: str) -> Iterator[Advance]:
        if console.is_terminal:
            with _live_bar(console, description, total) as advance:
                yield advance
        else:
            with _log_lines(console, description, total, unit) as advance:
                yield advance

    return sink


@contextmanager
def _live_bar(console: Console, description: str, total: int) -> Iterator[Advance]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)


@contextmanager
def _log_lines(console: Console, description: str, total: int, unit: str) -> Iterator[Advance]:
    start = last = time.monotonic()
    done = 0
    console.print(f"{description}: {total:,} {unit}", markup=False, highlight=False)

    def advance(count: int) -> None:
        nonlocal done, last
        done += count
        now = time.monotonic()
        if now - last >= LOG_EVERY_S and done < total:
            last = now
            console.print(
                f"{description}: {done:,} of {total:,} {unit} ({done / total:.0%}), "
                f"{now - start:.0f} s",
                markup=False,
                highlight=False,
            )

    yield advance
    console.print(
        f"{description}: done, {done:,} {unit} in {time.monotonic() - start:.1f} s",
        markup=False,
        highlight=False,
    )


__all__ = [
    "LOG_EVERY_S",
    "MIN_ITEMS",
    "Advance",
    "ProgressSink",
    "console_sink",
    "long_step",
    "reporting",
]
