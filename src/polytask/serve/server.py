"""Running the app under uvicorn: one process, or ``workers`` processes sharing the port.

With several workers uvicorn imports the app by name in each process, so the settings travel
in an environment variable and :func:`app_from_environment` builds the app there. Each worker
loads its own copy of the model; their metrics are shared through prometheus_client's
multiprocess mode, in a fresh directory made before the workers start and removed when the
server stops (:func:`~polytask.serve.metrics.multiprocess_directory`), so a scrape of any
worker counts every worker's requests.

Shutdown is uvicorn's: on SIGINT/SIGTERM it stops accepting connections, lets the requests
in flight finish (up to ``graceful_timeout`` seconds), then runs the app's lifespan exit,
which predicts whatever is still queued.
"""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from polytask.errors import PolytaskError
from polytask.serve.app import ServeSettings, app_for
from polytask.serve.metrics import multiprocess_directory

#: The environment variable carrying :class:`ServeSettings` (JSON) to worker processes.
SETTINGS_ENV = "POLYTASK_SERVE_SETTINGS"


def app_from_environment() -> FastAPI:
    """The app of the settings in ``POLYTASK_SERVE_SETTINGS`` (uvicorn's factory for workers)."""
    text = os.environ.get(SETTINGS_ENV)
    if not text:
        raise PolytaskError(f"{SETTINGS_ENV} is not set; start the server with polytask serve")
    return app_for(ServeSettings.from_json(text))


def serve(
    settings: ServeSettings, *, graceful_timeout: float = 30.0, log_level: str = "info"
) -> None:
    """Serve until interrupted. The model is loaded (and checked) before the port opens, so
    a bad model directory is a one-line error, not a server that answers 500."""
    if settings.workers < 1:
        raise PolytaskError("--workers must be >= 1")
    app = app_for(settings)
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "timeout_graceful_shutdown": graceful_timeout,
        # uvicorn's own limit on concurrent connections is left off: the batcher's bounded
        # queue refuses overload with a 503 that names the cause.
    }
    if settings.workers == 1:
        uvicorn.run(app, **common)  # type: ignore[arg-type]
        return
    os.environ[SETTINGS_ENV] = settings.to_json()
    with multiprocess_directory():
        uvicorn.run(
            "polytask.serve.server:app_from_environment",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )
