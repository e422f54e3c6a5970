"""The example shop (Django 5.2) on the servers and drivers people run, each under `opentelemetry-instrument`
with the shop's budgets file, against the real PostgreSQL and FerretDB; spans read back from Jaeger.

    wsgi       gunicorn, 2 gthread workers of 4 threads, psycopg2
    asgi       uvicorn shop.asgi:application (Django's instrumentation makes the SERVER span), psycopg2
    asgi-otel  uvicorn, the application wrapped in the ASGI OpenTelemetryMiddleware, psycopg2
    psycopg3   gunicorn gthread with psycopg 3 importable (Django then picks it), the psycopg instrumentation

Ground truth: the shop's `X-Ground-Truth-*` headers (Django's query capture minus BEGIN/COMMIT, a pymongo
CommandListener). 30 concurrent requests per stack, each with its own number of statements. The servers take
ports 8203-8206: run under `flock /tmp/otel-budget-servers.lock`.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from served_app import APPS_DIR, app_env, served_app
from shop_e2e import SHOP_DIR, SPAN_TIMEOUT_S

from jaeger_reader import ExportedSpan, JaegerError, JaegerReader
from processes import BUDGETS_FILE
from otel_budget import ScopeResult

BIN = Path(sys.executable).parent
# psycopg 3 lives outside the venv's site-packages (`make venv` puts it there): were it importable everywhere,
# Django would pick it over psycopg2 in every other test.
PSYCOPG3_DIR = Path(sys.prefix) / "psycopg3"


@dataclass(frozen=True)
class Stack:
    name: str
    argv: list[str]
    port: int
    scope_instrumentation: str  # the instrumentation that makes the scope span
    driver_instrumentation: str  # and the DB client spans
    on_loop: bool  # served by an event loop: no cpu_ms
    pythonpath: tuple[Path, ...] = ()


def _gunicorn(port: int) -> list[str]:
    return [str(BIN / "gunicorn"), "shop.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
            "--worker-class", "gthread", "--threads", "4", "--timeout", "60", "--graceful-timeout", "5"]  # fmt: skip


def _uvicorn(app: str, port: int) -> list[str]:
    return [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--timeout-graceful-shutdown", "5"]


_DJANGO, _ASGI = "opentelemetry.instrumentation.django", "opentelemetry.instrumentation.asgi"
_PSYCOPG2, _PSYCOPG = "opentelemetry.instrumentation.psycopg2", "opentelemetry.instrumentation.psycopg"
STACKS = [
    Stack("wsgi", _gunicorn(8203), 8203, _DJANGO, _PSYCOPG2, on_loop=False),
    Stack("asgi", _uvicorn("shop.asgi:application", 8204), 8204, _DJANGO, _PSYCOPG2, on_loop=True),
    Stack("asgi-otel", _uvicorn("django_asgi_wrapped:application", 8205), 8205, _ASGI, _PSYCOPG2, on_loop=True,
          pythonpath=(APPS_DIR,)),  # fmt: skip
    Stack("psycopg3", _gunicorn(8206), 8206, _DJANGO, _PSYCOPG, on_loop=False, pythonpath=(PSYCOPG3_DIR,)),
]


@dataclass(frozen=True)
class Answer:
    path: str
    status: int
    truth: dict[str, int]
    scope_span: ExportedSpan
    db_spans: list[ExportedSpan]

    @property
    def scope(self) -> ScopeResult:
        return self.scope_span.scope


@pytest.fixture(params=STACKS, ids=[s.name for s in STACKS])
def served(request: pytest.FixtureRequest, stack_services: None, shop_database: None) -> Iterator[tuple[Stack, str]]:
    stack: Stack = request.param
    if stack.name == "psycopg3" and not (PSYCOPG3_DIR / "psycopg").is_dir():
        pytest.fail(f"psycopg 3 is not installed in {PSYCOPG3_DIR}; `make venv` installs it there", pytrace=False)
    path = [*map(str, stack.pythonpath), str(SHOP_DIR)]
    env = app_env(f"fw-django-{stack.name}", BUDGETS_FILE, DJANGO_SETTINGS_MODULE="shop.settings",
                  OTEL_PYTHON_DJANGO_EXCLUDED_URLS="healthz")  # fmt: skip
    env["PYTHONPATH"] = ":".join([*path, env["PYTHONPATH"]])
    with served_app(f"django-{stack.name}", stack.argv, port=stack.port, env=env, cwd=SHOP_DIR, health="/healthz/") as url:
        yield stack, url


def _burst(url: str, paths: list[str], jaeger: JaegerReader) -> list[Answer]:
    """All requests at once (one thread each), then each one's trace read back from Jaeger."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=len(paths)))

    def fetch(path: str) -> requests.Response:
        return session.get(f"{url}/{path}", headers={"X-Ground-Truth": "1"}, timeout=60)

    with session, ThreadPoolExecutor(len(paths)) as pool:  # closed after: the server stops without waiting
        responses = list(pool.map(fetch, paths))
    answers = []
    for path, response in zip(paths, responses):
        prefix = "x-ground-truth-"
        truth = {k[len(prefix) :]: int(v) for k, v in response.headers.lower_items() if k.startswith(prefix)}
        try:
            spans = jaeger.wait_for(response.headers["x-trace-id"], lambda spans: any(s.is_scope for s in spans),
                                    timeout_s=SPAN_TIMEOUT_S, what="the scope span")  # fmt: skip
        except JaegerError as exc:
            pytest.fail(f"{path}: {exc}", pytrace=False)
        (scope_span,) = [s for s in spans if s.is_scope]
        db_spans = [s for s in spans if s.kind == "client" and "db.system" in s.attributes]
        answers.append(Answer(path, response.status_code, truth, scope_span, db_spans))
    return answers


def _paths() -> list[str]:
    """30 requests with their own counts: 24 probes (i statements, i % 4 MongoDB commands), 6 product pages."""
    probes = [f"probe/queries/?pg={i}&mongo={i % 4}" for i in range(24)]
    return probes + [f"products/{pk}/" for pk in (1, 2, 3, 7, 11, 19)]


def test_30_concurrent_requests_counted_exactly(served: tuple[Stack, str], jaeger: JaegerReader) -> None:
    """Counts equal Django's capture and pymongo's listener; routes, rules, bounded names; cpu_ms only off the loop."""
    stack, url = served
    rng = random.Random(13)
    unmatched = [f"no/such/{rng.getrandbits(48):x}/" for _ in range(4)]
    answers = _burst(url, _paths() + unmatched, jaeger)
    names = set()
    for answer in answers:
        scope, span = answer.scope, answer.scope_span
        assert (span.service, span.kind, span.attributes["otel.scope.name"]) == (
            f"fw-django-{stack.name}", "server", stack.scope_instrumentation), answer.path  # fmt: skip
        assert "cpu_ms" not in scope.values if stack.on_loop else "cpu_ms" in scope.values, answer.path
        names.add(scope.name)
        if answer.path.startswith("no/such/"):
            assert answer.status == 404
            assert (scope.name, scope.method, scope.rule) == ("GET unmatched", "GET", "http")
            # no count over budget (queued behind 33 others on ASGI's one sync thread, it may be over duration_ms)
            assert [v.metric for v in scope.violations if v.metric != "duration_ms"] == [], answer.path
            continue
        assert answer.status == 200, answer.path
        truth = answer.truth
        assert {s.attributes["otel.scope.name"] for s in answer.db_spans} <= {stack.driver_instrumentation,
                                                                              "opentelemetry.instrumentation.pymongo"}
        assert scope.values.get("db.postgresql.queries", 0) == truth["pg-statements"], answer.path
        assert scope.values.get("db.mongodb.queries", 0) == truth["mongo-commands"], answer.path
        assert scope.values["db.queries"] == truth["pg-statements"] + truth["mongo-commands"], answer.path
        if answer.path.startswith("probe/"):
            pg, mongo = (int(part.split("=")[1]) for part in answer.path.split("?")[1].split("&"))
            assert (truth["pg-statements"], truth["mongo-commands"]) == (pg, mongo), answer.path
            assert (scope.name, scope.rule, scope.violations) == ("probe/queries/", "route:probe/*", ()), answer.path
        else:
            assert (scope.name, scope.rule) == ("products/<int:pk>/", "http"), answer.path
    assert names == {"probe/queries/", "products/<int:pk>/", "GET unmatched"}
