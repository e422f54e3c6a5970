from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from otel_budget import _ratelimit
from otel_budget.results import ScopeResult
from tracing_kit import Tracing, make_tracing, touched_mapping

HTTP_LIMITS = {
    "http": {
        "db.queries": 3,
        "db.duration_ms": 1000,
        "external.calls": 0,
        "tasks.enqueued": 1,
        "db.postgresql.queries": 2,
        "route": [{"match": "reports/*", "db.queries": 100}],
    },
    "celery": {"db.queries": 1},
}


def only(results: list[ScopeResult]) -> ScopeResult:
    assert len(results) == 1, results
    return results[0]


def test_six_different_cql_queries_are_no_n_plus_one(tracing: Tracing) -> None:
    """Cassandra's statements are normalised like SQL: six different queries repeat once each, not six times."""
    with tracing.request():
        for table in ("users", "orders", "carts", "events", "sessions", "tags"):
            tracing.db(f"SELECT * FROM shop.{table} WHERE id = 123e4567-e89b-12d3-a456-426614174000", system="cassandra")
        for index in range(1, 8):  # IN lists of 1 to 7 values
            tracing.db(f"SELECT * FROM shop.lines WHERE cart = {index} AND sku IN ({', '.join(['?'] * index)})", system="cassandra")
    attributes = tracing.span("GET items/").attributes
    assert (attributes["budget.db.cassandra.queries"], attributes["budget.db.repeated_queries"]) == (13, 7)
    event = tracing.events("GET items/")["db.repeated_queries"]
    assert event["budget.statement"] == "SELECT * FROM shop.lines WHERE cart = ? AND sku IN (?)"


def test_mysql_double_quoted_strings_are_literals(tracing: Tracing) -> None:
    """Under `db.system` mysql a `"..."` is a string: the exported statement does not carry it."""
    with tracing.request():
        for index in range(6):
            tracing.db(f'SELECT * FROM line WHERE email = "user{index}@example.com" # by {index}', system="mysql")
    event = tracing.events("GET items/")["db.repeated_queries"]
    assert (event["budget.statement"], event["budget.actual"]) == ("SELECT * FROM line WHERE email = ?", 6)


def test_counts_every_db_metric_old_semconv(tracing: Tracing) -> None:
    """Queries, time and repeats per system, from db.system/db.statement."""
    with tracing.request():
        for index in range(3):
            tracing.db(f"SELECT * FROM line WHERE order_id = {index}")
        tracing.db("find", system="mongodb", **{"db.mongodb.collection": "reviews"})
    attributes = tracing.span("GET items/").attributes
    assert attributes["budget.db.queries"] == 4
    assert attributes["budget.db.postgresql.queries"] == 3
    assert attributes["budget.db.mongodb.queries"] == 1
    assert attributes["budget.db.repeated_queries"] == 3
    assert attributes["budget.violations"] == 0
    assert attributes["budget.rule"] == "http"
    db_ms = sum((s.end_time - s.start_time) / 1e6 for s in tracing.spans() if s.name == "db")
    assert attributes["budget.db.duration_ms"] == pytest.approx(db_ms, abs=0.002)


def test_counts_stable_semconv(tracing: Tracing) -> None:
    """db.system.name/db.query.text and http.request.method/url.full are read too."""
    with tracing.request():
        tracing.db("SELECT 1", stable=True)
        tracing.db("SELECT 1", system="sqlite", stable=True)
        with tracing.tracer.start_as_current_span(
            "GET", kind=SpanKind.CLIENT, attributes={"http.request.method": "GET", "url.full": "http://x/"}
        ):
            pass
    attributes = tracing.span("GET items/").attributes
    assert (attributes["budget.db.queries"], attributes["budget.db.sqlite.queries"]) == (2, 1)
    assert attributes["budget.external.calls"] == 1


def test_external_calls_old_semconv(tracing: Tracing) -> None:
    """HTTP CLIENT spans with http.method count as external calls, with their time."""
    with tracing.request():
        for _ in range(2):
            with tracing.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"http.method": "GET"}):
                time.sleep(0.002)
    attributes = tracing.span("GET items/").attributes
    assert attributes["budget.external.calls"] == 2
    assert attributes["budget.external.duration_ms"] >= 4.0


def test_tasks_enqueued(tracing: Tracing) -> None:
    """Celery apply_async PRODUCER spans count as enqueued tasks; other producers do not."""
    with tracing.request():
        for _ in range(2):
            with tracing.tracer.start_as_current_span(
                "apply_async/shop.tasks.rebuild", kind=SpanKind.PRODUCER, attributes={"celery.action": "apply_async"}
            ):
                pass
        with tracing.tracer.start_as_current_span("kafka send", kind=SpanKind.PRODUCER):
            pass
    assert tracing.span("GET items/").attributes["budget.tasks.enqueued"] == 2


def test_end_only_metrics_present(tracing: Tracing) -> None:
    """Duration, CPU and memory are measured on every scope."""
    with tracing.request():
        time.sleep(0.01)
    attributes = tracing.span("GET items/").attributes
    span = tracing.span("GET items/")
    assert attributes["budget.duration_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6, abs=0.001)
    assert 0 <= attributes["budget.cpu_ms"] < attributes["budget.duration_ms"]
    assert isinstance(attributes["budget.memory.growth_mb"], float)
    assert attributes["budget.memory.peak_growth_mb"] >= 0


def test_memory_growth_measured() -> None:
    """Memory kept alive by the scope shows as growth and triggers its budget."""
    tracing = make_tracing({"http": {"memory.growth_mb": 20}})
    with tracing.request():
        kept = touched_mapping(40 * 1024 * 1024)  # resident until closed, whatever malloc holds
    kept.close()
    growth = tracing.span("GET items/").attributes["budget.memory.growth_mb"]
    assert 38 <= growth <= 44
    event = tracing.events("GET items/")["memory.growth_mb"]
    assert event["budget.limit"] == 20.0
    assert event["budget.actual"] == growth


def test_events_exactly_the_exceeded_metrics() -> None:
    """One event per exceeded metric, with limit, actual, rule, route and method."""
    tracing = make_tracing(HTTP_LIMITS)
    with tracing.request():
        for index in range(4):
            tracing.db(f"SELECT * FROM line WHERE id = {index}")
        tracing.db("find", system="mongodb")
        with tracing.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"http.method": "GET"}):
            pass
    events = tracing.events("GET items/")
    assert set(events) == {"db.queries", "db.postgresql.queries", "external.calls"}
    assert events["db.queries"] == {
        "budget.metric": "db.queries",
        "budget.limit": 3,
        "budget.actual": 5,
        "budget.rule": "http",
        "http.route": "items/",
        "http.request.method": "GET",
    }
    assert (events["db.postgresql.queries"]["budget.limit"], events["db.postgresql.queries"]["budget.actual"]) == (2, 4)
    assert tracing.span("GET items/").attributes["budget.violations"] == 3


def test_count_event_stamped_when_limit_crossed() -> None:
    """A count event carries the end time of the span that crossed the limit."""
    tracing = make_tracing({"http": {"db.queries": 2}})
    with tracing.request():
        for index in range(5):
            tracing.db(f"SELECT {index}")
            time.sleep(0.001)
    third = [s for s in tracing.spans() if s.name == "db"][2]
    (event,) = tracing.span("GET items/").events
    assert event.timestamp == third.end_time
    assert event.timestamp < tracing.span("GET items/").end_time


def test_end_only_event_stamped_at_scope_end() -> None:
    """A duration event carries the scope's end time."""
    tracing = make_tracing({"http": {"duration_ms": 1}})
    with tracing.request():
        time.sleep(0.005)
    span = tracing.span("GET items/")
    (event,) = span.events
    assert event.attributes["budget.metric"] == "duration_ms"
    assert event.timestamp == span.end_time


def test_n_plus_one_event_carries_normalised_statement(tracing: Tracing) -> None:
    """The repeated statement is exported normalised, never with its literals."""
    with tracing.request():
        for index in range(6):
            tracing.db(f"SELECT * FROM line WHERE email = 'user{index}@example.com' AND order_id = {index}")
        tracing.db("SELECT 1")
    event = tracing.events("GET items/")["db.repeated_queries"]
    assert event["budget.statement"] == "SELECT * FROM line WHERE email = ? AND order_id = ?"
    assert (event["budget.limit"], event["budget.actual"]) == (5, 6)
    exported = str(tracing.span("GET items/").attributes) + str(tracing.span("GET items/").events)
    assert "example.com" not in exported


def test_route_override_applies_once_route_is_known() -> None:
    """The route is set after the span starts (as Django does); its override wins."""
    tracing = make_tracing(HTTP_LIMITS)
    with tracing.request(route="reports/monthly/"):
        for index in range(10):
            tracing.db(f"SELECT {index}", system="mongodb")
    span = tracing.span("GET reports/monthly/")
    assert span.attributes["budget.rule"] == "route:reports/*"
    assert "db.queries" not in tracing.events("GET reports/monthly/")


def test_route_resolution_late_crossing_time() -> None:
    """Queries counted before the route was known cross a limit when the route resolves."""
    tracing = make_tracing({"http": {"route": [{"match": "tiny/", "db.queries": 1}]}})
    with tracing.tracer.start_as_current_span("GET", kind=SpanKind.SERVER, attributes={"http.method": "GET"}) as span:
        tracing.db("SELECT 1", system="mongodb")
        tracing.db("SELECT 2", system="mongodb")
        span.set_attribute("http.route", "tiny/")
    event = tracing.events("GET")["db.queries"]
    assert (event["budget.rule"], event["budget.actual"]) == ("route:tiny/", 2)


def test_celery_task_scope_and_rule() -> None:
    """A CONSUMER run/<task> span is a scope named after the task."""
    tracing = make_tracing({"celery": {"db.queries": 1}, "http": {}})
    remote = trace.SpanContext(trace_id=7, span_id=9, is_remote=True, trace_flags=trace.TraceFlags(1))
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    with tracing.tracer.start_as_current_span("run/shop.tasks.rebuild", context=ctx, kind=SpanKind.CONSUMER):
        tracing.db("SELECT 1")
        tracing.db("SELECT 2")
    event = tracing.events("run/shop.tasks.rebuild")["db.queries"]
    assert event["celery.task_name"] == "shop.tasks.rebuild"
    assert "http.route" not in event
    result = only(tracing.results)
    assert (result.kind, result.name, result.rule) == ("celery", "shop.tasks.rebuild", "celery")


def test_server_span_with_local_parent_is_not_a_scope(tracing: Tracing) -> None:
    """A SERVER span under a local parent belongs to the enclosing scope (e.g. Django under ASGI)."""
    with tracing.request(route="outer/"):
        with tracing.tracer.start_as_current_span("inner", kind=SpanKind.SERVER):
            tracing.db("SELECT 1")
    assert [r.name for r in tracing.results] == ["outer/"]
    assert "budget.db.queries" not in tracing.span("inner").attributes


def test_spans_without_scope_are_ignored(tracing: Tracing) -> None:
    """A query outside any scope is not counted anywhere."""
    tracing.db("SELECT 1")
    with tracing.tracer.start_as_current_span("internal"):
        tracing.db("SELECT 2")
    assert tracing.results == []
    assert tracing.processor.open_scopes == 0


def in_threads(count: int, work: Callable[[], None]) -> None:
    """Run `work` in `count` threads at once, each carrying the current context; wait for all."""
    ctx = context_api.get_current()
    start = threading.Barrier(count)

    def carried() -> None:
        token = context_api.attach(ctx)
        try:
            start.wait()
            work()
        finally:
            context_api.detach(token)

    threads = [threading.Thread(target=carried) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_spans_in_other_threads_count_when_context_is_carried(tracing: Tracing) -> None:
    """A child started in another thread with the scope's context counts toward it."""
    with tracing.request():
        in_threads(8, lambda: tracing.db("SELECT 1"))
    assert tracing.span("GET items/").attributes["budget.db.queries"] == 8


def test_concurrent_scopes_do_not_bleed() -> None:
    """Many requests in parallel threads each export exactly their own counts."""
    tracing = make_tracing()

    def request(count: int) -> None:
        with tracing.request(route=f"r{count}/"):
            for index in range(count):
                tracing.db(f"SELECT {index}", system="mongodb")

    threads = [threading.Thread(target=request, args=(count,)) for count in range(1, 41)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = {r.name: r.values["db.queries"] for r in tracing.results}
    assert counts == {f"r{count}/": count for count in range(1, 41)}


def test_unsampled_spans_are_not_tallied() -> None:
    """A dropped (unsampled) request is not a scope and costs nothing."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from otel_budget import BudgetSpanProcessor

    provider = TracerProvider(sampler=ALWAYS_OFF)
    processor = BudgetSpanProcessor(record_metrics=False)
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span("GET", kind=SpanKind.SERVER):
        assert processor.open_scopes == 0


def test_scope_results_reach_listeners(tracing: Tracing) -> None:
    """Listeners get a ScopeResult with values, violations and ids."""
    with tracing.request(route="items/<int:pk>/") as span:
        for _ in range(6):
            tracing.db("SELECT * FROM t WHERE id = %s")
    result = only(tracing.results)
    assert result.label == "GET items/<int:pk>/"
    assert result.trace_id == span.get_span_context().trace_id
    assert [v.metric for v in result.violations] == ["db.repeated_queries"]
    assert result.repeated_statement == "SELECT * FROM t WHERE id = ?"
    assert "db.repeated_queries = 6 > limit 5 (rule http)" in result.describe()


def test_eviction_is_bounded_and_counted() -> None:
    """Scopes that never end are evicted past the cap, and counted."""
    tracing = make_tracing(max_open_scopes=100)
    tracer = tracing.tracer
    for _ in range(1000):
        span = tracer.start_span("GET", kind=SpanKind.SERVER)
        with trace.use_span(span, end_on_exit=False):
            tracer.start_span("child")  # never ended either
    assert tracing.processor.open_scopes == 100
    assert tracing.processor.evicted_scopes == 900
    assert len(tracing.processor._spans) == 200  # noqa: SLF001 - the bound is the point of this test


def test_scope_ended_with_open_children_forgets_them(tracing: Tracing) -> None:
    """Children that never end do not keep a finished scope's tally alive."""
    with tracing.request():
        for _ in range(5):
            tracing.tracer.start_span("never ended")
    assert len(tracing.processor._spans) == 0  # noqa: SLF001 - the leak is the point of this test


def test_budgeted_system_not_touched_is_zero() -> None:
    """A system with a limit appears as 0 when the scope made no query on it."""
    tracing = make_tracing({"http": {"db.mongodb.queries": 3}})
    with tracing.request():
        tracing.db("SELECT 1")
    attributes = tracing.span("GET items/").attributes
    assert (attributes["budget.db.mongodb.queries"], attributes["budget.db.mongodb.duration_ms"]) == (0, 0.0)


def test_config_error_is_shown_on_every_scope() -> None:
    """A processor started with a bad file marks every scope span with the reason."""
    tracing = make_tracing(config_error="budgets.toml: http.db.querys: unknown metric")
    with tracing.request():
        pass
    assert tracing.span("GET items/").attributes["budget.config_error"] == "budgets.toml: http.db.querys: unknown metric"


def test_processor_never_raises_into_the_host(tracing: Tracing, caplog: pytest.LogCaptureFixture) -> None:
    """A failing listener is logged and the request's span still ends and exports."""

    def broken(result: ScopeResult) -> None:
        raise RuntimeError("listener bug")

    _ratelimit.reset()
    tracing.processor.add_listener(broken)
    with tracing.request():
        tracing.db("SELECT 1")
    assert tracing.span("GET items/").attributes["budget.db.queries"] == 1
    with tracing.request(route="again/"):
        pass
    logged = [r for r in caplog.records if r.getMessage() == "otel-budget: a scope listener failed"]
    assert len(logged) == 1  # the second failure within a minute is held back
    assert tracing.span("GET again/").attributes["budget.violations"] == 0


def test_hostile_span_attributes_are_survived(tracing: Tracing) -> None:
    """Odd attribute types (a list as db.system, bytes-ish statements) never break the request."""
    with tracing.request():
        with tracing.tracer.start_as_current_span(
            "db", kind=SpanKind.CLIENT, attributes={"db.system": ["postgresql"], "db.statement": 42}
        ):
            pass
    assert tracing.span("GET items/").attributes["budget.db.queries"] == 1


def test_fork_resets_state(tracing: Tracing) -> None:
    """After fork the child starts with no inherited open scopes."""
    import os

    with tracing.request():
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.write(write, str(tracing.processor.open_scopes).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(read, 16) == b"0"
        assert tracing.processor.open_scopes == 1


# -- the batched count (`ScopeTally.drain`) and the direct attribute write --------------------------


def test_counts_and_crossing_times_exact_across_drain_batches() -> None:
    """Queries are counted in batches; totals and the span at which each limit was crossed stay exact."""
    tracing = make_tracing({"http": {"db.queries": 20, "db.repeated_queries": 30}})
    with tracing.request():
        for index in range(53):
            tracing.db("SELECT * FROM t WHERE id = %s" if index % 3 else f"SELECT {index}")
    queries = [span for span in tracing.spans() if span.name == "db"]
    attributes = tracing.span("GET items/").attributes
    assert (attributes["budget.db.queries"], attributes["budget.db.repeated_queries"]) == (53, 35)
    events = tracing.events("GET items/")
    assert events["db.queries"]["budget.actual"] == 53
    assert events["db.repeated_queries"]["budget.actual"] == 35
    stamps = {event.attributes["budget.metric"]: event.timestamp for event in tracing.span("GET items/").events}
    assert stamps["db.queries"] == queries[20].end_time  # the 21st query crossed 20
    repeated = [span for index, span in enumerate(queries) if index % 3]
    assert stamps["db.repeated_queries"] == repeated[30].end_time  # its 31st execution crossed 30


def test_many_threads_appending_while_another_drains_lose_nothing(tracing: Tracing) -> None:
    """Children end in 8 threads at once (unlocked appends racing the batch count): every one is counted."""
    def work() -> None:
        for index in range(250):
            tracing.db(f"SELECT * FROM t{index % 7}")

    with tracing.request():
        in_threads(8, work)
    attributes = tracing.span("GET items/").attributes
    assert attributes["budget.db.queries"] == 2000
    assert attributes["budget.db.postgresql.queries"] == 2000
    assert attributes["budget.db.repeated_queries"] == 8 * 36  # t0 ... t5: 36 times per thread (t6: 35)
    assert attributes["budget.db.duration_ms"] == pytest.approx(
        sum((s.end_time or 0) - (s.start_time or 0) for s in tracing.spans() if s.name == "db") / 1e6, abs=0.001
    )


def test_a_statement_that_cannot_be_normalised_costs_only_itself(
    tracing: Tracing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failing span in a batch is left out; the others in the same batch are counted."""
    from otel_budget import tally as tally_module

    original = tally_module.normalize_sql

    def normalize_sql(statement: str, *dialect: str) -> str:
        if "poison" in statement:
            raise ValueError("injected")
        return original(statement, *dialect)

    monkeypatch.setattr(tally_module, "normalize_sql", normalize_sql)
    _ratelimit.reset()
    with tracing.request():
        for index in range(40):
            tracing.db("SELECT poison" if index == 7 else f"SELECT {index}")
    assert tracing.span("GET items/").attributes["budget.db.queries"] == 39


def test_summary_through_the_sdk_when_span_limits_could_bite() -> None:
    """With attribute limits in force, the SDK itself applies them to our summary (drops, truncation)."""
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otel_budget import BudgetSpanProcessor

    for limits, check in (
        # 9 of the app's + our 17 (13 metrics, 2 for sqlite, violations, rule) > 18: the SDK drops the 8 oldest.
        (SpanLimits(max_span_attributes=18), lambda span: span.dropped_attributes == 8 and "app.8" in span.attributes),
        # Values cut to 3 characters (`db.system` too: "sql").
        (SpanLimits(max_span_attribute_length=3), lambda span: span.attributes["budget.rule"] == "htt"),
    ):
        exporter = InMemorySpanExporter()
        provider = TracerProvider(span_limits=limits)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider.add_span_processor(BudgetSpanProcessor(record_metrics=False))
        tracer = provider.get_tracer("tests")
        with tracer.start_as_current_span(
            "GET", kind=SpanKind.SERVER, attributes={f"app.{index}": index for index in range(9)}
        ) as span:
            with tracer.start_as_current_span("db", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite"}):
                pass
        (exported,) = [s for s in exporter.get_finished_spans() if s.name == "GET"]
        assert exported.attributes["budget.db.queries"] == 1
        assert check(exported), (limits, exported.dropped_attributes, dict(exported.attributes))
        provider.shutdown()


def test_writable_span_in_on_ending_finishes_the_scope_there(tracing: Tracing, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the SDK hand `_on_ending` a writable span (opentelemetry-python#5613), the scope ends there, once."""
    from otel_budget import processor as processor_module

    monkeypatch.setattr(processor_module, "_ON_ENDING_FROZEN", False)  # what the import-time probe finds then
    span = tracing.tracer.start_span("GET", kind=SpanKind.SERVER, attributes={"http.route": "w/"})
    with trace.use_span(span):
        tracing.db("SELECT 1")
    tracing.processor._on_ending(span)  # noqa: SLF001 - what such an SDK would call before freezing
    assert span.attributes["budget.db.queries"] == 1
    span.end()
    assert [r.name for r in tracing.results] == ["w/"]
    assert tracing.span("GET").attributes["budget.violations"] == 0


# -- overlay (the pytest plugin's per-test budgets) ---------------------------------------------------
def test_overlay_applies_as_rule_code() -> None:
    """An overlay limit replaces the file's limit it names, credited to rule `code`; the rest stay the file's."""
    tracing = make_tracing({"http": {"db.queries": 100, "db.repeated_queries": 100}})
    tracing.processor.set_overlay({"db.queries": 1})
    with tracing.request():
        tracing.db("SELECT 1")
        tracing.db("SELECT 2")
    event = tracing.events("GET items/")["db.queries"]
    assert (event["budget.rule"], event["budget.limit"], event["budget.actual"]) == ("code", 1, 2)
    assert set(tracing.events("GET items/")) == {"db.queries"}
    assert tracing.span("GET items/").attributes["budget.rule"] == "code"


def test_in_code_limits_win_over_the_overlay() -> None:
    """A budget_scope's own limit wins over the overlay's; the overlay still sets what the scope leaves out."""
    from otel_budget import budget_scope

    tracing = make_tracing({"scope": {"db.queries": 100}})
    tracing.processor.set_overlay({"db.queries": 1, "db.repeated_queries": 1})
    with budget_scope("import", db_queries=5, tracer_provider=tracing.provider):
        tracing.db("SELECT 1")
        tracing.db("SELECT 1")
    events = tracing.events("import")
    assert list(events) == ["db.repeated_queries"]
    assert (events["db.repeated_queries"]["budget.rule"], events["db.repeated_queries"]["budget.limit"]) == ("code", 1)
    (result,) = tracing.results
    assert (result.rule, result.values["db.queries"]) == ("code", 2)
    assert [(v.metric, v.limit, v.rule) for v in result.violations] == [("db.repeated_queries", 1, "code")]


def test_overlay_none_removes_it() -> None:
    """set_overlay(None): scopes are back on the file's rule."""
    tracing = make_tracing({"http": {"db.queries": 1}})
    tracing.processor.set_overlay({"db.queries": 10})
    tracing.processor.set_overlay(None)
    with tracing.request():
        tracing.db("SELECT 1")
        tracing.db("SELECT 2")
    assert tracing.events("GET items/")["db.queries"]["budget.rule"] == "http"


def test_an_end_set_on_the_scope_span_before_ours_still_runs_and_comes_back(tracing: Tracing) -> None:
    """A processor before ours that puts its own `end` on the span: ours wraps it, calls it, then restores it;
    the span's instance dict is never built (`__dict__` is not read: it would slow the SDK on that span)."""
    from opentelemetry.sdk.trace import SpanProcessor

    ended: list[int | None] = []

    class OwnEnd(SpanProcessor):
        def on_start(self, span, parent_context=None):  # type: ignore[no-untyped-def]
            method = span.end
            span.end = lambda end_time=None: (ended.append(end_time), method(end_time))

    # before ours, as an exporter's processor would be
    processors = tracing.provider._active_span_processor._span_processors
    tracing.provider._active_span_processor._span_processors = (OwnEnd(), *processors)
    span = tracing.tracer.start_span("GET", kind=SpanKind.SERVER, attributes={"http.route": "r/"})
    wrapper = span.end
    span.end(end_time=1_900_000_000_000_000_000)
    assert ended == [1_900_000_000_000_000_000]
    assert span.end is not wrapper  # ours is gone: what is left is the processor's own
    assert span.end.__name__ == "<lambda>"
    assert [result.values["db.queries"] for result in tracing.results] == [0]
    assert tracing.spans()[-1].attributes["budget.violations"] == 0


def test_the_scope_span_keeps_its_inline_attributes(tracing: Tracing) -> None:
    """Our `end` goes on the span as an attribute (setattr), so CPython keeps its attributes inline: reading
    `__dict__` would have made a dict of them (and slowed every access of the SDK's code to that span).
    Compared with a span no processor touched: inline on CPython 3.11+, a dict from the start before."""
    from opentelemetry.sdk.trace import TracerProvider

    untouched = TracerProvider().get_tracer("plain").start_span("GET", kind=SpanKind.SERVER)
    expected = _has_materialized_dict(untouched)
    span = tracing.tracer.start_span("GET", kind=SpanKind.SERVER, attributes={"http.route": "r/"})
    assert type(span.end).__name__ == "_EndScope"
    assert _has_materialized_dict(span) is expected
    span.end()
    assert _has_materialized_dict(span) is expected
    untouched.end()


def _has_materialized_dict(obj: object) -> bool:
    """Whether CPython made `obj` an instance dict (`gc.get_referents` of an object with inline values lists the
    values themselves; with a dict made, the dict is among them)."""
    import gc

    return any(type(each) is dict and each.get("_name") is not None for each in gc.get_referents(obj))
