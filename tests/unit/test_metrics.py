from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tracing_kit import make_tracing


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def test_violation_counter_and_histograms() -> None:
    """budget.violations counts by metric, rule and route; each metric has a histogram by route."""
    reader = InMemoryMetricReader()
    tracing = make_tracing({"http": {"db.queries": 1}}, record_metrics=True, meter_provider=MeterProvider([reader]))
    for _ in range(3):
        with tracing.request(route="orders/"):
            tracing.db("SELECT 1")
            tracing.db("SELECT 2")
    metrics = collect(reader)
    (point,) = metrics["budget.violations"]
    assert point.value == 3
    assert dict(point.attributes) == {
        "http.route": "orders/",
        "http.request.method": "GET",
        "budget.metric": "db.queries",
        "budget.rule": "http",
    }
    (queries,) = metrics["budget.db.queries"]
    assert (queries.count, queries.sum) == (3, 6)
    assert dict(queries.attributes) == {"http.route": "orders/", "http.request.method": "GET"}
    assert metrics["budget.db.postgresql.queries"][0].sum == 6
    assert {"budget.duration", "budget.memory.growth", "budget.cpu"} <= set(metrics)


def test_task_histograms_by_task_name() -> None:
    """Task scopes are recorded by celery.task_name."""
    from opentelemetry.trace import SpanKind

    reader = InMemoryMetricReader()
    tracing = make_tracing(record_metrics=True, meter_provider=MeterProvider([reader]))
    with tracing.tracer.start_as_current_span("run/shop.tasks.t", kind=SpanKind.CONSUMER):
        tracing.db("SELECT 1")
    (point,) = collect(reader)["budget.db.queries"]
    assert dict(point.attributes) == {"celery.task_name": "shop.tasks.t"}


def test_histogram_buckets_fit_counts_mib_and_ms() -> None:
    """Counts get a bucket per value up to 20, MiB start at 10 KiB, ms reach minutes (not the SDK default)."""
    reader = InMemoryMetricReader()
    tracing = make_tracing(record_metrics=True, meter_provider=MeterProvider([reader]))
    with tracing.request(route="books/"):
        for i in range(18):
            tracing.db(f"SELECT {i}")
    metrics = collect(reader)
    (queries,) = metrics["budget.db.queries"]
    bounds = list(queries.explicit_bounds)
    assert bounds[:21] == list(range(21)) and bounds[-1] == 5000
    assert queries.bucket_counts[bounds.index(18)] == 1  # the (17, 18] bucket: a quantile reads 17-18
    (growth,) = metrics["budget.memory.growth"]
    assert list(growth.explicit_bounds)[:3] == [0, 0.01, 0.025]
    (duration,) = metrics["budget.duration"]
    assert list(duration.explicit_bounds)[-3:] == [30000, 60000, 300000]


def test_an_application_view_wins_over_the_advice() -> None:
    """A View with its own aggregation replaces the advised boundaries."""
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    reader = InMemoryMetricReader()
    view = View(instrument_name="budget.db.queries", aggregation=ExplicitBucketHistogramAggregation((0, 100)))
    tracing = make_tracing(record_metrics=True, meter_provider=MeterProvider([reader], views=[view]))
    with tracing.request(route="books/"):
        tracing.db("SELECT 1")
    (queries,) = collect(reader)["budget.db.queries"]
    assert list(queries.explicit_bounds) == [0, 100]


def test_instrument_names_leave_the_unit_to_the_unit() -> None:
    """`duration_ms` is the instrument `budget.duration` with unit `ms`: Prometheus names it
    `budget_duration_milliseconds`, with the unit once."""
    reader = InMemoryMetricReader()
    tracing = make_tracing(record_metrics=True, meter_provider=MeterProvider([reader]))
    with tracing.request(route="books/"):
        tracing.db("SELECT 1")
    data = reader.get_metrics_data()
    assert data is not None
    units = {m.name: m.unit for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert (units["budget.duration"], units["budget.db.duration"], units["budget.db.postgresql.duration"]) == ("ms", "ms", "ms")
    assert (units["budget.memory.growth"], units["budget.db.queries"]) == ("MiB", "{query}")
    assert not any(name.endswith(("_ms", "_mb")) for name in units)


def test_drop_inherited_forgets_our_measurements_only() -> None:
    """A Celery pool child drops the counts it inherited from its parent; other meters' and new ones stay."""
    reader = InMemoryMetricReader()
    provider = MeterProvider([reader])
    other = provider.get_meter("other").create_counter("other.count")
    tracing = make_tracing({"http": {"db.queries": 0}}, record_metrics=True, meter_provider=provider)
    with tracing.request(route="orders/"):
        tracing.db("SELECT 1")
    other.add(1)
    tracing.processor.leave_killed_tasks_to_main_process()  # what killed.py calls in a pool child
    assert set(collect(reader)) == {"other.count"}
    with tracing.request(route="orders/"):
        tracing.db("SELECT 1")
    (point,) = collect(reader)["budget.violations"]
    assert point.value == 1


def test_untimed_counts_get_a_histogram_only_when_named() -> None:
    """By default the two untimed counts are on the span but have no histogram (a record per scope each)."""
    for chosen, expected in ((True, set()), (("external.untimed_calls",), {"budget.external.untimed_calls"})):
        reader = InMemoryMetricReader()
        tracing = make_tracing(record_metrics=chosen, meter_provider=MeterProvider([reader]))
        with tracing.request(route="books/"):
            tracing.db("SELECT 1")
        assert tracing.span("GET books/").attributes["budget.external.untimed_calls"] == 0
        untimed = {name for name in collect(reader) if "untimed" in name}
        assert untimed == expected, chosen
