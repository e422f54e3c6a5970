"""`db.repeated_duration_ms`: the DB time of the statement `db.repeated_queries` counts, exact to the ns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind

from otel_budget import budget_scope
from otel_budget.config import ConfigError, load_config, validate_limits
from otel_budget.tally import MAX_STATEMENTS
from tracing_kit import Tracing, make_tracing

T0 = 1_700_000_000_000_000_000  # ns; every span below is placed by hand
N_PLUS_ONE = "SELECT * FROM book WHERE author_id = %s"


def timed_db(tracing: Tracing, statement: str, start_ns: int, ns: int) -> None:
    """A DB CLIENT span of exactly `ns`, starting at `start_ns`, in the current scope."""
    span = tracing.tracer.start_span(
        "db",
        kind=SpanKind.CLIENT,
        attributes={"db.system": "postgresql", "db.statement": statement},
        start_time=start_ns,
    )
    span.end(end_time=start_ns + ns)


def server(tracing: Tracing) -> Any:
    """The request span, started at T0; the caller ends it at a time of its choosing."""
    return tracing.tracer.start_as_current_span(
        "GET items/",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.route": "items/"},
        start_time=T0,
        end_on_exit=False,
    )


def test_exact_ns_of_the_most_repeated_statement() -> None:
    """Five runs of 1 234 567 ns + 3 ns each: 6.172 850 ms rounds to 6.173; other statements' time is left out."""
    tracing = make_tracing({})
    with server(tracing) as span:
        timed_db(tracing, "SELECT * FROM author", T0 + 1000, 50_000_000)  # slow, but run once
        for index in range(5):
            timed_db(tracing, N_PLUS_ONE.replace("%s", str(index)), T0 + 10**7 * (index + 10), 1_234_570)
        span.end(end_time=T0 + 10**9)
    attributes = tracing.span("GET items/").attributes
    assert attributes["budget.db.repeated_queries"] == 5
    assert attributes["budget.db.repeated_duration_ms"] == 6.173  # 5 x 1 234 570 ns = 6 172 850 ns
    assert attributes["budget.db.duration_ms"] == 56.173


def test_tie_keeps_the_first_statement_to_reach_the_count() -> None:
    """Two statements run 3 times each: the one that reached 3 first is the one measured and named."""
    tracing = make_tracing({"http": {"db.repeated_queries": 2}})
    with server(tracing) as span:
        at = T0
        for _ in range(3):
            timed_db(tracing, "SELECT * FROM a WHERE id = 1", at, 1_000_000)
            timed_db(tracing, "SELECT * FROM b WHERE id = 1", at + 2_000_000, 7_000_000)
            at += 10_000_000
        span.end(end_time=T0 + 10**9)
    attributes = tracing.span("GET items/").attributes
    assert (attributes["budget.db.repeated_queries"], attributes["budget.db.repeated_duration_ms"]) == (3, 3.0)
    assert tracing.events("GET items/")["db.repeated_queries"]["budget.statement"] == "SELECT * FROM a WHERE id = ?"


def test_the_statement_changes_when_another_passes_it() -> None:
    """A statement that overtakes the most repeated one brings its own time, not the sum of both."""
    tracing = make_tracing({})
    with server(tracing) as span:
        timed_db(tracing, "SELECT 1 FROM a", T0, 9_000_000)
        timed_db(tracing, "SELECT 1 FROM a", T0 + 10**7, 9_000_000)
        for index in range(3):
            timed_db(tracing, "SELECT 1 FROM b", T0 + 10**8 + index * 10**7, 2_000_001)
        span.end(end_time=T0 + 10**9)
    attributes = tracing.span("GET items/").attributes
    assert (attributes["budget.db.repeated_queries"], attributes["budget.db.repeated_duration_ms"]) == (3, 6.0)


def test_limit_crossed_at_the_span_that_took_it_over() -> None:
    """`db.repeated_duration_ms = 50`: 20 ms runs cross it at the third's end; the event names the statement."""
    tracing = make_tracing({"http": {"db.repeated_queries": 100, "db.repeated_duration_ms": 50}})
    with server(tracing) as span:
        for index in range(4):
            timed_db(tracing, N_PLUS_ONE.replace("%s", str(index)), T0 + index * 30_000_000, 20_000_000)
        span.end(end_time=T0 + 10**9)
    event = tracing.events("GET items/")["db.repeated_duration_ms"]
    assert (event["budget.limit"], event["budget.actual"], event["budget.rule"]) == (50, 80.0, "http")
    assert event["budget.statement"] == "SELECT * FROM book WHERE author_id = ?"
    (stamp,) = [e.timestamp for e in tracing.span("GET items/").events if e.name == "budget.exceeded"]
    assert stamp == T0 + 2 * 30_000_000 + 20_000_000  # the third span's end: 60 ms > 50
    (result,) = tracing.results
    assert [(v.metric, v.actual) for v in result.violations] == [("db.repeated_duration_ms", 80.0)]


def test_fast_repeats_under_the_time_limit_are_no_event() -> None:
    """Thirty 1 ms repeats: over neither a raised count nor the 50 ms limit: no event at all."""
    tracing = make_tracing({"http": {"db.repeated_queries": 30, "db.repeated_duration_ms": 50}})
    with server(tracing) as span:
        for index in range(30):
            timed_db(tracing, N_PLUS_ONE.replace("%s", str(index)), T0 + index * 2_000_000, 1_000_000)
        span.end(end_time=T0 + 10**9)
    assert tracing.events("GET items/") == {}
    assert tracing.span("GET items/").attributes["budget.db.repeated_duration_ms"] == 30.0


def test_measured_with_no_default_limit() -> None:
    """No file: measured on every scope, never an event of its own (only db.repeated_queries = 5 is enforced)."""
    tracing = make_tracing()
    with server(tracing) as span:
        for index in range(3):
            timed_db(tracing, "SELECT 1", T0 + index * 10**9, 10**9)
        span.end(end_time=T0 + 10**10)
    assert tracing.span("GET items/").attributes["budget.db.repeated_duration_ms"] == 3000.0
    assert tracing.events("GET items/") == {}


def test_statements_stay_bounded_and_the_time_follows_the_count() -> None:
    """Past MAX_STATEMENTS distinct statements new ones are not remembered (nor their time); repeats still are."""
    tracing = make_tracing({})
    with server(tracing) as span:
        for index in range(MAX_STATEMENTS + 40):
            timed_db(tracing, f"SELECT * FROM t{index}", T0 + index * 10, 5)
        late = T0 + 10**8
        for index in range(2):  # a statement first seen past the cap: never remembered, counted once each
            timed_db(tracing, "SELECT * FROM late", late + index * 10, 1_000_000)
        timed_db(tracing, "SELECT * FROM t7", late + 100, 3_000_000)  # a remembered one runs again
        span.end(end_time=T0 + 10**9)
    attributes = tracing.span("GET items/").attributes
    assert (attributes["budget.db.repeated_queries"], attributes["budget.db.repeated_duration_ms"]) == (2, 3.0)


def test_nested_scopes_merge_within_the_statement_cap() -> None:
    """The outer scope remembers at most MAX_STATEMENTS statements however many nested scopes merge into it."""
    tracing = make_tracing({})
    with server(tracing) as span:
        with budget_scope("first", tracer_provider=tracing.provider):
            for index in range(MAX_STATEMENTS):  # fills the outer scope's statements when merged
                timed_db(tracing, f"SELECT * FROM t{index}", T0 + index * 10, 5)
        late = T0 + 10**8
        with budget_scope("second", tracer_provider=tracing.provider):
            for index in range(2):  # past the outer cap: merged as a count of 2, not remembered
                timed_db(tracing, "SELECT * FROM late", late + index * 10, 1_000_000)
        timed_db(tracing, "SELECT * FROM late", late + 10**6, 1_000_000)  # the outer scope's own run: 1
        span.end(end_time=T0 + 10**9)
    assert tracing.span("second").attributes["budget.db.repeated_queries"] == 2
    outer = tracing.span("GET items/").attributes
    # remembered, the late statement would reach 3 runs (3 ms); past the cap the merge's 2 runs stay the most
    assert (outer["budget.db.repeated_queries"], outer["budget.db.repeated_duration_ms"]) == (2, 2.0)


def test_nested_scope_merges_per_statement() -> None:
    """A nested scope's runs of a statement add to the outer scope's runs of it, count and time together."""
    tracing = make_tracing({})
    with server(tracing) as span:
        timed_db(tracing, "SELECT 1 FROM a", T0, 4_000_000)
        timed_db(tracing, "SELECT 1 FROM b", T0 + 10**7, 1_000_000)
        timed_db(tracing, "SELECT 1 FROM b", T0 + 2 * 10**7, 1_000_000)
        with budget_scope("chunk", tracer_provider=tracing.provider):
            for index in range(2):
                timed_db(tracing, "SELECT 1 FROM a", T0 + 10**8 + index * 10**7, 2_500_000)
        span.end(end_time=T0 + 10**9)
    chunk = tracing.span("chunk").attributes
    assert (chunk["budget.db.repeated_queries"], chunk["budget.db.repeated_duration_ms"]) == (2, 5.0)
    outer = tracing.span("GET items/").attributes
    # a: 1 + 2 runs, 4 + 5 ms, past b's 2 runs (2 ms)
    assert (outer["budget.db.repeated_queries"], outer["budget.db.repeated_duration_ms"]) == (3, 9.0)


def test_nested_scope_tie_keeps_the_outer_statement() -> None:
    """After the merge, a nested statement that only ties the outer scope's most repeated one does not replace it."""
    tracing = make_tracing({})
    with server(tracing) as span:
        timed_db(tracing, "SELECT 1 FROM a", T0, 1_000_000)
        timed_db(tracing, "SELECT 1 FROM a", T0 + 10**7, 1_000_000)
        with budget_scope("chunk", tracer_provider=tracing.provider):
            for index in range(2):
                timed_db(tracing, "SELECT 1 FROM b", T0 + 10**8 + index * 10**7, 8_000_000)
        span.end(end_time=T0 + 10**9)
    outer = tracing.span("GET items/").attributes
    assert (outer["budget.db.repeated_queries"], outer["budget.db.repeated_duration_ms"]) == (2, 2.0)


def test_nested_scope_merge_crosses_the_outer_limit() -> None:
    """The merged time is compared with the outer scope's limit: crossed at the nested scope's end."""
    tracing = make_tracing({"http": {"db.repeated_duration_ms": 10}})
    with server(tracing) as span:
        timed_db(tracing, "SELECT 1 FROM a", T0, 6_000_000)
        with budget_scope("chunk", db_repeated_duration_ms=100, tracer_provider=tracing.provider):
            timed_db(tracing, "SELECT 1 FROM a", T0 + 10**7, 6_000_000)
        span.end(end_time=T0 + 10**9)
    assert tracing.events("chunk") == {}
    event = tracing.events("GET items/")["db.repeated_duration_ms"]
    assert (event["budget.actual"], event["budget.statement"]) == (12.0, "SELECT ? FROM a")


def test_code_budget_keyword_and_marker_style_dict() -> None:
    """`db_repeated_duration_ms=` and `{'db.repeated_duration_ms': ...}` are accepted; negative is refused."""
    assert dict(validate_limits({"db_repeated_duration_ms": 50})) == {"db.repeated_duration_ms": 50}
    assert dict(validate_limits({"db.repeated_duration_ms": 2.5})) == {"db.repeated_duration_ms": 2.5}
    with pytest.raises(ConfigError, match="db_repeated_duration_ms"):
        validate_limits({"db_repeated_duration_ms": -1})


@pytest.mark.parametrize("section", ["[http]", "[celery]", "[scope]", '[[http.route]]\nmatch = "books/*"'])
def test_budgets_file_accepts_it_everywhere(tmp_path: Path, section: str) -> None:
    """`db.repeated_duration_ms = 50` in any section or override, a float limit in ms."""
    path = tmp_path / "budgets.toml"
    path.write_text(f"{section}\ndb.repeated_queries = 20\ndb.repeated_duration_ms = 50.5\n")
    config = load_config(path)
    kind = "celery" if "celery" in section else "scope" if "scope" in section else "http"
    limits = config.rule_for(kind, "books/1" if "route" in section else "x").limits
    assert (limits["db.repeated_queries"], limits["db.repeated_duration_ms"]) == (20, 50.5)


def test_budgets_file_refuses_a_negative_limit(tmp_path: Path) -> None:
    """A negative limit is the usual error naming the file and the key."""
    path = tmp_path / "budgets.toml"
    path.write_text("[http]\ndb.repeated_duration_ms = -50\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).replace(str(tmp_path) + "/", "") == (
        "budgets.toml: http.db.repeated_duration_ms: must be a non-negative number, got negative -50"
    )


def test_default_histogram_records_the_exact_value() -> None:
    """It gets a histogram by default (a signal on most scopes, unlike the untimed counts): sum and count exact."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    tracing = make_tracing(record_metrics=True, meter_provider=MeterProvider([reader]))
    for request in range(2):
        with server(tracing) as span:
            for index in range(3):
                timed_db(tracing, N_PLUS_ONE.replace("%s", str(index)), T0 + index * 10**7, 1_500_000 << request)
            span.end(end_time=T0 + 10**9)
    points = [
        point
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "budget.db.repeated_duration"  # unit ms on the instrument, not in its name
        for point in metric.data.data_points
    ]
    assert [(point.count, point.sum) for point in points] == [(2, 4.5 + 9.0)]
