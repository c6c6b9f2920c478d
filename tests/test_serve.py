"""HTTP serving (issue 20): ``polytask serve`` / :func:`polytask.serve.create_app`.

Tiny models are trained once per module: one with a task of every table kind (binary,
multiclass, multilabel, regression) and an id column, and a COSMOS preference-conditioned one.
The app is exercised in process (TestClient), by schemathesis against its own OpenAPI
document, and as a real server: ``polytask serve`` in a subprocess on a free loopback port, and
uvicorn in a thread for the graceful shutdown.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from polytask import Task, fit, load
from polytask.config import config_from_dict
from polytask.data.synthetic import make_task_indexed
from polytask.run.pipeline import run as run_config
from polytask.serve import create_app
from polytask.serve.batcher import MicroBatcher, QueueFull

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FEATURES = ["age", "dose", "ward", "code"]


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Numbers with gaps, a text category and an integer-coded one, and a target per kind."""
    rng = np.random.default_rng(seed)
    age = rng.normal(50, 10, n).round(1)
    dose = rng.normal(0, 1, n)
    ward = rng.choice(["icu", "surgery", "medicine"], n)
    code = rng.choice([11, 22, 33], n)
    score = 0.05 * (age - 50) + dose + (ward == "icu")
    return pd.DataFrame(
        {
            "visit": [f"v{i}" for i in range(n)],
            "age": pd.Series(age).mask(rng.random(n) < 0.1),
            "dose": dose,
            "ward": pd.Series(ward).mask(rng.random(n) < 0.1),
            "code": code,
            "sick": np.where(score + rng.normal(0, 1, n) > 0.5, "yes", "no"),
            "level": np.digitize(score, [-0.5, 0.5]).astype(str),
            "flag_a": (dose > 0).astype(int),
            "flag_b": (ward == "icu").astype(int),
            "stay": 3 + score + rng.normal(0, 0.3, n),
        }
    )


TASKS = [
    Task("sick", "binary", "sick"),
    Task("level", "multiclass", "level"),
    Task("flags", "multilabel", ["flag_a", "flag_b"]),
    Task("stay", "regression", "stay"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    fit(
        _frame(240, 0),
        TASKS,
        out=out,
        baselines=False,
        data_options={"id": "visit", "categorical": ["code"]},
        model={"encoder": {"widths": [8]}},
        train={"epochs": 1, "batch_size": 64, "progress": False},
        quiet=True,
    )
    return out / "model"


@pytest.fixture(scope="module")
def cosmos_dir(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> Path:
    """A COSMOS preference-conditioned model of two regression tasks (as in test_pareto.py)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    frame = pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "ya": x.sum(1), "yb": x[:, 0] - x[:, 1]})
    out = tmp_path_factory.mktemp("cosmos") / "run"
    fit(
        frame,
        [Task("a", "regression", "ya"), Task("b", "regression", "yb")],
        out=out,
        baselines=False,
        model={
            "encoder": {"widths": [8, 1], "activation": "tanh"},
            "preference_conditioning": "film",
        },
        balancer={"name": "cosmos"},
        train={"epochs": 2, "batch_size": 64, "progress": False},
        quiet=True,
    )
    return out / "model"


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(model_dir, max_body_bytes=20_000)) as c:
        yield c


def _records(frame: pd.DataFrame, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows as JSON records, a missing value as null (what a client sends)."""
    rows = frame[columns or ["visit", *FEATURES]].astype(object)
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in rows.to_dict(orient="records")
    ]


def _expected(predictions: pd.DataFrame) -> list[dict[str, Any]]:
    """Predictor.predict's frame as the JSON the server should answer."""
    return json.loads(
        json.dumps(
            [
                {
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in row.items()
                }
                for row in predictions.to_dict(orient="records")
            ]
        )
    )


# -- predictions ---------------------------------------------------------------------------


def test_every_kind_equals_the_predictor(client: TestClient, model_dir: Path) -> None:
    records = _records(_frame(40, 1))
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    expected = _expected(load(model_dir).predict(pd.DataFrame(records)))
    assert got == expected
    # Every kind's columns are there: label + probability, class probabilities, per label.
    assert {"sick", "sick_proba", "level", "level_proba_0", "flags.flag_a_proba", "stay"} <= set(
        got[0]
    )
    assert got[0]["visit"] == "v0"


def test_csv_body_equals_json(client: TestClient) -> None:
    frame = _frame(10, 2)
    csv = frame[["visit", *FEATURES]].to_csv(index=False).encode()
    by_csv = client.post("/predict", content=csv, headers={"content-type": "text/csv"})
    by_json = client.post("/predict", json={"records": _records(frame)})
    assert by_csv.status_code == by_json.status_code == 200
    assert by_csv.json() == by_json.json()


def test_json_records_take_the_records_path_and_csv_the_frame_path(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch runtime answers JSON records with Predictor.predict_records (the few-row fast
    path, no DataFrame built) and a CSV body with Predictor.predict; both answers are equal,
    and a batch mixing records with and without the id keeps each request's columns."""
    from polytask.run.predictor import Predictor

    calls: list[str] = []
    by_records, by_frame = Predictor.predict_records, Predictor.predict

    def records_spy(self: Predictor, *args: Any, **kwargs: Any) -> Any:
        calls.append("records")
        return by_records(self, *args, **kwargs)

    def frame_spy(self: Predictor, *args: Any, **kwargs: Any) -> Any:
        calls.append("frame")
        return by_frame(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_records", records_spy)
    monkeypatch.setattr(Predictor, "predict", frame_spy)
    frame = _frame(8, 3)
    with TestClient(create_app(model_dir)) as c:
        by_json = c.post("/predict", json={"records": _records(frame)})
        assert calls == ["records"]
        csv = frame[["visit", *FEATURES]].to_csv(index=False).encode()
        by_csv = c.post("/predict", content=csv, headers={"content-type": "text/csv"})
        assert calls == ["records", "frame"]
        assert by_json.status_code == by_csv.status_code == 200
        assert by_json.json() == by_csv.json()
        with ThreadPoolExecutor(8) as pool:
            sent = [
                pool.submit(c.post, "/predict", json={"records": [GOOD if i % 2 else BARE]})
                for i in range(8)
            ]
            answers = [f.result().json()["predictions"][0] for f in sent]
    assert all(("visit" in a) == bool(i % 2) for i, a in enumerate(answers))


BARE = {"age": 50.0, "dose": 0.1, "ward": "icu", "code": 11}


def test_task_subset(client: TestClient, model_dir: Path) -> None:
    records = _records(_frame(5, 3), FEATURES)  # no id: no id column comes back
    response = client.post("/predict", json={"records": records, "tasks": ["stay", "level"]})
    assert response.status_code == 200
    expected = load(model_dir).predict(pd.DataFrame(records), tasks=["stay", "level"])
    assert response.json()["predictions"] == _expected(expected)
    assert set(response.json()["predictions"][0]) == set(expected.columns)
    csv = pd.DataFrame(records).to_csv(index=False).encode()
    by_query = client.post("/predict?tasks=stay", content=csv, headers={"content-type": "text/csv"})
    assert list(by_query.json()["predictions"][0]) == ["stay"]


def test_preference_conditioned_model(cosmos_dir: Path) -> None:
    predictor = load(cosmos_dir)
    records = [{"x0": 0.5, "x1": -1.0}, {"x0": -0.2, "x1": 0.3}]
    with TestClient(create_app(cosmos_dir)) as c:
        answers = {}
        for preference in ([0.9, 0.1], [0.1, 0.9]):
            r = c.post("/predict", json={"records": records, "preference": preference})
            assert r.status_code == 200, r.text
            answers[tuple(preference)] = r.json()["predictions"]
            expected = predictor.predict(pd.DataFrame(records), preference=preference)
            assert answers[tuple(preference)] == _expected(expected)
        assert answers[(0.9, 0.1)] != answers[(0.1, 0.9)]
        # 9,1 is normalised to 0.9,0.1 by the model's own rule.
        scaled = c.post("/predict", json={"records": records, "preference": [9, 1]})
        assert scaled.json()["predictions"] == answers[(0.9, 0.1)]
        csv = pd.DataFrame(records).to_csv(index=False).encode()
        by_query = c.post(
            "/predict?preference=0.9,0.1", content=csv, headers={"content-type": "text/csv"}
        )
        assert by_query.json()["predictions"] == answers[(0.9, 0.1)]
        for bad in ([1.0], [1.0, 2.0, 3.0], [-1.0, 2.0], [0.0, 0.0]):
            r = c.post("/predict", json={"records": records, "preference": bad})
            field = r.json()["field"]  # the list, or the weight at fault (preference[0])
            assert r.status_code == 422 and field.startswith("preference"), (bad, r.text)
        schema = c.get("/openapi.json").json()
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["properties"]["preference"]["anyOf"][0]["minItems"] == 2


# -- refusals ------------------------------------------------------------------------------

GOOD = {"visit": "v1", "age": 50.0, "dose": 0.1, "ward": "icu", "code": 11}


def _json(body: Any) -> dict[str, Any]:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


MALFORMED = {
    "wrong type (number)": (_json({"records": [{**GOOD, "age": "old"}]}), 422, "records[0].age"),
    "wrong type (category)": (_json({"records": [{**GOOD, "ward": [1]}]}), 422, "records[0].ward"),
    "missing column": (
        _json({"records": [{k: v for k, v in GOOD.items() if k != "dose"}]}),
        422,
        "records[0].dose",
    ),
    "missing records": (_json({"tasks": ["sick"]}), 422, "records"),
    "no records": (_json({"records": []}), 422, "records"),
    "records not a list": (_json({"records": {"age": 1}}), 422, "records"),
    "unknown task": (_json({"records": [GOOD], "tasks": ["nope"]}), 422, "tasks[0]"),
    "unknown key": (_json({"records": [GOOD], "task": ["sick"]}), 422, "task"),
    "preference, unconditioned": (_json({"records": [GOOD], "preference": [1]}), 422, "preference"),
    "not JSON": (
        {"content": b"{records:", "headers": {"content-type": "application/json"}},
        422,
        "body",
    ),
    "JSON, not an object": (_json([GOOD]), 422, "body"),
    "CSV, bad number": (
        {"content": b"age,dose,ward,code\nold,1,icu,11\n", "headers": {"content-type": "text/csv"}},
        422,
        "age",
    ),
    "CSV, missing column": (
        {"content": b"age,ward,code\n1,icu,11\n", "headers": {"content-type": "text/csv"}},
        422,
        "body",
    ),
    "CSV, empty": ({"content": b"", "headers": {"content-type": "text/csv"}}, 422, "body"),
    "CSV, unknown task": (
        {"content": b"age,dose,ward,code\n1,1,icu,11\n", "headers": {"content-type": "text/csv"}},
        422,
        "tasks",
    ),
    "other media type": (
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "content-type",
    ),
    "too large (Content-Length)": (_json({"records": [GOOD] * 400}), 413, "body"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_a_4xx_naming_the_field(client: TestClient, case: str) -> None:
    kwargs, status, field = MALFORMED[case]
    url = "/predict?tasks=nope" if case == "CSV, unknown task" else "/predict"
    response = client.post(url, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert field in response.json()["detail"] or field == "body"


def test_streamed_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b'{"records": ['
        for _ in range(2000):
            yield json.dumps(GOOD).encode() + b","
        yield b"]}"

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["field"] == "body"


def test_full_queue_is_503() -> None:
    async def scenario() -> list[str]:
        gate = threading.Event()

        def slow(frame: pd.DataFrame, tasks: Any, preference: Any) -> pd.DataFrame:
            gate.wait(5)
            return frame

        batcher = MicroBatcher(slow, max_batch=1, max_wait=0.0, max_queue=1)
        frame = pd.DataFrame({"x": [1.0]})
        first = asyncio.ensure_future(batcher.submit(frame))
        await asyncio.sleep(0.05)  # the worker has taken the first job and is blocked in slow
        second = asyncio.ensure_future(batcher.submit(frame))  # waits in the queue
        await asyncio.sleep(0)
        outcomes = []
        try:
            await batcher.submit(frame)
        except QueueFull:
            outcomes.append("full")
        gate.set()
        await asyncio.gather(first, second)
        await batcher.close()
        return outcomes

    assert asyncio.run(scenario()) == ["full"]


def test_full_queue_over_http_is_503(model_dir: Path) -> None:
    app = create_app(model_dir, max_queue=1, max_batch=1)
    gate = threading.Event()
    real = app.state.batcher.predict

    def slow(frame: pd.DataFrame, tasks: Any, preference: Any) -> pd.DataFrame:
        gate.wait(5)
        return real(frame, tasks, preference)

    app.state.batcher.predict = slow
    with TestClient(app) as c, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(c.post, "/predict", json={"records": [GOOD]}) for _ in range(6)]
        time.sleep(0.5)
        gate.set()
        statuses = sorted(f.result().status_code for f in futures)
        busy = next(f.result() for f in futures if f.result().status_code == 503)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    assert set(statuses) <= {200, 503}
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]


# -- concurrency and batching --------------------------------------------------------------


def test_concurrent_requests_equal_sequential_ones(model_dir: Path) -> None:
    records = _records(_frame(32, 4))
    app = create_app(model_dir, max_wait_ms=50)
    with TestClient(app) as c:
        sequential = [c.post("/predict", json={"records": [r]}).json() for r in records]
        with ThreadPoolExecutor(32) as pool:
            concurrent = list(
                pool.map(lambda r: c.post("/predict", json={"records": [r]}).json(), records)
            )
        metrics = c.get("/metrics").text
    for one, other in zip(sequential, concurrent, strict=True):
        # One row alone or among others: equal up to float32 summation order.
        _assert_close(one["predictions"], other["predictions"], 1e-6)
    passes = _metric(metrics, "polytask_batch_requests_count")
    served = _metric(metrics, "polytask_batch_requests_sum")
    assert served == 64 and passes < 64, (passes, served)  # some requests shared a pass


def _assert_close(got: list[dict[str, Any]], want: list[dict[str, Any]], tol: float) -> None:
    """Equal prediction rows: labels exactly, numbers within ``tol``."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], rel=tol, abs=tol), key
            else:
                assert a[key] == b[key], key


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of metric ``name`` whose labels include ``labels`` in Prometheus' text."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        metric, _, rest = key.partition("{")
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part)
        if metric == name and all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"{name} {labels} not in the metrics")


# -- metadata, health, metrics, OpenAPI ----------------------------------------------------


def test_metadata_describes_tasks_and_inputs(client: TestClient) -> None:
    meta = client.get("/metadata").json()
    kinds = {t["name"]: t["kind"] for t in meta["tasks"]}
    assert kinds == {
        "sick": "binary",
        "level": "multiclass",
        "flags": "multilabel",
        "stay": "regression",
    }
    by_name = {t["name"]: t for t in meta["tasks"]}
    assert by_name["sick"]["classes"] == ["no", "yes"]
    assert by_name["level"]["classes"] == ["0", "1", "2"]
    assert by_name["flags"]["targets"] == ["flag_a", "flag_b"]
    assert by_name["stay"]["unit"]["training_std"] > 0
    props = meta["input_schema"]["properties"]
    assert set(meta["input_schema"]["required"]) == set(FEATURES)
    assert {"type": "number"} in props["age"]["anyOf"]
    assert {"type": "string"} in props["ward"]["anyOf"]
    # An integer-coded category takes integers too (11 and "11" are the same category).
    assert {"type": "integer"} in props["code"]["anyOf"]
    assert meta["id_column"] == "visit" and meta["preference_conditioned"] is False


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    client.post("/predict", json={"records": [GOOD]})
    client.post("/predict", json={"records": [{"age": "x"}]})
    text = client.get("/metrics").text
    assert _metric(text, "polytask_http_requests_total", route="/predict", status="200") >= 1
    assert _metric(text, "polytask_http_requests_total", route="/predict", status="422") >= 1
    assert _metric(text, "polytask_http_errors_total", route="/predict", reason="invalid") >= 1
    assert _metric(text, "polytask_http_request_duration_seconds_count", route="/predict") >= 2
    assert _metric(text, "polytask_batch_rows_count") >= 1
    assert "polytask_queue_depth" in text


def test_openapi_is_generated_from_the_input_schema(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    record = doc["components"]["schemas"]["Record"]
    assert set(record["required"]) == set(FEATURES)
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "text/csv"}
    assert body["application/json"]["schema"]["properties"]["records"]["items"] == {
        "$ref": "#/components/schemas/Record"
    }
    tasks = body["application/json"]["schema"]["properties"]["tasks"]["anyOf"][0]["items"]
    assert tasks["enum"] == ["sick", "level", "flags", "stay"]


def test_schemathesis_finds_no_server_error(model_dir: Path) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings

    app = create_app(model_dir)
    with TestClient(app):  # runs the lifespan: the batcher is started on the app's loop
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)

        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call()
            assert response.status_code < 500, (case.path, case.body, response.text)

        for operation in schema.get_all_operations():
            strategy = operation.ok().as_strategy()
            from hypothesis import given

            given(strategy)(check)()


# -- real servers --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until_ready(
    url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready within {timeout:.0f} s")


def test_polytask_serve_on_a_loopback_port(model_dir: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    polytask = Path(sys.executable).parent / "polytask"
    proc = subprocess.Popen(
        [str(polytask), "serve", str(model_dir), "--port", str(port), "--max-wait-ms", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _wait_until_ready(url, proc)
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        records = _records(_frame(3, 5))
        r = httpx.post(url + "/predict", json={"records": records})
        assert r.status_code == 200
        assert r.json()["predictions"] == _expected(load(model_dir).predict(pd.DataFrame(records)))
        assert (
            httpx.post(
                url + "/predict", content=b"[", headers={"content-type": "application/json"}
            ).status_code
            == 422
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM).
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()
    assert b"Application shutdown complete" in err


def _predict_counts(text: str) -> float:
    """The /predict requests counted in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "polytask_http_requests_total" and sample.labels["route"] == "/predict"
    )


def _per_worker_predict_counts(directory: Path) -> list[float]:
    """Each worker's own /predict count, read from its file of prometheus_client's
    multiprocess mode."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = []
    for file in sorted(directory.glob("counter_*.db")):
        families = MultiProcessCollector.merge([str(file)], accumulate=False)
        counts.append(
            sum(
                s.value
                for f in families
                for s in f.samples
                if s.name == "polytask_http_requests_total" and s.labels["route"] == "/predict"
            )
        )
    return counts


def test_metrics_of_several_workers_count_every_request(model_dir: Path, tmp_path: Path) -> None:
    """With --workers 2 a scrape answered by either worker counts the requests both served:
    the server keeps prometheus_client's multiprocess values in a fresh directory of its own
    (here under TMPDIR = tmp_path), removed when it stops."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    polytask = Path(sys.executable).parent / "polytask"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [str(polytask), "serve", str(model_dir), "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        # Each worker imports torch and loads the model: slow on loaded CI cores.
        _wait_until_ready(url, proc, timeout=240)
        (directory,) = temp.glob("polytask-metrics-*")
        # Fresh connections until both workers have answered some (the kernel picks which
        # worker accepts each); N is however many that took.
        sent = 0
        deadline = time.monotonic() + 180  # the second worker may still be starting
        while time.monotonic() < deadline and (sent < 20 or _served_by(directory) < 2):
            response = httpx.post(url + "/predict", json={"records": [GOOD]}, timeout=10)
            assert response.status_code == 200
            sent += 1
        assert _served_by(directory) == 2, "one worker answered every request"
        # A request is counted just after its last byte is sent: wait for the last one.
        deadline = time.monotonic() + 10
        while _predict_counts(httpx.get(url + "/metrics").text) < sent:
            assert time.monotonic() < deadline, "the /metrics count never reached N"
            time.sleep(0.05)
        for _ in range(10):  # whichever worker answers the scrape
            assert _predict_counts(httpx.get(url + "/metrics").text) == sent
        assert sum(_per_worker_predict_counts(directory)) == sent
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()
    assert not list(temp.glob("polytask-metrics-*")), "the metrics directory was left behind"


def _served_by(directory: Path) -> int:
    """How many workers have answered a /predict request."""
    return sum(1 for count in _per_worker_predict_counts(directory) if count > 0)


def test_multiprocess_directory_is_fresh_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    from polytask.serve.metrics import MULTIPROC_ENV, multiprocess_directory

    monkeypatch.setenv(MULTIPROC_ENV, "/somewhere/else")
    with multiprocess_directory() as path:
        assert os.environ[MULTIPROC_ENV] == str(path) and path.is_dir()
        assert not any(path.iterdir())
        (path / "counter_1.db").write_bytes(b"")
    assert not path.exists() and os.environ[MULTIPROC_ENV] == "/somewhere/else"


def test_a_bad_model_dir_fails_before_serving(tmp_path: Path) -> None:
    from conftest import run_cli

    result = run_cli("serve", tmp_path / "nope")
    assert result.code == 2 and "not found" in result.err


def test_graceful_shutdown_finishes_requests_in_flight(model_dir: Path) -> None:
    app: FastAPI = create_app(model_dir)
    started = threading.Event()
    real = app.state.batcher.predict

    def slow(frame: pd.DataFrame, tasks: Any, preference: Any) -> pd.DataFrame:
        started.set()
        time.sleep(0.5)
        return real(frame, tasks, preference)

    app.state.batcher.predict = slow
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        _wait_until_ready(f"http://127.0.0.1:{port}")
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post, f"http://127.0.0.1:{port}/predict", json={"records": [GOOD]}, timeout=10
            )
            assert started.wait(10)
            server.should_exit = True  # what SIGTERM does
            response = pending.result()
    finally:
        server.should_exit = True
        thread.join(30)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1
    assert not thread.is_alive()


# -- onnxruntime ---------------------------------------------------------------------------


def test_onnx_runtime_matches_torch(client: TestClient, model_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    records = _records(_frame(20, 6))
    with TestClient(create_app(model_dir, runtime="onnx")) as c:
        assert c.get("/metadata").json()["runtime"] == "onnx"
        by_onnx = c.post("/predict", json={"records": records}).json()["predictions"]
    by_torch = client.post("/predict", json={"records": records}).json()["predictions"]
    _assert_close(by_onnx, by_torch, 1e-5)


# -- task-indexed models -------------------------------------------------------------------


def test_a_task_indexed_model_answers_each_row_with_its_own_task(tmp_path: Path) -> None:
    """A record holding the template's task column gets that task's output in one column
    (``score``), equal to the Predictor's; without it, every task's output; the ONNX runtime
    refuses the own-task request in one line (a 422) rather than answer every task."""
    frame = make_task_indexed(4, rows=(40, 40))
    run = tmp_path / "school"
    run_config(
        config_from_dict(
            {
                "baselines": False,
                "data": {"task_column": "task"},
                "tasks": [{"kind": "regression", "target": "score"}],
                "train": {"epochs": 1, "progress": False},
            }
        ),
        frame=frame,
        out=run,
        quiet=True,
    )
    rows = frame.drop(columns="score").head(6)
    records = [
        {k: (int(v) if k == "task" else float(v)) for k, v in r.items()}
        for r in rows.to_dict(orient="records")
    ]
    expected = load(run).predict(rows)
    with TestClient(create_app(run / "model")) as c:
        schema = c.get("/metadata").json()["input_schema"]
        assert "task" in schema["properties"] and "task" not in schema.get("required", [])
        own = c.post("/predict", json={"records": records}).json()["predictions"]
        every = c.post(
            "/predict",
            json={"records": [{k: v for k, v in r.items() if k != "task"} for r in records]},
        ).json()["predictions"]
    assert [sorted(p) for p in own] == [["score", "task"]] * 6
    np.testing.assert_allclose([p["score"] for p in own], expected["score"], rtol=1e-6)
    assert sorted(every[0]) == ["task_1", "task_2", "task_3", "task_4"]
    assert [every[i][f"task_{r['task']}"] for i, r in enumerate(records)] == pytest.approx(
        [p["score"] for p in own], rel=1e-6
    )
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with TestClient(create_app(run / "model", runtime="onnx")) as c:
        refused = c.post("/predict", json={"records": records})
    assert refused.status_code == 422
    assert "'task' asks for each row's own task" in json.dumps(refused.json())
