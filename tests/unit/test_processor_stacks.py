"""Spans shaped as the instrumentations of the common stacks make them, through the real SDK: Django's span
under the ASGI middleware's, Flask's route at start, SQLAlchemy's span around psycopg2's, pool spans."""

from __future__ import annotations

import asyncio
import random
import threading
import time

from asgiref.sync import sync_to_async
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from otel_budget import BudgetSpanProcessor, budget_scope
from tests.unit.conftest import Tracing, make_tracing

ASGI = "opentelemetry.instrumentation.asgi"
DJANGO = "opentelemetry.instrumentation.django"
SQLALCHEMY = "opentelemetry.instrumentation.sqlalchemy"
PSYCOPG2 = "opentelemetry.instrumentation.psycopg2"


def _django_under_asgi(tracing: Tracing, path: str, route: str | None, queries: int = 0) -> None:
    """The ASGI middleware's SERVER span (named by the raw path, on the loop), its `http receive` span, then
    Django's INTERNAL span in a sync_to_async thread, `http.route` set in process_view, psycopg2 spans."""
    asgi = tracing.provider.get_tracer(ASGI)
    django = tracing.provider.get_tracer(DJANGO)
    psycopg2 = tracing.provider.get_tracer(PSYCOPG2)

    def view() -> None:
        with django.start_as_current_span(
            f"GET {route}" if route else "GET", kind=SpanKind.INTERNAL, attributes={"http.method": "GET"}
        ) as span:
            if route is not None:
                span.set_attribute("http.route", route)
            for index in range(queries):
                with psycopg2.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as query:
                    query.set_attributes({"db.system": "postgresql", "db.statement": f"SELECT {index}"})

    async def app() -> None:
        attributes = {"http.method": "GET", "http.target": path, "http.scheme": "http"}
        with asgi.start_as_current_span(f"GET {path}", kind=SpanKind.SERVER, attributes=attributes):
            with asgi.start_as_current_span(f"GET {path} http receive", kind=SpanKind.INTERNAL):
                pass
            await sync_to_async(view, thread_sensitive=True)()
            with asgi.start_as_current_span(f"GET {path} http send", kind=SpanKind.INTERNAL):
                pass

    asyncio.run(app())


def test_django_under_asgi_takes_its_route_and_rule() -> None:
    """The scope is named by Django's route, not the ASGI span's raw path; the route's override applies."""
    tracing = make_tracing({"http": {"db.queries": 2, "route": [{"match": "orders/<int:pk>/", "db.queries": 10}]}})
    _django_under_asgi(tracing, "/orders/42/", "orders/<int:pk>/", queries=4)
    (result,) = tracing.results
    assert (result.name, result.method, result.rule, result.values["db.queries"]) == (
        "orders/<int:pk>/", "GET", "route:orders/<int:pk>/", 4
    )  # fmt: skip
    assert result.violations == ()
    attributes = tracing.span("GET /orders/42/").attributes
    assert attributes["http.route"] == "orders/<int:pk>/"
    assert attributes["budget.rule"] == "route:orders/<int:pk>/"


def test_asgi_scope_reports_no_cpu() -> None:
    """Work on an event loop (Django's ASGI handler included) has no thread CPU time to report."""
    tracing = make_tracing()
    _django_under_asgi(tracing, "/orders/1/", "orders/<int:pk>/")
    (result,) = tracing.results
    assert "cpu_ms" not in result.values
    assert "budget.cpu_ms" not in tracing.span("GET /orders/1/").attributes


def test_django_asgi_span_without_asgi_middleware_reports_no_cpu(tracing: Tracing) -> None:
    """Django's own SERVER span, started in a sync_to_async thread of an ASGI handler: no cpu_ms."""

    def process_request() -> None:
        with tracing.request(route="orders/"):
            pass

    async def handler() -> None:
        await sync_to_async(process_request, thread_sensitive=True)()

    asyncio.run(handler())
    assert "budget.cpu_ms" not in tracing.span("GET orders/").attributes


def test_explicit_scope_in_a_sync_to_async_thread_keeps_cpu(tracing: Tracing) -> None:
    """A scope whose work all runs in one thread with no loop (a sync view's own scope) is measured exactly."""

    def sync_view() -> None:
        with budget_scope("rebuild"):
            sum(range(10_000))

    async def handler() -> None:
        await sync_to_async(sync_view, thread_sensitive=True)()

    trace.set_tracer_provider(tracing.provider)
    asyncio.run(handler())
    (result,) = tracing.results
    assert result.name == "rebuild" and result.values["cpu_ms"] >= 0


def test_wsgi_request_keeps_cpu(tracing: Tracing) -> None:
    """A request served in its thread with no loop (WSGI): cpu_ms is reported."""
    with tracing.request(route="orders/"):
        pass
    assert tracing.span("GET orders/").attributes["budget.cpu_ms"] >= 0


def test_route_set_at_start_on_a_framework_span(tracing: Tracing) -> None:
    """Flask's span (INTERNAL, under the WSGI middleware's) carries `http.route` from its start."""
    wsgi = tracing.provider.get_tracer("opentelemetry.instrumentation.wsgi")
    with wsgi.start_as_current_span("GET /items/3", kind=SpanKind.SERVER, attributes={"http.method": "GET"}):
        with tracing.tracer.start_as_current_span("/items/<int:id>", attributes={"http.route": "/items/<int:id>"}):
            tracing.db("SELECT 1")
    (result,) = tracing.results
    assert (result.name, result.values["db.queries"]) == ("/items/<int:id>", 1)


def test_route_on_a_db_span_is_not_a_route(tracing: Tracing) -> None:
    """Only SERVER/INTERNAL spans name a request: a client span's `http.route` is ignored."""
    with tracing.request(route=None):
        tracing.db("SELECT 1", **{"http.route": "nope/"})
    assert tracing.results[0].name == "GET unmatched"


def test_unmatched_requests_have_a_fixed_name() -> None:
    """100 000 requests for random URLs that match no route add one name per method, never a path."""
    provider = TracerProvider()  # no exporter: 100 000 spans kept in memory would only slow this down
    processor = BudgetSpanProcessor(record_metrics=False)
    provider.add_span_processor(processor)
    seen: set[str] = set()
    processor.add_listener(lambda result: seen.add(result.name))
    asgi = provider.get_tracer(ASGI)
    rng = random.Random(13)
    for index in range(100_000):
        method = ("GET", "POST")[index % 2]
        path = f"/{rng.getrandbits(64):x}/{index}"
        with asgi.start_as_current_span(f"{method} {path}", kind=SpanKind.SERVER, attributes={"http.method": method}):
            pass
    assert seen == {"GET unmatched", "POST unmatched"}
    provider.shutdown()


def test_scope_names_are_capped_with_an_overflow_value() -> None:
    """Past 1000 distinct names in a process, new ones are reported as `_other`; known ones stay."""
    tracing = make_tracing()
    for index in range(1500):
        with tracing.request(route=f"r{index}/"):
            pass
    with tracing.request(route="r7/"):
        pass
    names = [result.name for result in tracing.results]
    assert names[:1000] == [f"r{index}/" for index in range(1000)]
    assert set(names[1000:1500]) == {"_other"}
    assert names[-1] == "r7/"


def test_sqlalchemy_over_psycopg2_counts_one_round_trip(tracing: Tracing) -> None:
    """SQLAlchemy's span (started, not made current, ended after the driver's) is not counted again."""
    sqlalchemy = tracing.provider.get_tracer(SQLALCHEMY)
    psycopg2 = tracing.provider.get_tracer(PSYCOPG2)
    statement = "SELECT id FROM product WHERE id = %(id)s"
    with tracing.request(route="p/"):
        for _ in range(3):
            outer = sqlalchemy.start_span("SELECT shop", kind=SpanKind.CLIENT)
            outer.set_attributes({"db.system": "postgresql", "db.statement": statement})
            with psycopg2.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as inner:
                inner.set_attributes({"db.system": "postgresql", "db.statement": statement + " /*traceparent='x'*/"})
            outer.end()
    db_spans = [span for span in tracing.spans() if span.kind is SpanKind.CLIENT]
    inner_ms = sum((s.end_time - s.start_time) / 1e6 for s in db_spans if s.instrumentation_scope.name == PSYCOPG2)
    attributes = tracing.span("GET p/").attributes
    assert (len(db_spans), attributes["budget.db.queries"], attributes["budget.db.repeated_queries"]) == (6, 3, 3)
    assert abs(attributes["budget.db.duration_ms"] - inner_ms) < 0.002  # the driver's time, closest to the wire


def test_orm_span_parent_of_driver_span_counts_once(tracing: Tracing) -> None:
    """A DB client span inside another one (its child) is the same round trip: counted once, at any depth."""
    with tracing.request(route="p/"):
        with tracing.tracer.start_as_current_span(
            "orm", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql", "db.statement": "SELECT 1"}
        ):
            with tracing.tracer.start_as_current_span(
                "mid", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql", "db.statement": "SELECT 1"}
            ):
                tracing.db("SELECT 1")
        tracing.db("SELECT 2")
    assert tracing.span("GET p/").attributes["budget.db.queries"] == 2


def test_connection_and_pool_spans_are_not_queries(tracing: Tracing) -> None:
    """SQLAlchemy's `connect` span (a DB client span with no statement) is not a query."""
    sqlalchemy = tracing.provider.get_tracer(SQLALCHEMY)
    with tracing.request(route="p/"):
        for name in ("connect", "checkout"):
            with sqlalchemy.start_as_current_span(name, kind=SpanKind.CLIENT, attributes={"db.system": "postgresql"}):
                pass
        tracing.db("SELECT 1")
    assert tracing.span("GET p/").attributes["budget.db.queries"] == 1


def test_concurrent_identical_queries_in_threads_all_count(tracing: Tracing) -> None:
    """Two threads' identical queries, one inside the other in time, under the same parent: two round trips."""
    inner_done = threading.Event()

    def query(request: Context, inner: bool) -> None:
        with tracing.tracer.start_as_current_span(
            "db", context=request, kind=SpanKind.CLIENT,
            attributes={"db.system": "postgresql", "db.statement": "SELECT 1"},
        ):  # fmt: skip
            if inner:
                inner_done.set()
            else:
                inner_done.wait()

    with tracing.request(route="p/") as span:
        request = trace.set_span_in_context(span)
        outer = threading.Thread(target=query, args=(request, False))
        outer.start()
        time.sleep(0.01)
        inner = threading.Thread(target=query, args=(request, True))
        inner.start()
        for thread in (inner, outer):
            thread.join()
    assert tracing.span("GET p/").attributes["budget.db.queries"] == 2


def test_http_client_layers_count_once(tracing: Tracing) -> None:
    """An HTTP client span inside another (a client library over urllib3) is one external call."""
    with tracing.request(route="p/"):
        with tracing.tracer.start_as_current_span(
            "GET", kind=SpanKind.CLIENT, attributes={"http.method": "GET", "http.url": "http://x/"}
        ):
            with tracing.tracer.start_as_current_span(
                "GET", kind=SpanKind.CLIENT, attributes={"http.request.method": "GET", "url.full": "http://x/"}
            ):
                pass
    assert tracing.span("GET p/").attributes["budget.external.calls"] == 1
