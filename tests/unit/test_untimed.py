"""Untimed calls and connections, routed to their scope: counted once per call/connection, event details."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind

from otel_budget import processor
from otel_budget._timeouts import _short_path, _target, _unbounded, call_site
from otel_budget.config import parse_config


def _details(n: int) -> dict[str, str]:
    return {"library": "requests", "target": f"h{n}:80", "call_site": f"app.py:{n}"}


def test_untimed_call_counted_once_per_client_span(tracing) -> None:  # type: ignore[no-untyped-def]
    """Two checks inside one CLIENT span (requests over urllib3, a retry) count one call; the default limit is 0."""
    with tracing.request("quote/"):
        with tracing.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"http.request.method": "GET"}):
            processor.untimed_call(lambda: _details(1))
            processor.untimed_call(lambda: _details(1))
        with tracing.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"http.request.method": "GET"}):
            processor.untimed_call(lambda: _details(2))
    (result,) = tracing.results
    assert (result.values["external.calls"], result.values["external.untimed_calls"]) == (2, 2)
    (violation,) = result.violations
    assert (violation.metric, violation.limit, violation.actual, violation.rule) == ("external.untimed_calls", 0, 2, "http")
    assert violation.details == _details(1)  # the first call crossed the limit of 0
    event = tracing.events("GET quote/")["external.untimed_calls"]
    assert (event["budget.library"], event["budget.target"], event["budget.call_site"]) == ("requests", "h1:80", "app.py:1")


def test_untimed_call_outside_a_client_span_is_not_counted(tracing) -> None:  # type: ignore[no-untyped-def]
    """A library that is not instrumented makes no CLIENT span: neither `external.calls` nor this counts it."""
    with tracing.request("quote/"):
        processor.untimed_call(lambda: _details(1))
    (result,) = tracing.results
    assert (result.values["external.calls"], result.values["external.untimed_calls"], result.violations) == (0, 0, ())


def test_event_names_the_call_that_crossed_a_lifted_limit(tracing) -> None:  # type: ignore[no-untyped-def]
    """With `external.untimed_calls = 2` the event names the third untimed call."""
    tracing.processor.config = parse_config({"http": {"external": {"untimed_calls": 2}}}, source="t.toml")
    with tracing.request("quote/"):
        for n in range(1, 5):
            with tracing.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"http.method": "GET"}):
                processor.untimed_call(lambda n=n: _details(n))  # type: ignore[misc]
    (result,) = tracing.results
    (violation,) = result.violations
    assert (violation.actual, violation.details) == (4, _details(3))


def test_untimed_connection_once_per_connection_not_enforced_by_default(tracing) -> None:  # type: ignore[no-untyped-def]
    """Each connection counts once per scope; with no limit in the file there is no event."""
    first, second = object(), object()
    with tracing.request("items/"):
        for connection in (first, second, first, first):
            processor.untimed_connection(connection, lambda: _details(0))
    (result,) = tracing.results
    assert (result.values["db.untimed_connections"], result.violations) == (2, ())


def test_untimed_connection_event_where_a_file_sets_a_limit(tracing) -> None:  # type: ignore[no-untyped-def]
    """`db.untimed_connections = 0` in a file: the scope's first untimed connection is an event."""
    tracing.processor.config = parse_config({"celery": {"db": {"untimed_connections": 0}}}, source="t.toml")
    with tracing.tracer.start_as_current_span("run/t.x", kind=SpanKind.CONSUMER):
        processor.untimed_connection(object(), lambda: _details(7))
    (result,) = tracing.results
    (violation,) = result.violations
    assert (violation.metric, violation.actual, violation.details) == ("db.untimed_connections", 1, _details(7))


def test_describe_runs_only_where_the_metric_may_have_a_limit(tracing) -> None:  # type: ignore[no-untyped-def]
    """The details (a walk up the stack) are taken only where the scope's rule limits the metric, or may yet."""
    asked: list[int] = []

    def describe(n: int) -> dict[str, str]:
        asked.append(n)
        return _details(n)

    connections = [object() for _ in range(4)]
    with tracing.request("items/"):
        tracing.db("SELECT 1")  # the route was set (as Django does) before this span: the rule is final now
        processor.untimed_connection(connections[0], lambda: describe(1))  # and it has no such limit
        processor.untimed_connection(connections[1], lambda: describe(2))
    assert (tracing.results[-1].values["db.untimed_connections"], asked) == (2, [])
    with tracing.request("items/"):
        processor.untimed_connection(connections[2], lambda: describe(3))  # routed before its first span: resolved now
    with tracing.tracer.start_as_current_span("GET", kind=SpanKind.SERVER, attributes={"http.request.method": "GET"}):
        processor.untimed_connection(connections[2], lambda: describe(5))  # no route at all yet: its rule may limit it
    assert [result.values["db.untimed_connections"] for result in tracing.results[-2:]] == [1, 1]
    assert asked == [5]
    tracing.processor.config = parse_config({"http": {"db": {"untimed_connections": 0}}}, source="t.toml")
    with tracing.request("items/"):
        tracing.db("SELECT 1")
        processor.untimed_connection(connections[3], lambda: describe(4))
    (violation,) = tracing.results[-1].violations
    assert (violation.details, asked) == (_details(4), [5, 4])


def test_nested_scope_connection_counts_once_in_the_outer(tracing) -> None:  # type: ignore[no-untyped-def]
    """A connection used in a nested scope and around it is one untimed connection of the outer scope."""
    from otel_budget import budget_scope

    connection = object()
    with tracing.request("items/"):
        processor.untimed_connection(connection, lambda: _details(0))
        with budget_scope("inner", tracer_provider=tracing.provider):
            processor.untimed_connection(connection, lambda: _details(0))
            processor.untimed_connection(object(), lambda: _details(0))
    inner, outer = tracing.results
    assert (inner.values["db.untimed_connections"], outer.values["db.untimed_connections"]) == (2, 2)


def test_timeout_values() -> None:
    """None and a library's "default" sentinel (with no socket default) wait forever; numbers do not."""
    assert (_unbounded(None), _unbounded(3), _unbounded(0.5), _unbounded(object())) == (True, False, False, True)


def test_target_is_host_and_port_only() -> None:
    """host:port, with the scheme's port when none is given."""
    assert (_target(b"example.com", None, b"https"), _target("127.0.0.1", 8080), _target("h", "", "http")) == (
        "example.com:443", "127.0.0.1:8080", "h:80",
    )  # fmt: skip


def test_call_site_is_the_first_frame_outside_the_libraries() -> None:
    """From this test module the call site is this file and line."""
    import sys

    here = call_site(sys._getframe())
    assert here.endswith(f"test_untimed.py:{sys._getframe().f_lineno - 1}"), here
    assert _short_path("/nowhere/x.py") == "/nowhere/x.py"


class _Info:
    dsn_parameters = {"host": "db", "port": "5432", "options": ""}


class _Connection:
    """The shape `_check_cursor` reads of a psycopg2 connection without a timeout."""

    __module__ = "psycopg2.extensions"
    info = _Info()


class _Cursor:
    def __init__(self, connection: object) -> None:
        self.connection = connection


def test_cursor_check_asks_the_scope_once_per_connection_and_context(monkeypatch, tracing) -> None:  # type: ignore[no-untyped-def]
    """Statements on a known connection from the same context cost a lookup; a new scope is asked again."""
    import gc

    from otel_budget import _timeouts

    asked: list[object] = []
    monkeypatch.setattr(processor, "untimed_connection", lambda connection, describe: asked.append(connection))
    connection = _Connection()
    cursor = _Cursor(connection)
    execute = _timeouts._wrap_cursor(lambda tracer, cursor, statement: statement)
    with tracing.tracer.start_as_current_span("GET a/", kind=SpanKind.SERVER):
        assert [execute(None, cursor, f"SELECT {n}") for n in range(5)] == [f"SELECT {n}" for n in range(5)]
    with tracing.tracer.start_as_current_span("GET b/", kind=SpanKind.SERVER):
        execute(None, cursor, "SELECT 1")
        _timeouts._check_cursor(cursor)
    assert execute(None, object(), "SELECT 1") == "SELECT 1"  # no connection: not checked, not logged
    assert asked == [connection, connection]
    assert _timeouts._CONNECTIONS[id(connection)][0] is False
    key = id(connection)
    del asked[:], cursor, connection
    gc.collect()
    assert key not in _timeouts._CONNECTIONS and key not in _timeouts._REFS


class _MongoPool:
    """pymongo's `Pool` as `_check_mongo_pool` reads it: its options and address."""

    def __init__(self) -> None:
        self.opts = type("PoolOptions", (), {"socket_timeout": None})()
        self.address = ("127.0.0.1", 27017)


class _RedisPool:
    def __init__(self) -> None:
        self.connection_kwargs = {"host": "127.0.0.1", "port": 6379}


@pytest.mark.parametrize("make_pool", [_MongoPool, _RedisPool])
def test_pool_check_asks_the_scope_once_per_pool_and_context(monkeypatch, tracing, make_pool) -> None:  # type: ignore[no-untyped-def]
    """Operations on an untimed pool from the same context cost a lookup; a new scope is asked again."""
    import gc

    from otel_budget import _timeouts

    check = _timeouts._check_mongo_pool if make_pool is _MongoPool else _timeouts._check_redis_pool
    asked: list[object] = []
    monkeypatch.setattr(processor, "untimed_connection", lambda pool, describe: asked.append(pool))
    pool, other = make_pool(), make_pool()
    with tracing.tracer.start_as_current_span("GET a/", kind=SpanKind.SERVER):
        for _ in range(5):
            check(pool)
        check(other)
    with tracing.tracer.start_as_current_span("GET b/", kind=SpanKind.SERVER):
        check(pool)
        check(pool)
    assert asked == [pool, other, pool]
    key = id(pool)
    assert _timeouts._POOLS[key][0] is not None
    del asked[:], pool, other
    gc.collect()
    assert key not in _timeouts._POOLS and key not in _timeouts._REFS


def test_pool_check_counts_every_scope_exactly_once(tracing) -> None:  # type: ignore[no-untyped-def]
    """The same through the processor: one untimed connection per scope, however many operations."""
    from otel_budget import _timeouts

    pool = _MongoPool()
    for route in ("a/", "b/"):
        with tracing.tracer.start_as_current_span("GET", kind=SpanKind.SERVER, attributes={"http.route": route}):
            for _ in range(4):
                _timeouts._check_mongo_pool(pool)
    assert [result.values["db.untimed_connections"] for result in tracing.results] == [1, 1]


_LAZY_HOOKS = """
import sys
from otel_budget import BudgetSpanProcessor, _timeouts
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
provider = TracerProvider()
processor = BudgetSpanProcessor(record_metrics=False)
provider.add_span_processor(processor)
libraries = ("urllib3", "httpx", "httpcore", "pymongo", "redis", "opentelemetry.instrumentation.dbapi")
print(sorted(name for name in libraries if name in sys.modules), [h for h in _timeouts.installed() if not h.startswith("urllib.")])
import urllib3
results = []
processor.add_listener(results.append)
tracer = provider.get_tracer("t")
with tracer.start_as_current_span("GET", kind=SpanKind.SERVER, attributes={"http.route": "r/"}):
    with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT):
        try:
            urllib3.HTTPConnectionPool("127.0.0.1", 9).request("GET", "/", retries=False)
        except Exception:
            pass
print([hook for hook in _timeouts.installed() if hook.startswith("urllib3")], results[0].values["external.untimed_calls"])
print(urllib3.connectionpool.__spec__.loader.__class__.__name__, _timeouts._FINDER in sys.meta_path)
"""


def test_hooks_import_no_library_and_go_on_when_the_application_imports_it() -> None:
    """A processor imports none of the hooked libraries; one imported afterwards is hooked at its import."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _LAZY_HOOKS], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    before, after, loader = done.stdout.strip().splitlines()
    assert before == "[] []"
    assert after == "['urllib3.connectionpool.HTTPConnectionPool._make_request'] 1"
    assert loader == "SourceFileLoader True"  # the library's own loader again; still waiting for the others
