"""Untimed external calls and DB connections, through the real libraries and the real stack.

One process: requests, urllib3, httpx and urllib against an HTTP server on 127.0.0.1 started here (a
random port), psycopg2, pymongo and redis-py against the PostgreSQL, FerretDB and Redis of `make stack`;
each scope's `budget.external.untimed_calls` / `budget.db.untimed_connections` and its events, exact.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg2
import pymongo
import pytest
import redis
import requests
import urllib3
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.urllib import URLLibInstrumentor
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_budget import BudgetSpanProcessor, ScopeResult, budget_scope
from otel_budget.config import parse_config
from otel_budget.spanformat import decode_span
from tests.stack_services import require_reachable

PG = "host=127.0.0.1 port=5432 dbname=shop user=otel_budget password=otel_budget"
MONGO = "mongodb://127.0.0.1:27017/"
REDIS = "redis://127.0.0.1:6379/1"
HERE = "test_e2e_untimed.py"  # as imported: relative to its sys.path entry (tests/e2e)


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Stack:
    provider: TracerProvider
    exporter: InMemorySpanExporter
    processor: BudgetSpanProcessor
    url: str  # the local server, with a path and a query string that must never be exported
    port: int

    def scope(self, name: str, work: Callable[[], Any], **limits: float) -> ScopeResult:
        """Run `work` in an explicit scope; what its exported span carries, read back."""
        self.exporter.clear()
        with budget_scope(name, tracer_provider=self.provider, **limits):
            work()
        (span,) = [s for s in self.exporter.get_finished_spans() if s.name == name]
        result = decode_span(span)
        assert result is not None
        return result


def _point_pymongo_at(provider: TracerProvider) -> None:
    """pymongo's instrumentor registers its command listener once per process and keeps the tracer of the
    first `instrument()`; a later one only re-enables it (the contrib instrumentor's `_instrument`). An
    earlier test in this process (test_e2e_inprocess_counts) instrumented it first: point it at ours."""
    listener = PymongoInstrumentor()._commandtracer_instance
    if listener is not None:
        listener._tracer = provider.get_tracer("opentelemetry.instrumentation.pymongo")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_reachable({"PostgreSQL": ("127.0.0.1", 5432), "FerretDB": ("127.0.0.1", 27017), "Redis": ("127.0.0.1", 6379)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    processor = BudgetSpanProcessor(record_metrics=False)
    provider.add_span_processor(processor)
    instrumentors = [
        RequestsInstrumentor(), URLLib3Instrumentor(), HTTPXClientInstrumentor(), URLLibInstrumentor(),
        Psycopg2Instrumentor(), PymongoInstrumentor(),
    ]  # fmt: skip
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    _point_pymongo_at(provider)
    try:
        yield Stack(provider, exporter, processor, f"http://127.0.0.1:{port}/orders/7?token=secret", port)
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
        server.shutdown()
        provider.shutdown()


def _line_of(marker: str) -> int:
    """The line of this file that holds `marker` (a call site the events must name)."""
    with open(__file__) as source:
        return next(number for number, line in enumerate(source, 1) if marker in line and "_line_of" not in line)


def _assert_event(result: ScopeResult, library: str, port: int, marker: str) -> None:
    (violation,) = result.violations
    assert (violation.metric, violation.limit, violation.actual) == ("external.untimed_calls", 0, 1)
    assert violation.details == {
        "library": library,
        "target": f"127.0.0.1:{port}",
        "call_site": f"{HERE}:{_line_of(marker)}",
    }


# -- external calls --------------------------------------------------------------------------------
def test_requests_without_timeout(stack: Stack) -> None:
    """requests.get with no `timeout=`: one untimed call, an event naming requests, host:port, this line."""
    result = stack.scope("requests-untimed", lambda: requests.get(stack.url))  # call: requests untimed
    assert (result.values["external.calls"], result.values["external.untimed_calls"]) == (1, 1)
    _assert_event(result, "requests", stack.port, "# call: requests untimed")


def test_requests_with_timeout(stack: Stack) -> None:
    """requests.get(timeout=3): counted in external.calls, not untimed, no event."""
    result = stack.scope("requests-timed", lambda: requests.get(stack.url, timeout=3))
    assert (result.values["external.calls"], result.values["external.untimed_calls"], result.violations) == (1, 0, ())


def test_httpx_timeout_none(stack: Stack) -> None:
    """An httpx client with `timeout=None`: untimed; one with a timeout: not."""

    def calls() -> None:
        with httpx.Client(timeout=None) as untimed, httpx.Client(timeout=5) as timed:
            untimed.get(stack.url)  # call: httpx untimed
            timed.get(stack.url)
            timed.get(stack.url)

    result = stack.scope("httpx", calls)
    assert (result.values["external.calls"], result.values["external.untimed_calls"]) == (3, 1)
    _assert_event(result, "httpx", stack.port, "# call: httpx untimed")


def test_httpx_async_timeout_none(stack: Stack) -> None:
    """The async client too: `AsyncClient(timeout=None)` is untimed, the default timeout is not."""

    async def calls() -> None:
        async with httpx.AsyncClient(timeout=None) as untimed, httpx.AsyncClient() as timed:
            await untimed.get(stack.url)
            await timed.get(stack.url)

    result = stack.scope("httpx-async", lambda: asyncio.run(calls()))
    assert (result.values["external.calls"], result.values["external.untimed_calls"]) == (2, 1)


def test_urlopen_without_and_with_timeout(stack: Stack) -> None:
    """urlopen with no timeout and no socket default: untimed; `timeout=3` or a socket default: not."""

    def calls() -> None:
        urllib.request.urlopen(stack.url).read()  # call: urlopen untimed
        urllib.request.urlopen(stack.url, timeout=3).read()
        socket.setdefaulttimeout(4)
        try:
            urllib.request.urlopen(stack.url).read()
        finally:
            socket.setdefaulttimeout(None)

    result = stack.scope("urlopen", calls)
    assert (result.values["external.calls"], result.values["external.untimed_calls"]) == (3, 1)
    _assert_event(result, "urllib", stack.port, "# call: urlopen untimed")


def test_urllib3_pool_and_request_timeouts(stack: Stack) -> None:
    """urllib3 with neither a pool nor a request timeout: untimed; either one: not."""

    def calls() -> None:
        urllib3.PoolManager().request("GET", stack.url)  # call: urllib3 untimed
        urllib3.PoolManager(timeout=3).request("GET", stack.url)
        urllib3.PoolManager().request("GET", stack.url, timeout=urllib3.Timeout(total=2))

    result = stack.scope("urllib3", calls)
    assert (result.values["external.calls"], result.values["external.untimed_calls"]) == (3, 1)
    _assert_event(result, "urllib3", stack.port, "# call: urllib3 untimed")


def test_lifted_in_code_counts_without_event(stack: Stack) -> None:
    """`external_untimed_calls=1000` in code lifts the rule: every untimed call counted, no event."""

    def calls() -> None:
        for _ in range(3):
            requests.get(stack.url)
        requests.get(stack.url, timeout=(2, 5))

    result = stack.scope("lifted", calls, external_untimed_calls=1000)
    assert (result.values["external.calls"], result.values["external.untimed_calls"], result.violations) == (4, 3, ())


def test_events_never_carry_a_path_or_query(stack: Stack) -> None:
    """The target is host:port: no path, no query string, no token."""
    result = stack.scope("no-path", lambda: requests.get(stack.url))
    (violation,) = result.violations
    assert violation.details is not None
    assert "/" not in violation.details["target"] and "secret" not in str(violation.details)


# -- DB connections --------------------------------------------------------------------------------
def _pg(dsn: str, statements: int = 2) -> Callable[[], None]:
    connection = psycopg2.connect(dsn)

    def run() -> None:
        with connection.cursor() as cursor:
            for _ in range(statements):
                cursor.execute("SELECT 1")
                cursor.fetchall()

    return run


def test_psycopg2_connection_timeouts(stack: Stack) -> None:
    """Without connect_timeout and statement_timeout: 1 per connection, once however many statements."""
    untimed, other_untimed = _pg(PG), _pg(PG, statements=1)
    by_connect, by_statement = _pg(PG + " connect_timeout=3"), _pg(PG + " options='-c statement_timeout=5000'")
    assert stack.scope("pg-one", untimed).values["db.untimed_connections"] == 1
    both = stack.scope("pg-two", lambda: (untimed(), other_untimed(), untimed()))
    assert (both.values["db.queries"], both.values["db.untimed_connections"], both.violations) == (5, 2, ())
    timed = stack.scope("pg-timed", lambda: (by_connect(), by_statement()))
    assert (timed.values["db.queries"], timed.values["db.untimed_connections"]) == (4, 0)


def test_pymongo_client_timeouts(stack: Stack) -> None:
    """A client without socketTimeoutMS/timeoutMS: 1; with either: 0."""
    plain = pymongo.MongoClient(MONGO)
    by_socket = pymongo.MongoClient(MONGO, socketTimeoutMS=3000)
    by_csot = pymongo.MongoClient(MONGO, timeoutMS=3000)
    try:
        result = stack.scope("mongo", lambda: [c.otel_budget_untimed.items.find_one({}) for c in (plain, plain, by_socket, by_csot)])
        assert (result.values["db.queries"], result.values["db.untimed_connections"]) == (4, 1)
    finally:
        for client in (plain, by_socket, by_csot):
            client.close()


def test_redis_socket_timeout(stack: Stack) -> None:
    """redis-py without socket_timeout (a URL gives none): 1; with socket_timeout: 0."""
    plain, timed = redis.Redis.from_url(REDIS), redis.Redis.from_url(REDIS, socket_timeout=3)
    try:
        result = stack.scope("redis", lambda: (plain.get("otel-budget-untimed"), plain.get("x"), timed.get("x")))
        assert result.values["db.untimed_connections"] == 1
    finally:
        plain.close()
        timed.close()


def test_async_redis_and_pymongo_clients(stack: Stack) -> None:
    """The asyncio clients are watched too: one untimed redis pool and one untimed pymongo client."""
    import redis.asyncio

    async def calls() -> None:
        plain = redis.asyncio.Redis.from_url(REDIS)
        timed = redis.asyncio.Redis.from_url(REDIS, socket_timeout=3)
        mongo = pymongo.AsyncMongoClient(MONGO)
        try:
            await plain.get("x")
            await timed.get("x")
            await mongo.otel_budget_untimed.items.find_one({})
            await mongo.otel_budget_untimed.items.find_one({})
        finally:
            await plain.aclose()
            await timed.aclose()
            await mongo.close()

    assert stack.scope("async-clients", lambda: asyncio.run(calls())).values["db.untimed_connections"] == 2


def test_untimed_connection_event_only_where_a_file_sets_it(stack: Stack) -> None:
    """`db.untimed_connections = 0` in [scope]: the event names the driver, host:port and this line."""
    run = _pg(PG, statements=1)
    stack.processor.config = parse_config({"scope": {"db": {"untimed_connections": 0}}}, source="budgets.toml")
    try:
        result = stack.scope("pg-limited", run)
    finally:
        stack.processor.config = parse_config({}, source="budgets.toml")
    (violation,) = result.violations
    assert (violation.metric, violation.limit, violation.actual, violation.rule) == ("db.untimed_connections", 0, 1, "scope")
    assert violation.details is not None
    assert (violation.details["library"], violation.details["target"]) == ("psycopg2", "127.0.0.1:5432")
    assert violation.details["call_site"].startswith(HERE + ":"), violation.details

