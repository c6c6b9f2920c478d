"""Prometheus metrics of one app, and the ASGI middleware that counts every request.

Each app has its own :class:`~prometheus_client.CollectorRegistry`: apps built side by side (in
tests, or one per model) must not share or collide on the process-wide default registry.

Several worker processes (``polytask serve --workers N``) share their metrics through
prometheus_client's multiprocess mode: :func:`multiprocess_directory` makes a fresh directory
and names it in ``PROMETHEUS_MULTIPROC_DIR`` before the workers start (prometheus_client reads
the variable when it is first imported, so each worker writes its values to files there), a
scrape of any worker merges every worker's files (:class:`MultiProcessCollector`: counters and
histograms summed, the queue depth summed over the live workers), and a worker that stops
marks itself dead (:meth:`ServeMetrics.close`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from polytask.serve.batcher import BatchStats

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

#: Latency buckets in seconds: a one-row request takes about a millisecond, a full queue seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
#: Rows (or requests) per forward pass: powers of two up to a large batch.
SIZE_BUCKETS = tuple(float(2**k) for k in range(13))

#: The variable naming the directory where prometheus_client's multiprocess mode keeps values.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_path() -> str | None:
    """The directory of prometheus_client's multiprocess mode when this process runs in it
    (the variable was set when prometheus_client was imported), else None."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and values.ValueClass is not values.MutexValue:
        return path
    return None


@contextlib.contextmanager
def multiprocess_directory() -> Iterator[Path]:
    """A fresh directory named in ``PROMETHEUS_MULTIPROC_DIR`` while the block runs (enter it
    before worker processes start: they inherit the variable), removed with the values in
    it afterwards, and the variable restored."""
    before = os.environ.get(MULTIPROC_ENV)
    path = Path(tempfile.mkdtemp(prefix="polytask-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
        shutil.rmtree(path, ignore_errors=True)


class ServeMetrics:
    """Requests by route and status, latency, batch sizes, errors and the queue depth."""

    def __init__(self, queue_depth: Callable[[], float]) -> None:
        #: Where every worker's values are merged from, in multiprocess mode (else None).
        self.multiprocess = multiprocess_path()
        self.queue_depth = queue_depth
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "polytask_http_requests",
            "HTTP requests answered, by route, method and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "polytask_http_request_duration_seconds",
            "Time from a request's arrival to its last response byte, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "polytask_http_errors",
            "Requests refused or failed, by route and reason",
            ["route", "reason"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "polytask_batch_rows", "Rows per forward pass", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "polytask_batch_requests",
            "Requests served by one forward pass",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.forward = Histogram(
            "polytask_forward_duration_seconds",
            "Time of one batch's preprocessing, forward pass and decoding",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Summed over the live workers in multiprocess mode, where a gauge is a value each
        # worker writes (set after each request and batch), not a function read at a scrape.
        self.depth = Gauge(
            "polytask_queue_depth",
            "Requests waiting for a batch",
            registry=r,
            multiprocess_mode="livesum",
        )
        if self.multiprocess is None:
            self.depth.set_function(queue_depth)

    def refresh_depth(self) -> None:
        """Write this worker's queue depth (multiprocess mode; read at each scrape else)."""
        if self.multiprocess is not None:
            self.depth.set(self.queue_depth())

    def batch(self, stats: BatchStats) -> None:
        self.batch_rows.observe(stats.rows)
        self.batch_requests.observe(stats.requests)
        self.forward.observe(stats.seconds)
        self.refresh_depth()

    def error(self, route: str, reason: str) -> None:
        self.errors.labels(route, reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type: this app's, or in
        multiprocess mode every worker's, merged."""
        if self.multiprocess is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        self.refresh_depth()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess)  # type: ignore[no-untyped-call]
        return generate_latest(merged), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """A stopping worker's bookkeeping in multiprocess mode: its live gauges (the queue
        depth) leave the sums; its counts stay."""
        if self.multiprocess is not None:
            mark_process_dead(os.getpid(), self.multiprocess)  # type: ignore[no-untyped-call]


class Instrumented:
    """ASGI middleware: counts and times every HTTP request, and answers 413 at once to a
    request whose declared Content-Length is over ``max_body_bytes`` (before any of the body
    is read; a body streamed without a length is measured where it is read)."""

    def __init__(
        self, app: ASGIApp, metrics: ServeMetrics, routes: Iterable[str], max_body_bytes: int
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Unknown paths share one label, so a scanner cannot grow the metrics without bound.
        self.routes = frozenset(routes)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before answering

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            length = declared_length(scope)
            if length is not None and length > self.max_body_bytes:
                self.metrics.error(route, "body_too_large")
                await send_json(
                    counting_send,
                    413,
                    too_large_body(self.max_body_bytes, f"Content-Length is {length}"),
                )
                return
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.refresh_depth()


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when it has none (or not a number: the HTTP
    server refuses those itself)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def too_large_body(limit: int, seen: str) -> dict[str, Any]:
    """The 413 body."""
    return {
        "detail": f"body: request body too large ({seen}); this server takes at most "
        f"{limit} bytes (polytask serve --max-body-bytes)",
        "field": "body",
    }


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    """Answer with ``body`` as JSON from inside ASGI middleware."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                # The body was not read: the connection cannot carry another request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
