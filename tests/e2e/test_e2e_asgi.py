"""The shop's Django project under uvicorn, wrapped in the ASGI `OpenTelemetryMiddleware`, in this process:
DjangoInstrumentor and Psycopg2Instrumentor into a BudgetSpanProcessor with the shop's
budgets file, against the real PostgreSQL (and FerretDB, not instrumented here) of `make stack`. Ground truth: the shop's
`X-Ground-Truth-*` headers (Django's query capture).

Under ASGI the scope span is the middleware's SERVER span, named by the raw path; Django's span is an
INTERNAL child that gets `http.route` in `process_view`. The scope must take that route, its rule, and
report no `cpu_ms`.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from processes import BUDGETS_FILE

from otel_budget import BudgetSpanProcessor, ScopeResult, load_config

SETTINGS = "shop.settings"


@dataclass
class AsgiShop:
    url: str
    exporter: InMemorySpanExporter
    results: list[ScopeResult]
    session: requests.Session

    def request(self, method: str, path: str, **params: str) -> tuple[requests.Response, ScopeResult]:
        before = len(self.results)
        response = self.session.request(method, f"{self.url}/{path}", params=params, headers={"X-Ground-Truth": "1"})
        deadline = time.monotonic() + 10
        while len(self.results) == before and time.monotonic() < deadline:  # the span ends after the last send
            time.sleep(0.005)
        assert len(self.results) == before + 1, (path, len(self.results) - before)
        return response, self.results[-1]


@pytest.fixture(scope="module")
def asgi_shop(shop_database: None) -> Iterator[AsgiShop]:
    from django.conf import settings

    if settings.configured and getattr(settings, "SETTINGS_MODULE", None) != SETTINGS:
        pytest.fail(f"Django is already configured with {getattr(settings, 'SETTINGS_MODULE', None)!r}", pytrace=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_SETTINGS_MODULE", SETTINGS)
        yield from _served_shop()


def _served_shop() -> Iterator[AsgiShop]:
    import django
    import uvicorn
    from django.db import connections
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

    django.setup()
    from django.core.asgi import get_asgi_application
    from store.documents import mongo

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    processor = BudgetSpanProcessor(config=load_config(BUDGETS_FILE), record_metrics=False)
    provider.add_span_processor(processor)
    results: list[ScopeResult] = []
    processor.add_listener(results.append)
    # Not pymongo: its instrumentor does not count again after an uninstrument, and test_e2e_inprocess_counts
    # instruments it after this module. MongoDB commands are not counted here.
    instrumentors: list[Any] = [DjangoInstrumentor(), Psycopg2Instrumentor()]
    connections.close_all()
    mongo.cache_clear()
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    app = OpenTelemetryMiddleware(get_asgi_application(), tracer_provider=provider)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port of its own: no other test's server to collide with
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    session = requests.Session()
    session.trust_env = False
    try:
        yield AsgiShop(f"http://127.0.0.1:{sock.getsockname()[1]}", exporter, results, session)
    finally:
        server.should_exit = True
        thread.join(10)
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
        connections.close_all()
        mongo().client.close()
        mongo.cache_clear()
        provider.shutdown()


REQUESTS: list[tuple[str, str, dict[str, str], str, str]] = [
    # method, path, params, expected route, expected rule
    *[("GET", f"products/{pk}/", {}, "products/<int:pk>/", "http") for pk in (1, 2, 3, 7, 11, 19)],
    *[("GET", "probe/queries/", {"pg": str(n), "mongo": str(n % 3)}, "probe/queries/", "route:probe/*") for n in range(8)],
    *[("GET", "probe/queries/", {"pg": "3", "atomic": "1"}, "probe/queries/", "route:probe/*") for _ in range(2)],
    ("GET", "orders/", {}, "orders/", "http"),
    ("GET", "orders/prefetched/", {}, "orders/prefetched/", "http"),
    ("GET", "search/", {"q": "kettle"}, "search/", "code"),  # the view's in-code budget
    *[("GET", "reports/sales/", {}, "reports/sales/", "route:reports/*") for _ in range(2)],
    ("POST", "reports/sales/", {}, "reports/sales/", "http"),
    ("GET", "healthz/", {}, "healthz/", "http"),
]


def test_django_under_asgi_30_requests(asgi_shop: AsgiShop) -> None:
    """30 requests (22 routed, 8 to random URLs): routes, rules and counts exact; names bounded; no cpu_ms."""
    rng = random.Random(13)
    unmatched = [f"no/such/{rng.getrandbits(48):x}/" for _ in range(30 - len(REQUESTS))]
    assert len(REQUESTS) + len(unmatched) == 30
    names = set()
    for method, path, params, route, rule in REQUESTS:
        response, result = asgi_shop.request(method, path, **params)
        assert response.status_code == 200, (path, response.status_code)
        truth = {k.lower(): int(v) for k, v in response.headers.items() if k.lower().startswith("x-ground-truth-")}
        assert (result.name, result.method, result.rule) == (route, method, rule), path
        assert result.values.get("db.postgresql.queries", 0) == truth["x-ground-truth-pg-statements"], path
        assert result.values["db.mongodb.queries"] == 0  # budgeted, not instrumented here
        assert "cpu_ms" not in result.values
        names.add(result.name)
    for path in unmatched:
        response, result = asgi_shop.request("GET", path)
        assert response.status_code == 404
        assert (result.name, result.rule) == ("GET unmatched", "http")
        assert "cpu_ms" not in result.values
        names.add(result.name)
    assert names == {route for *_, route, _ in REQUESTS} | {"GET unmatched"}
    scope_spans = [s for s in asgi_shop.exporter.get_finished_spans() if "budget.rule" in (s.attributes or {})]
    assert len(scope_spans) == 30
    assert {s.kind for s in scope_spans} == {SpanKind.SERVER}
    assert {s.instrumentation_scope.name for s in scope_spans} == {"opentelemetry.instrumentation.asgi"}
    routed = [s for s in scope_spans if "http.route" in (s.attributes or {})]
    assert len(routed) == len(REQUESTS)  # the route found on Django's span, written on the scope span


def test_n_plus_one_under_asgi_flagged_with_the_route(asgi_shop: AsgiShop) -> None:
    """The N+1 page is caught under ASGI exactly as under WSGI: 20 repeats against the route's rule."""
    _, result = asgi_shop.request("GET", "orders/")
    assert [(v.metric, v.limit, v.actual, v.rule) for v in result.violations] == [("db.repeated_queries", 5, 20, "http")]
