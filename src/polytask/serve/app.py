"""The FastAPI app serving one model: ``POST /predict``, ``GET /metadata``, ``/health``,
``/ready`` and ``/metrics``.

The predict route reads and checks its body itself rather than through FastAPI's body
parameter: it takes JSON and CSV, measures the body as it streams in (413 past the limit), and
validates JSON with the model's own request type (:mod:`polytask.serve.schema`) in one pass of
pydantic's JSON parser. The OpenAPI document describes that body from the same type. Every
refusal is a 4xx whose body names the field (``{"detail": ..., "field": ...}``); a 5xx means a
bug on the server, never a bad request.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from polytask.errors import PolytaskError
from polytask.run.predictor import Predictor, load
from polytask.serve.batcher import Closed, MicroBatcher, Predictions, QueueFull, Rows
from polytask.serve.metrics import Instrumented, ServeMetrics, too_large_body
from polytask.serve.runtime import build_runtime
from polytask.serve.schema import ModelSchema, build_schema
from polytask.tasks.preferences import parse_preference

log = logging.getLogger("polytask.serve")

ROUTES = ("/predict", "/metadata", "/health", "/ready", "/metrics", "/openapi.json", "/docs")
#: Error statuses of ``POST /predict`` as documented in the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "the body is larger than the server's --max-body-bytes"},
    415: {"description": "the body is neither JSON nor CSV"},
    422: {"description": "the body does not fit the model's input schema; 'field' names where"},
    503: {"description": "the queue is full or the server is shutting down; retry later"},
}


@dataclass(frozen=True)
class ServeSettings:
    """How a server runs: the model, the runtime and the limits of its batcher and bodies."""

    model_dir: str
    runtime: str = "torch"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    #: Rows gathered into one forward pass at most.
    max_batch: int = 256
    #: How long a batch waits for more requests after its first, in milliseconds.
    max_wait_ms: float = 2.0
    #: Requests waiting for a batch before new ones are refused with 503.
    max_queue: int = 1024
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 10 * 2**20

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        return cls(**json.loads(text))


class RequestError(Exception):
    """A refused request: its status code, the field at fault and a one-line message."""

    def __init__(self, status: int, field: str, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message
        #: The metrics label of the refusal.
        self.reason = reason

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 503 else None
        body = {"detail": self.message, "field": self.field}
        return JSONResponse(body, status_code=self.status, headers=headers)


def create_app(
    model_dir: str | Path,
    *,
    runtime: str = "torch",
    max_batch: int = 256,
    max_wait_ms: float = 2.0,
    max_queue: int = 1024,
    max_body_bytes: int = 10 * 2**20,
) -> FastAPI:
    """The app serving the model in ``model_dir`` (a model or run directory).

    Loading and checking the model happens here, so a bad directory fails at start-up (a
    :class:`PolytaskError`), not on the first request."""
    settings = ServeSettings(
        str(model_dir),
        runtime=runtime,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
    )
    return app_for(settings)


def app_for(settings: ServeSettings) -> FastAPI:
    """:func:`create_app` from :class:`ServeSettings`."""
    if settings.max_body_bytes < 1:
        raise PolytaskError("max_body_bytes must be >= 1")
    predictor = load(settings.model_dir)
    schema = build_schema(predictor)
    # The ONNX runtime exports the model here at start-up; removed when the app stops.
    workdir = tempfile.TemporaryDirectory(prefix="polytask-serve-")
    predict = build_runtime(settings.runtime, predictor, Path(workdir.name))
    batcher = MicroBatcher(
        predict,
        max_batch=settings.max_batch,
        max_wait=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
    )
    metrics = ServeMetrics(lambda: batcher.depth)
    batcher.on_batch = metrics.batch

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            # The HTTP server has stopped taking connections and let the open ones finish;
            # whatever they queued is predicted before the process goes.
            await batcher.close()
            metrics.close()
            workdir.cleanup()

    app = FastAPI(
        title=f"polytask model: {', '.join(predictor.task_names)}",
        description=(
            "Predictions of a polytask multi-task model. POST rows to /predict as JSON "
            "records (the Record schema) or as a CSV table."
        ),
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.schema = schema
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.settings = settings
    _add_routes(app, settings, schema, batcher, metrics)
    app.add_middleware(
        Instrumented, metrics=metrics, routes=ROUTES, max_body_bytes=settings.max_body_bytes
    )
    _describe_openapi(app, schema)
    return app


def _add_routes(
    app: FastAPI,
    settings: ServeSettings,
    schema: ModelSchema,
    batcher: MicroBatcher,
    metrics: ServeMetrics,
) -> None:
    predictor = schema.predictor

    @app.post(
        "/predict",
        summary="Predict every task (or some) for the rows of the body",
        response_class=JSONResponse,
        responses={
            200: {
                "description": "one object of prediction columns per row, in request order",
                "content": {"application/json": {"schema": PREDICTIONS_SCHEMA}},
            },
            **{
                code: {**info, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
                for code, info in ERROR_RESPONSES.items()
            },
        },
        openapi_extra=_predict_openapi(schema),
    )
    async def predict(request: Request) -> Response:
        try:
            with batcher.arriving():
                frame, tasks, preference = await _read_request(request, settings, schema)
                pending = batcher.enqueue(frame, tasks, preference)
            predictions = await pending
        except RequestError as exc:
            metrics.error("/predict", exc.reason)
            return exc.response()
        except QueueFull as exc:
            metrics.error("/predict", "queue_full")
            return RequestError(503, "body", f"server busy: {exc}", "queue_full").response()
        except Closed as exc:
            metrics.error("/predict", "shutting_down")
            return RequestError(503, "body", str(exc), "shutting_down").response()
        except PolytaskError as exc:
            # The model's own checks (a value the preprocessing refuses, a bad preference):
            # the request's fault, and the message names the column or the field.
            metrics.error("/predict", "invalid")
            return RequestError(422, _field_of(exc), str(exc), "invalid").response()
        except Exception:
            metrics.error("/predict", "internal")
            log.exception("prediction failed")
            raise
        return Response(
            json.dumps({"predictions": json_rows(predictions)}, allow_nan=False),
            media_type="application/json",
        )

    @app.get("/metadata", summary="Tasks, their classes and units, and the input schema")
    async def metadata() -> dict[str, Any]:
        return {
            **schema.metadata(),
            "runtime": settings.runtime,
            "limits": {
                "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms,
                "max_queue": settings.max_queue,
                "max_body_bytes": settings.max_body_bytes,
            },
        }

    @app.get("/health", summary="The process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        summary="The model is loaded and takes requests (503 while starting or stopping)",
        responses={503: {"description": "not ready"}},
    )
    async def ready() -> JSONResponse:
        if batcher.running:
            return JSONResponse({"ready": True, "tasks": predictor.task_names})
        return JSONResponse({"ready": False}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


# -- reading a request ---------------------------------------------------------------------


async def _read_request(
    request: Request, settings: ServeSettings, schema: ModelSchema
) -> tuple[Rows, list[str] | None, list[float] | None]:
    """The frame, tasks and (normalised) preference of a predict request, or a RequestError."""
    media = (request.headers.get("content-type") or "application/json").split(";")[0]
    media = media.strip().lower()
    is_json = media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )
    if not is_json and media not in ("text/csv", "application/csv"):
        raise RequestError(
            415,
            "content-type",
            f"content-type: {media!r} is not accepted; send application/json (records) or "
            "text/csv (a table with a header row)",
            "unsupported_media_type",
        )
    body = await _read_body(request, settings.max_body_bytes)
    query_tasks = request.query_params.get("tasks")
    query_preference = request.query_params.get("preference")
    if is_json:
        if query_tasks is not None or query_preference is not None:
            name = "tasks" if query_tasks is not None else "preference"
            raise RequestError(
                422,
                name,
                f"{name}: give it in the JSON body; the query string carries it only for CSV "
                "bodies",
                "invalid",
            )
        return _json_request(body, schema)
    tasks = _query_tasks(query_tasks, schema) if query_tasks is not None else None
    preference = _preference(query_preference, schema) if query_preference is not None else None
    return _csv_frame(body, schema.predictor), tasks, preference


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as more than ``limit`` bytes have streamed in (a
    chunked body declares no length, so its size is only known while reading it)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413,
                "body",
                too_large_body(limit, f"over {limit} bytes sent")["detail"],
                "body_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _json_request(
    body: bytes, schema: ModelSchema
) -> tuple[Rows, list[str] | None, list[float] | None]:
    try:
        parsed = schema.request.validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc, schema) from None
    preference = parsed.get("preference")
    return (
        schema.records(parsed["records"]),
        parsed.get("tasks"),
        _preference(preference, schema) if preference is not None else None,
    )


def _validation_error(exc: ValidationError, schema: ModelSchema) -> RequestError:
    """The first problem pydantic found, as a 422 naming its field (``records[3].age``)."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    field = _dotted(loc) or "body"
    message = error["msg"]
    if error["type"] == "json_invalid":
        message = f"the body is not valid JSON ({error.get('ctx', {}).get('error', message)})"
    elif error["type"] == "extra_forbidden" and loc == ("preference",):
        message = (
            "this model is not preference-conditioned (trained without "
            "model.preference_conditioning); send no preference"
        )
    elif error["type"] == "extra_forbidden":
        message = "unknown key; the body holds records, tasks" + (
            " and preference" if schema.predictor.preference_conditioned else ""
        )
    elif error["type"] == "missing" and len(loc) == 3 and loc[0] == "records":
        message = f"column '{loc[2]}' is missing (send null for a missing value)"
    more = len(exc.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return RequestError(422, field, f"{field}: {message}{tail}", "invalid")


def _dotted(loc: Sequence[int | str]) -> str:
    """``("records", 3, "age")`` as ``records[3].age``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _query_tasks(text: str, schema: ModelSchema) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    known = schema.predictor.task_names
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise RequestError(
            422,
            "tasks",
            f"tasks: unknown task {unknown[0] if unknown else text!r}; this model predicts: "
            f"{', '.join(known)}",
            "invalid",
        )
    return names


def _preference(value: str | Sequence[float], schema: ModelSchema) -> list[float]:
    """The preference checked and normalised by the model's own rule; 422 when it is bad."""
    predictor: Predictor = schema.predictor
    if not predictor.preference_conditioned:
        raise RequestError(
            422,
            "preference",
            "preference: this model is not preference-conditioned (trained without "
            "model.preference_conditioning); send no preference",
            "invalid",
        )
    try:
        return [float(w) for w in parse_preference(value, predictor.task_names)]
    except PolytaskError as exc:
        raise RequestError(422, "preference", f"preference: {exc}", "invalid") from None


def _csv_frame(body: bytes, predictor: Predictor) -> pd.DataFrame:
    """A CSV body read as ``polytask predict`` reads a CSV file (read_table's options), so a
    row gets the same predictions over HTTP as from the command line."""
    try:
        frame = pd.read_csv(
            io.BytesIO(body), sep=",", na_values=predictor.na_values, skipinitialspace=True
        )
    except pd.errors.EmptyDataError:
        raise RequestError(422, "body", "body: the CSV table is empty", "invalid") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RequestError(
            422, "body", f"body: not a readable CSV table ({first})", "invalid"
        ) from None
    if len(frame) == 0:
        raise RequestError(422, "body", "body: the CSV table has a header but no rows", "invalid")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _field_of(exc: PolytaskError) -> str:
    """The field a model-side error is about, for the 422 body: the column it quotes, else
    the body."""
    text = str(exc)
    start = text.find("column '")
    if start >= 0:
        end = text.find("'", start + 8)
        if end > start:
            return text[start + 8 : end]
    return "body"


# -- writing a response --------------------------------------------------------------------


def json_rows(predictions: Predictions) -> list[dict[str, Any]]:
    """Predictions as JSON-ready dicts: a frame through :func:`records_of`; the records path's
    dicts are JSON-ready already."""
    return predictions if isinstance(predictions, list) else records_of(predictions)


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Prediction rows as JSON-ready dicts: native Python values, a missing or non-finite
    number (or a missing label) as null."""
    rows: list[dict[str, Any]] = [
        {str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")
    ]
    for row in rows:
        for key, value in row.items():
            not_finite = isinstance(value, float) and not math.isfinite(value)
            if not_finite or value is pd.NA or value is pd.NaT:
                row[key] = None
    return rows


# -- OpenAPI -------------------------------------------------------------------------------

PREDICTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["predictions"],
    "properties": {
        "predictions": {
            "type": "array",
            "items": {
                "type": "object",
                "description": "the Predictor's prediction columns: a label and probabilities "
                "per classification task, a value in the target's unit per regression task",
                "additionalProperties": {
                    "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]
                },
            },
        }
    },
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail", "field"],
    "properties": {"detail": {"type": "string"}, "field": {"type": "string"}},
}


def _predict_openapi(schema: ModelSchema) -> dict[str, Any]:
    """The request body and CSV query parameters of ``POST /predict``."""
    body = {k: v for k, v in schema.request_schema.items() if k != "$defs"}
    task_list = f"comma-separated task names ({', '.join(schema.predictor.task_names)})"
    parameters: list[dict[str, Any]] = [
        {
            "name": "tasks",
            "in": "query",
            "required": False,
            "description": f"CSV bodies only: predict only these tasks, {task_list}",
            "schema": {"type": "string"},
        }
    ]
    if schema.predictor.preference_conditioned:
        parameters.append(
            {
                "name": "preference",
                "in": "query",
                "required": False,
                "description": "CSV bodies only: one weight per task in task order, "
                "comma-separated (e.g. 0.7,0.3)",
                "schema": {"type": "string"},
            }
        )
    return {
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": body},
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "description": "a table with a header row naming the input columns",
                    }
                },
            },
        },
    }


def _describe_openapi(app: FastAPI, schema: ModelSchema) -> None:
    """Put the request's record type among the document's components (the body refers to it
    as ``#/components/schemas/Record``)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(schema.request_schema.get("$defs", {}))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["ServeSettings", "app_for", "create_app", "records_of"]
