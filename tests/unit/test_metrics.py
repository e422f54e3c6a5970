from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.unit.conftest import make_tracing


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
    assert {"budget.duration_ms", "budget.memory.growth_mb", "budget.cpu_ms"} <= set(metrics)


def test_task_histograms_by_task_name() -> None:
    """Task scopes are recorded by celery.task_name."""
    from opentelemetry.trace import SpanKind

    reader = InMemoryMetricReader()
    tracing = make_tracing(record_metrics=True, meter_provider=MeterProvider([reader]))
    with tracing.tracer.start_as_current_span("run/shop.tasks.t", kind=SpanKind.CONSUMER):
        tracing.db("SELECT 1")
    (point,) = collect(reader)["budget.db.queries"]
    assert dict(point.attributes) == {"celery.task_name": "shop.tasks.t"}


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
