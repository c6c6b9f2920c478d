"""Where a study's independent runs execute: here, in local worker processes, or on a Ray cluster.

``polytask compare``, ``polytask pareto`` and the affinity pair search each plan many runs that
do not depend on each other. The study reads back (in this process) the runs already finished,
and hands the others to a :class:`Backend` as one callable and a list of items; the backend calls
it on every item and yields ``(index, result)`` as each call finishes. This is the one copy of
the dispatch logic:

* :class:`LocalBackend` (``--backend local``): with one worker, every call in this process, in
  order (what the studies always did); with more, in that many spawned processes (one torch
  thread each), in the order they finish.
* :class:`RayBackend` (``--backend ray --address HOST:PORT``): one Ray task per call, each asking
  the cluster for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, so the cluster decides how
  many run at once. A task trains with ``floor(cpus_per_run)`` torch threads (at least one)
  unless the run's config sets ``train.threads``. The callable and its items are the same
  objects the local backend calls, so a run trains from the same seed and configuration.
  Results go where the study puts them (run directories under the study directory), so that
  directory must be on a filesystem every node shares; :func:`require_visible` says so when a
  run finished on a node but cannot be read here.

Ray is an optional dependency (``pip install 'polytask[ray]'``), imported only when a
:class:`RayBackend` is created.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol, TypeVar

from polytask._version import __version__
from polytask.errors import PolytaskError

T = TypeVar("T")
R = TypeVar("R")

#: The names ``--backend`` accepts.
BACKENDS: tuple[str, ...] = ("local", "ray")

#: How to install the optional dependency, quoted in the error when it is missing.
RAY_EXTRA = "pip install 'polytask[ray]'"

#: Seconds to wait for the cluster's head to accept a connection before giving up.
CONNECT_TIMEOUT = 5.0

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})$")


class Backend(Protocol):
    """Runs independent calls of one picklable callable (see the module docstring)."""

    #: ``"local"`` or ``"ray"``.
    name: str

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        """Call ``fn(item)`` for every item; yield ``(index into items, result)`` as each call
        finishes. An error of a call is raised here (the calls not yet finished are
        abandoned: with the studies' checkpoints they continue on the next invocation)."""
        ...

    def describe(self) -> str:
        """One line for progress output: where the runs execute."""
        ...

    def close(self) -> None:
        """Release what the backend holds (a Ray connection it opened)."""
        ...


# -- local -----------------------------------------------------------------------------------


def _in_worker(fn: Callable[[T], R], item: T) -> R:
    import torch

    # Several processes on few cores: intra-op threads would only wait for each other.
    torch.set_num_threads(1)
    return fn(item)


class LocalBackend:
    """Every call in this process (``workers=1``), or in ``workers`` spawned processes."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise PolytaskError(f"local backend: workers must be at least 1, got {workers}")
        self.workers = workers

    def describe(self) -> str:
        return "in this process" if self.workers == 1 else f"in {self.workers} local processes"

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        n_workers = min(self.workers, len(items))
        if n_workers <= 1:
            for i, item in enumerate(items):
                yield i, fn(item)
            return
        context = get_context("spawn")  # no forked torch thread pools or open handles
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
            futures: dict[Future[R], int] = {
                pool.submit(_in_worker, fn, item): i for i, item in enumerate(items)
            }
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in sorted(done, key=futures.__getitem__):
                        yield futures[future], future.result()
            finally:
                for future in pending:
                    future.cancel()

    def close(self) -> None:
        pass


# -- Ray -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failed:
    """A user error raised in a Ray task, carried back as data so the driver raises it as the
    same one line (Ray would wrap it in its own exception with the worker's traceback)."""

    kind: type[PolytaskError]
    message: str


def _ray_call(fn: Callable[[T], R], item: T, threads: int, version: str) -> R | _Failed:
    """What one Ray task executes: ``fn(item)`` with the task's torch threads."""
    import torch

    if version != __version__:
        return _Failed(
            PolytaskError,
            f"ray backend: a node of the cluster runs polytask {__version__}, this process "
            f"{version}; install the same version on every node",
        )
    torch.set_num_threads(threads)
    try:
        return fn(item)
    except PolytaskError as exc:
        return _Failed(type(exc), str(exc))


def _raise(failed: _Failed) -> None:
    try:
        error = failed.kind(failed.message)
    except TypeError:  # a subclass with another signature
        error = PolytaskError(failed.message)
    raise error


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise PolytaskError(
            f"the ray backend needs Ray, which is not installed: {RAY_EXTRA}"
        ) from None
    return ray


def check_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` address (``None`` for ``auto``), after checking that
    something accepts connections there; otherwise a one-line error."""
    if address == "auto":
        return None
    match = _HOST_PORT.match(address)
    port = int(match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        raise PolytaskError(
            f"ray backend: --address must be HOST:PORT (the head node's GCS port, 6379 unless "
            f"`ray start --head --port` said otherwise) or auto, got {address!r}"
        )
    host = match["host"].strip("[]")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PolytaskError(
            f"ray backend: no Ray cluster answers at {address} ({reason}); start one with "
            f"`ray start --head --port {port}` on that machine, or give the head's address"
        ) from None
    return host, port


class RayBackend:
    """One Ray task per call on the cluster at ``address`` (``HOST:PORT`` or ``auto``).

    Connects on creation (``ray.init``) unless this process is already connected to a cluster;
    :meth:`close` disconnects only a connection it opened.
    """

    name = "ray"

    def __init__(
        self, address: str = "auto", *, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0
    ) -> None:
        if not (math.isfinite(cpus_per_run) and cpus_per_run > 0):
            raise PolytaskError(
                f"ray backend: --cpus-per-run must be positive, got {cpus_per_run:g}"
            )
        if not (math.isfinite(gpus_per_run) and gpus_per_run >= 0):
            raise PolytaskError(
                f"ray backend: --gpus-per-run must be 0 or more, got {gpus_per_run:g}"
            )
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self._ray = import_ray()
        self._opened = False
        if not self._ray.is_initialized():
            check_address(address)
            try:
                self._ray.init(
                    address=address,
                    logging_level="ERROR",
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                line = " ".join(str(exc).split()) or type(exc).__name__
                raise PolytaskError(
                    f"ray backend: could not connect to a Ray cluster at {address}: {line}"
                ) from None
            self._opened = True
        self._check_resources()

    def _check_resources(self) -> None:
        """A request no node can ever grant would wait forever: refuse it now."""
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        fits = [
            n
            for n in nodes
            if n.get("Resources", {}).get("CPU", 0.0) >= self.cpus_per_run
            and n.get("Resources", {}).get("GPU", 0.0) >= self.gpus_per_run
        ]
        if nodes and not fits:
            most = max(n.get("Resources", {}).get("CPU", 0.0) for n in nodes)
            gpus = max(n.get("Resources", {}).get("GPU", 0.0) for n in nodes)
            raise PolytaskError(
                f"ray backend: no node of the cluster has {self.cpus_per_run:g} CPUs and "
                f"{self.gpus_per_run:g} GPUs for one run (the largest: {most:g} CPUs, "
                f"{gpus:g} GPUs); lower --cpus-per-run / --gpus-per-run"
            )

    def describe(self) -> str:
        where = self.address if self.address != "auto" else "the local cluster"
        return f"on Ray at {where} ({self.cpus_per_run:g} CPUs, {self.gpus_per_run:g} GPUs per run)"

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        if not items:
            return
        ray = self._ray
        remote = ray.remote(_ray_call).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, name="polytask-run"
        )
        threads = max(1, math.floor(self.cpus_per_run))
        shared = ray.put(fn)  # one copy of the callable (and the data it holds) per cluster
        refs = {
            remote.remote(shared, item, threads, __version__): i for i, item in enumerate(items)
        }
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    result = ray.get(ref)
                    if isinstance(result, _Failed):
                        _raise(result)
                    yield refs[ref], result
        finally:
            # Abandoned calls end with their worker process (an interrupt could leave a worker
            # half-way through an import, and Ray reuses workers); checkpoints are atomic, so
            # an interrupted run continues from its last one next time.
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._opened:
            self._ray.shutdown()
            self._opened = False


def make_backend(
    name: str,
    *,
    address: str | None = None,
    cpus_per_run: float | None = None,
    gpus_per_run: float | None = None,
) -> Backend | None:
    """The backend the command line names (``--backend``, ``--address``, ``--cpus-per-run``,
    ``--gpus-per-run``); ``None`` for ``local``, which leaves each study its own local default
    (compare and the pair search: one run after the other in this process; pareto: its
    ``workers`` processes)."""
    if name == "local":
        given = [
            option
            for option, value in (
                ("--address", address),
                ("--cpus-per-run", cpus_per_run),
                ("--gpus-per-run", gpus_per_run),
            )
            if value is not None
        ]
        if given:
            raise PolytaskError(f"{given[0]} applies to --backend ray, not to the local backend")
        return None
    if name == "ray":
        if address is None:
            raise PolytaskError(
                "--backend ray needs --address HOST:PORT (the head node's address) or auto"
            )
        return RayBackend(
            address,
            cpus_per_run=1.0 if cpus_per_run is None else cpus_per_run,
            gpus_per_run=0.0 if gpus_per_run is None else gpus_per_run,
        )
    raise PolytaskError(f"unknown backend {name!r}; valid choices: {', '.join(BACKENDS)}")


def require_visible(finished: bool, run_dir: Path, backend: Backend) -> None:
    """Raise unless a run the backend reports finished can be read back in this process."""
    if not finished:
        raise PolytaskError(
            f"run '{run_dir}' finished {backend.describe()} but is not finished here: the "
            "study directory must be on a filesystem every node of the cluster shares"
        )
