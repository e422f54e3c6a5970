"""In one process: Django's test Client through DjangoInstrumentor, Psycopg2Instrumentor and
PymongoInstrumentor into a BudgetSpanProcessor and an InMemorySpanExporter, against the real
PostgreSQL and FerretDB of `make stack`.

Transaction control is not counted. In `transaction.atomic()` Django logs `BEGIN` and `COMMIT`
in its query capture, but psycopg2 sends BEGIN implicitly before the first statement and COMMIT
through `connection.commit()`, neither through a cursor, so neither becomes a span and otel-budget
(which counts DB client spans) does not count them. DESIGN.md: "Transaction control that drivers
send without a span is not counted".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from processes import BUDGETS_FILE

from otel_budget import BudgetSpanProcessor, ScopeResult, load_config

SETTINGS = "shop.settings"


@dataclass
class Measured:
    """One request: what Django and pymongo saw, and what otel-budget made of it."""

    captured: list[str]  # Django's CaptureQueriesContext, in order
    mongo_commands: int  # the shop's pymongo CommandListener
    span: ReadableSpan  # the exported SERVER span
    client_spans: list[ReadableSpan]  # the DB client spans under it
    result: ScopeResult


@dataclass
class InProcessShop:
    client: Any  # django.test.Client
    exporter: InMemorySpanExporter
    results: list[ScopeResult]
    provider: TracerProvider | None = None

    def request(self, method: str, path: str, **params: str) -> Measured:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        from store.documents import command_counter

        self.exporter.clear()
        self.results.clear()
        mongo_before = command_counter.count()
        with CaptureQueriesContext(connection) as queries:
            response = getattr(self.client, method.lower())(f"/{path}", params)
        assert response.status_code == 200, response.content[:500]
        mongo_commands = command_counter.count() - mongo_before
        spans = self.exporter.get_finished_spans()
        (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
        clients = [s for s in spans if s.kind is SpanKind.CLIENT and s.context.trace_id == server.context.trace_id]
        (result,) = self.results
        return Measured([q["sql"] for q in queries.captured_queries], mongo_commands, server, clients, result)


@pytest.fixture(scope="module")
def in_process_shop(shop_database: None) -> Iterator[InProcessShop]:
    """The shop's Django project configured in this process, instrumented into our own TracerProvider."""
    from django.conf import settings

    if settings.configured and getattr(settings, "SETTINGS_MODULE", None) != SETTINGS:
        pytest.fail(
            f"Django is already configured in this pytest process with {getattr(settings, 'SETTINGS_MODULE', None)!r}; "
            "run tests/e2e in a pytest process of its own",
            pytrace=False,
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_SETTINGS_MODULE", SETTINGS)
        yield from _instrumented_shop()


def _instrumented_shop() -> Iterator[InProcessShop]:
    import django
    from django.db import connections
    from django.test import Client
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

    django.setup()
    from store.documents import mongo

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    processor = BudgetSpanProcessor(config=load_config(BUDGETS_FILE), record_metrics=False)
    provider.add_span_processor(processor)
    results: list[ScopeResult] = []
    processor.add_listener(results.append)

    instrumentors: list[BaseInstrumentor] = [DjangoInstrumentor(), Psycopg2Instrumentor(), PymongoInstrumentor()]
    taken = [type(i).__name__ for i in instrumentors if i.is_instrumented_by_opentelemetry]
    if taken:
        pytest.fail(f"{', '.join(taken)} already instrumented in this process (by another test?)", pytrace=False)
    # New connections and a new MongoClient, made after instrumenting, so that both are traced.
    connections.close_all()
    mongo.cache_clear()
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    try:
        yield InProcessShop(Client(), exporter, results, provider)
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
        connections.close_all()
        mongo().client.close()
        mongo.cache_clear()
        processor.remove_listener(results.append)
        provider.shutdown()


def _pg_spans(measured: Measured) -> list[ReadableSpan]:
    return [s for s in measured.client_spans if (s.attributes or {}).get("db.system") == "postgresql"]


def _mongo_spans(measured: Measured) -> list[ReadableSpan]:
    return [s for s in measured.client_spans if (s.attributes or {}).get("db.system") == "mongodb"]


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "products/7/", {}),
        ("GET", "orders/", {}),
        ("GET", "orders/prefetched/", {}),
        ("POST", "reports/sales/", {}),
        ("GET", "search/", {"q": "kettle"}),
        ("GET", "probe/queries/", {"pg": "11", "mongo": "4"}),
    ],
)
def test_counts_equal_django_capture_and_command_listener(
    in_process_shop: InProcessShop, method: str, path: str, params: dict[str, str]
) -> None:
    """Scope span, listener result and ground truth agree exactly, request by request."""
    measured = in_process_shop.request(method, path, **params)
    attributes = measured.span.attributes or {}
    assert "BEGIN" not in measured.captured and "COMMIT" not in measured.captured
    assert attributes.get("budget.db.postgresql.queries", 0) == len(measured.captured) == len(_pg_spans(measured))
    assert attributes.get("budget.db.mongodb.queries", 0) == measured.mongo_commands == len(_mongo_spans(measured))
    assert attributes["budget.db.queries"] == len(measured.captured) + measured.mongo_commands
    assert measured.result.values["db.queries"] == attributes["budget.db.queries"]
    assert measured.result.span_id == measured.span.context.span_id


def test_transaction_control_is_in_djangos_capture_but_not_counted(in_process_shop: InProcessShop) -> None:
    """Inside atomic(): Django logs BEGIN + 5 statements + COMMIT; psycopg2 made 5 spans; we count 5."""
    measured = in_process_shop.request("GET", "probe/queries/", pg="5", mongo="2", atomic="1")
    assert measured.captured[0] == "BEGIN" and measured.captured[-1] == "COMMIT"
    statements = [sql for sql in measured.captured if sql not in ("BEGIN", "COMMIT")]
    assert len(statements) == 5
    pg_spans = _pg_spans(measured)
    assert len(pg_spans) == 5
    assert not [s for s in pg_spans if str((s.attributes or {}).get("db.statement", "")).upper() in ("BEGIN", "COMMIT")]
    attributes = measured.span.attributes or {}
    assert attributes["budget.db.postgresql.queries"] == 5 == len(measured.captured) - 2
    assert attributes["budget.db.mongodb.queries"] == 2 == measured.mongo_commands


def test_in_process_events_match_the_budgets_file(in_process_shop: InProcessShop) -> None:
    """The N+1 page's one event, as the listener and the exported span both see it."""
    measured = in_process_shop.request("GET", "orders/")
    assert [(v.metric, v.limit, v.actual, v.rule) for v in measured.result.violations] == [
        ("db.repeated_queries", 5, 20, "http")
    ]
    (event,) = [e for e in measured.span.events if e.name == "budget.exceeded"]
    assert dict(event.attributes or {}) | {"budget.statement": "-"} == {
        "budget.metric": "db.repeated_queries",
        "budget.limit": 5,
        "budget.actual": 20,
        "budget.rule": "http",
        "http.route": "orders/",
        "http.request.method": "GET",
        "budget.statement": "-",
    }


def test_timezone_set_on_a_new_connection_is_counted_but_not_in_djangos_capture(in_process_shop: InProcessShop) -> None:
    """A new connection whose session is not in Django's TIME_ZONE: Django sends `SELECT set_config('TimeZone',
    ...)` through a cursor (a span, counted) when it connects, before its capture records. Once per connection."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from store.models import Product

    assert in_process_shop.provider is not None
    tracer = in_process_shop.provider.get_tracer("tests")
    options = connection.settings_dict["OPTIONS"]
    connection.close()
    connection.settings_dict["OPTIONS"] = {**options, "options": "-c timezone=Europe/Paris"}
    captured: list[int] = []
    in_process_shop.results.clear()
    try:
        for _ in range(2):  # a new connection, then the same one
            with tracer.start_as_current_span("GET tz/", kind=SpanKind.SERVER, attributes={"http.route": "tz/"}):
                with CaptureQueriesContext(connection) as queries:  # connects first, as the shop's middleware does
                    for pk in (1, 2, 3):
                        Product.objects.filter(pk=pk).first()
            captured.append(len(queries.captured_queries))
    finally:
        connection.close()
        connection.settings_dict["OPTIONS"] = options
    first, second = in_process_shop.results
    assert captured == [3, 3]
    assert (first.values["db.postgresql.queries"], second.values["db.postgresql.queries"]) == (4, 3)
    assert first.values["db.repeated_queries"] == second.values["db.repeated_queries"] == 3


def test_savepoints_are_counted_as_django_captures_them(in_process_shop: InProcessShop) -> None:
    """Nested atomic(): BEGIN/COMMIT are not counted; SAVEPOINT/RELEASE SAVEPOINT go through a cursor and are."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from store.models import Product

    in_process_shop.results.clear()
    assert in_process_shop.provider is not None
    tracer = in_process_shop.provider.get_tracer("tests")
    with CaptureQueriesContext(connection) as queries:
        with tracer.start_as_current_span("GET savepoints/", kind=SpanKind.SERVER, attributes={"http.route": "sp/"}):
            with transaction.atomic():
                Product.objects.first()
                with transaction.atomic():
                    Product.objects.count()
    captured = [q["sql"] for q in queries.captured_queries]
    (result,) = in_process_shop.results
    assert captured[0] == "BEGIN" and captured[-1] == "COMMIT"
    savepoints = [sql for sql in captured if "SAVEPOINT" in sql]
    assert len(savepoints) == 2  # SAVEPOINT "s..", RELEASE SAVEPOINT "s.."
    assert result.values["db.postgresql.queries"] == len(captured) - 2 == 4
