"""Flask, FastAPI and Starlette with SQLAlchemy 2.0 over psycopg2, as `opentelemetry-bootstrap` sets them up:
the SQLAlchemy and the psycopg2 instrumentation both report every statement. Real servers (gunicorn gthread,
uvicorn) under `opentelemetry-instrument` with no tracing code in the apps, the real PostgreSQL, spans read
back from Jaeger.

Ground truth: SQLAlchemy's own `before_cursor_execute` count of the request, answered by the app
(apps/sqlalchemy_probe.py). 30 concurrent requests, each with its own number of statements n: otel-budget
counts n (not 2n, not 2n + 1), the repeats of the one repeated statement, the route override's rule, and no
event within budget. The servers take ports 8201, 8202 and 8207: run under
`flock /tmp/otel-budget-servers.lock`."""

from __future__ import annotations

import random
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from served_app import APPS_DIR, app_env, served_app
from shop_e2e import SPAN_TIMEOUT_S

from jaeger_reader import ExportedSpan, JaegerError, JaegerReader
from otel_budget import ScopeResult

BUDGETS = APPS_DIR / "budgets.toml"
BIN = Path(sys.executable).parent
FLASK_PORT, FASTAPI_PORT, STARLETTE_PORT = 8201, 8202, 8207
UNMATCHED = 5  # requests to random URLs per app, beside the 30


@dataclass(frozen=True)
class Answer:
    """One request: what the app's SQLAlchemy saw, and the scope otel-budget exported for it."""

    path: str
    status: int
    truth: dict[str, int]
    scope: ScopeResult
    db_spans: list[ExportedSpan]


@dataclass(frozen=True)
class Served:
    url: str
    service: str
    instrumentation: str  # the one that makes the scope span
    jaeger: JaegerReader

    def burst(self, paths: list[str]) -> list[Answer]:
        """All requests at once (one thread each), then each one's scope span read back from Jaeger."""
        session = requests.Session()
        session.trust_env = False
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=len(paths)))

        def fetch(path: str) -> tuple[int, dict[str, int], str]:
            response = session.get(f"{self.url}{path}", timeout=60)
            truth = response.json() if response.status_code == 200 else {}
            return response.status_code, truth, response.headers["x-trace-id"]

        with session, ThreadPoolExecutor(len(paths)) as pool:  # closed after: the server stops without waiting
            fetched = list(pool.map(fetch, paths))
        return [self._answer(path, *got) for path, got in zip(paths, fetched)]

    def _answer(self, path: str, status: int, truth: dict[str, int], trace_id: str) -> Answer:
        try:
            spans = self.jaeger.wait_for(
                trace_id, lambda spans: any(s.is_scope for s in spans), timeout_s=SPAN_TIMEOUT_S, what="the scope span"
            )
        except JaegerError as exc:
            pytest.fail(f"{path}: {exc}", pytrace=False)
        (scope_span,) = [s for s in spans if s.is_scope]
        identity = (scope_span.service, scope_span.kind, scope_span.attributes.get("otel.scope.name"))
        assert identity == (self.service, "server", self.instrumentation), path
        db_spans = [s for s in spans if s.kind == "client" and "db.system" in s.attributes]
        return Answer(path, status, truth, scope_span.scope, db_spans)


@pytest.fixture(scope="module")
def flask_app(stack_services: None, shop_database: None, jaeger: JaegerReader) -> Iterator[Served]:
    """gunicorn, 2 gthread workers of 4 threads, each with a pool of 4 connections opened at start."""
    argv = [str(BIN / "gunicorn"), "flask_app:app", "--bind", f"127.0.0.1:{FLASK_PORT}", "--workers", "2",
            "--worker-class", "gthread", "--threads", "4", "--timeout", "60", "--graceful-timeout", "5"]  # fmt: skip
    env = app_env("fw-flask", BUDGETS, FW_POOL_SIZE="4")
    with served_app("flask", argv, port=FLASK_PORT, env=env) as url:
        yield Served(url, "fw-flask", "opentelemetry.instrumentation.flask", jaeger)


def uvicorn_argv(app: str, port: int) -> list[str]:
    """uvicorn serving `app` as one process on `port`, quiet, stopping within 5 s."""
    return [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--timeout-graceful-shutdown", "5"]  # fmt: skip


@pytest.fixture(scope="module")
def fastapi_app(stack_services: None, shop_database: None, jaeger: JaegerReader) -> Iterator[Served]:
    """uvicorn, one process; a pool of 8 connections opened at start for the threadpool's statements."""
    argv = uvicorn_argv("fastapi_app:app", FASTAPI_PORT)
    env = app_env("fw-fastapi", BUDGETS, FW_POOL_SIZE="8")
    with served_app("fastapi", argv, port=FASTAPI_PORT, env=env) as url:
        yield Served(url, "fw-fastapi", "opentelemetry.instrumentation.fastapi", jaeger)


@pytest.fixture(scope="module")
def starlette_app(stack_services: None, shop_database: None, jaeger: JaegerReader) -> Iterator[Served]:
    """A plain Starlette app under uvicorn (the Starlette instrumentation), a pool of 8 opened at start."""
    argv = uvicorn_argv("starlette_app:app", STARLETTE_PORT)
    env = app_env("fw-starlette", BUDGETS, FW_POOL_SIZE="8")
    with served_app("starlette", argv, port=STARLETTE_PORT, env=env) as url:
        yield Served(url, "fw-starlette", "opentelemetry.instrumentation.starlette", jaeger)


def _limits() -> dict[str, tuple[int, int]]:
    """(db.queries, db.repeated_queries) per rule, read from the budgets file with tomllib."""
    with open(BUDGETS, "rb") as f:
        raw = tomllib.load(f)
    (override,) = raw["http"]["route"]
    limits = {"http": (raw["http"]["db"]["queries"], raw["http"]["db"]["repeated_queries"])}
    limits[f"route:{override['match']}"] = (override["db"]["queries"], override["db"]["repeated_queries"])
    return limits


def _check_burst(app: Served, routes: dict[str, str], *, cpu_ms: bool) -> None:
    """30 concurrent requests over `routes`: exact counts (`_check`), `cpu_ms` reported or not, some scopes
    over budget and some within, and scope names bounded to the routes plus `GET unmatched`."""
    answers = app.burst(_paths(routes))
    _check(answers, routes)
    assert all(("cpu_ms" in a.scope.values) is cpu_ms for a in answers)
    assert any(a.scope.violations for a in answers) and any(not a.scope.violations for a in answers)
    names = {a.scope.name for a in answers} | _check_unmatched(app)
    assert names == set(routes.values()) | {"GET unmatched"}


def _check(answers: list[Answer], routes: dict[str, str]) -> None:
    """Each scope against SQLAlchemy's count and what the budgets file makes of it."""
    limits = _limits()
    assert limits == {"http": (12, 5), "route:/reports/*": (25, 20)}
    for answer in answers:
        truth, scope = answer.truth, answer.scope
        prefix, n_text = answer.path.rsplit("/", 1)
        n = int(n_text)
        assert truth == {"statements": n, "repeated": n if "/repeat" in prefix else min(n, 1), "connects": 0}, answer.path
        # both instrumentations report each statement, and SQLAlchemy's its `engine.connect()`: 2n + 1 spans ...
        connects = [s for s in answer.db_spans if s.name == "connect"]
        assert (len(connects), len(answer.db_spans)) == (1, 2 * n + 1), answer.path
        assert scope.values["db.queries"] == scope.values.get("db.postgresql.queries", 0) == n, answer.path  # ... once here
        assert scope.values["db.repeated_queries"] == truth["repeated"], answer.path
        rule = "route:/reports/*" if prefix.startswith("/reports/") else "http"
        assert (scope.name, scope.method, scope.rule) == (routes[prefix], "GET", rule), answer.path
        queries, repeats = limits[rule]
        expected = [("db.queries", queries, n, rule)] if n > queries else []
        expected += [("db.repeated_queries", repeats, truth["repeated"], rule)] if truth["repeated"] > repeats else []
        assert sorted((v.metric, v.limit, v.actual, v.rule) for v in scope.violations) == expected, answer.path


def _check_unmatched(served: Served) -> set[str]:
    rng = random.Random(13)
    answers = served.burst([f"/no/such/{rng.getrandbits(48):x}" for _ in range(UNMATCHED)])
    for answer in answers:
        assert answer.status == 404
        assert (answer.scope.name, answer.scope.rule, answer.scope.violations) == ("GET unmatched", "http", ())
    return {a.scope.name for a in answers}


FLASK_ROUTES = {
    "/queries": "/queries/<int:n>",
    "/repeat": "/repeat/<int:n>",
    "/reports/queries": "/reports/queries/<int:n>",
    "/reports/repeat": "/reports/repeat/<int:n>",
}
FASTAPI_ROUTES = {
    "/sync/queries": "/sync/queries/{n}",
    "/sync/repeat": "/sync/repeat/{n}",
    "/async/queries": "/async/queries/{n}",
    "/async/repeat": "/async/repeat/{n}",
    "/reports/sync/queries": "/reports/sync/queries/{n}",
    "/reports/async/repeat": "/reports/async/repeat/{n}",
}

STARLETTE_ROUTES = {
    "/queries": "/queries/{n:int}",
    "/repeat": "/repeat/{n:int}",
    "/reports/queries": "/reports/queries/{n:int}",
}


def _paths(routes: dict[str, str]) -> list[str]:
    """30 requests, request i making i statements, spread over the endpoints."""
    prefixes = list(routes)
    return [f"{prefixes[i % len(prefixes)]}/{i}" for i in range(30)]


def test_flask_sqlalchemy_psycopg2_30_concurrent(flask_app: Served) -> None:
    """Flask under gunicorn gthread: n statements -> db.queries n, repeats exact, override rule, names bounded."""
    _check_burst(flask_app, FLASK_ROUTES, cpu_ms=True)  # a sync server: thread CPU time is the request's


def test_fastapi_sqlalchemy_psycopg2_30_concurrent(fastapi_app: Served) -> None:
    """FastAPI under uvicorn, sync and async endpoints: the same exact counts; no cpu_ms on the event loop."""
    _check_burst(fastapi_app, FASTAPI_ROUTES, cpu_ms=False)


def test_fastapi_async_cpu_on_the_loop_has_no_cpu_ms(fastapi_app: Served) -> None:
    """An async endpoint that spins the loop's thread for 120 ms of CPU: its scope reports no cpu_ms."""
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(f"{fastapi_app.url}/async/cpu/120", timeout=30)
    assert response.json()["cpu_ms"] >= 120
    answer = fastapi_app._answer("/async/cpu/120", response.status_code, {}, response.headers["x-trace-id"])
    assert "cpu_ms" not in answer.scope.values
    assert answer.scope.values["duration_ms"] >= 120
    assert (answer.scope.name, answer.scope.values["db.queries"], answer.scope.violations) == ("/async/cpu/{ms}", 0, ())


def test_starlette_sqlalchemy_psycopg2_30_concurrent(starlette_app: Served) -> None:
    """A plain Starlette app under uvicorn: the same exact counts, override rule and bounded names; no cpu_ms."""
    _check_burst(starlette_app, STARLETTE_ROUTES, cpu_ms=False)
