"""The in-process histograms export the very points `Histogram.record` gives.

The reference is the same `BudgetMetrics` on a MeterProvider subclass, which it does not merge into,
so it takes the public path: one SDK `Histogram.record` per value.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View

from otel_budget import names
from otel_budget._metrics import BudgetMetrics, bucket_bounds
from otel_budget.names import ScopeKind
from otel_budget.results import ScopeResult

CUMULATIVE, DELTA = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA
METRICS = ("db.queries", "db.postgresql.queries", "duration_ms", "db.duration_ms", "memory.growth_mb", "cpu_ms")
IDENTITIES = [
    (ScopeKind.HTTP, "orders/", "GET"),
    (ScopeKind.HTTP, "orders/", "POST"),
    (ScopeKind.HTTP, "books/<int:pk>/", None),
    (ScopeKind.CELERY, "shop.tasks.rebuild", None),
    (ScopeKind.SCOPE, "nightly-import", None),
]


class PublicPathProvider(MeterProvider):
    """The SDK's MeterProvider under another type: `BudgetMetrics` records into it value by value."""


def result(identity: tuple[ScopeKind, str, str | None], values: dict[str, float]) -> ScopeResult:
    kind, name, method = identity
    return ScopeResult(kind, name, method, kind.value, values, (), trace_id=1, span_id=2)


def random_values(rng: random.Random, dyadic: bool = False) -> dict[str, float]:
    """Counts, and ms/MiB that hit bucket bounds exactly, fall between them, past the last, or below 0."""
    values: dict[str, float] = {}
    for metric in METRICS:
        if rng.random() < 0.15:
            continue  # a scope without that metric (e.g. no PostgreSQL query)
        bounds = bucket_bounds("{query}" if "queries" in metric else "MiB" if "memory" in metric else "ms")
        pick = rng.random()
        if "queries" in metric:
            value: float = rng.randrange(0, 6000)
        elif pick < 0.3:
            value = bounds[rng.randrange(len(bounds))]
        elif pick < 0.4:
            value = -rng.random() if "memory" in metric else 0.0
        elif dyadic:
            value = rng.uniform(0, 400_000)
        else:
            value = rng.uniform(0, 400_000) if rng.random() < 0.5 else rng.uniform(0, 3)
        values[metric] = round(value * 4) / 4 if dyadic else value  # dyadic: sums exact in any order
    return values


def points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[Any, ...]], Any]:
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        (metric.name, tuple(sorted(point.attributes.items()))): (metric, point)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name.startswith("budget.")
        for point in metric.data.data_points
    }


def same_points(got: dict[Any, Any], want: dict[Any, Any]) -> None:
    """Every field but the start time, which each path takes from its own clock (checked apart)."""
    assert got.keys() == want.keys()
    for key, (metric, point) in got.items():
        want_metric, want_point = want[key]
        assert (metric.name, metric.unit, metric.description) == (
            want_metric.name,
            want_metric.unit,
            want_metric.description,
        )
        assert metric.data.aggregation_temporality == want_metric.data.aggregation_temporality
        fields = ("count", "sum", "min", "max", "bucket_counts", "explicit_bounds", "attributes", "exemplars")
        assert [getattr(point, f) for f in fields] == [getattr(want_point, f) for f in fields], key
        assert point.start_time_unix_nano <= point.time_unix_nano


def pair(readers: int = 1, temporality: AggregationTemporality = CUMULATIVE, **options: Any) -> tuple[Any, ...]:
    """(ours, our readers, reference, its readers), each reader with `temporality` for histograms."""
    made = []
    for provider_class in (MeterProvider, PublicPathProvider):
        reader_list = [
            InMemoryMetricReader(preferred_temporality={Histogram: temporality if i == 0 else DELTA})
            for i in range(readers)
        ]
        provider = provider_class(reader_list, shutdown_on_exit=False, **options)
        made += [BudgetMetrics(provider), reader_list]
    return tuple(made)


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA])
def test_random_scopes_give_the_record_paths_points(temporality: AggregationTemporality) -> None:
    """Random values over five identities and five collections: identical points, both temporalities."""
    rng = random.Random(14)
    ours, (reader,), reference, (reference_reader,) = pair(temporality=temporality)
    assert ours._provider is None  # made lazily, on the first record
    for collection in range(5):
        for _ in range(rng.randrange(0, 300)):
            scope = result(rng.choice(IDENTITIES[: 2 + collection]), random_values(rng))
            ours.record(scope)
            reference.record(scope)
        got, want = points(reader), points(reference_reader)
        same_points(got, want)
        assert ours._provider is not None and ours._slots["db.queries"].__class__ is tuple  # in-process
        assert reference._provider is None
    assert len(got) >= len(METRICS)


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA])
def test_start_times_are_the_first_values(temporality: AggregationTemporality) -> None:
    """A point starts when its attribute set got its first value (cumulative) or at the last collection (delta)."""
    ours, (reader,), _, _ = pair(temporality=temporality)
    before = time.time_ns()
    ours.record(result(IDENTITIES[0], {"db.queries": 3}))
    after = time.time_ns()
    (first,) = [point for (name, _), (_, point) in points(reader).items() if name == "budget.db.queries"]
    assert before <= first.start_time_unix_nano <= after <= first.time_unix_nano
    ours.record(result(IDENTITIES[0], {"db.queries": 4}))
    (second,) = [point for (name, _), (_, point) in points(reader).items() if name == "budget.db.queries"]
    expected_start = first.start_time_unix_nano if temporality == CUMULATIVE else first.time_unix_nano
    assert (second.start_time_unix_nano, second.count, second.sum) == (
        expected_start,
        2 if temporality == CUMULATIVE else 1,
        7 if temporality == CUMULATIVE else 4,
    )


def test_two_readers_collecting_apart_each_get_every_value() -> None:
    """A cumulative and a delta reader on one provider, collected at different times: the record path's points."""
    rng = random.Random(2)
    ours, our_readers, reference, reference_readers = pair(readers=2)
    for step in range(12):
        for _ in range(rng.randrange(1, 80)):
            scope = result(rng.choice(IDENTITIES), random_values(rng, dyadic=True))
            ours.record(scope)
            reference.record(scope)
        which = step % 3  # the first reader, the second, or both
        for index in (0, 1):
            if which in (index, 2):
                same_points(points(our_readers[index]), points(reference_readers[index]))


def test_threads_recording_while_a_reader_collects_lose_nothing() -> None:
    """Eight threads (gunicorn gthread) record while a delta reader collects: the deltas add up to every value."""
    ours, (reader,), reference, (reference_reader,) = pair(temporality=DELTA)
    scopes = [
        [result(IDENTITIES[i % len(IDENTITIES)], random_values(random.Random(i * 1000 + n), dyadic=True)) for n in range(1000)]
        for i in range(8)
    ]
    totals: dict[Any, list[Any]] = {}

    def add(collected: dict[Any, Any]) -> None:
        for key, (_, point) in collected.items():
            total = totals.setdefault(key, [0, 0.0, [0] * len(point.bucket_counts), point.min, point.max])
            total[0] += point.count
            total[1] += point.sum
            total[2] = [a + b for a, b in zip(total[2], point.bucket_counts)]
            total[3], total[4] = min(total[3], point.min), max(total[4], point.max)

    go = threading.Barrier(len(scopes) + 1)
    # Halfway every worker waits for one collection to be done: however fast they record (the compiled
    # aggregation can finish a worker's 1000 scopes before the main thread runs again), the reader collects
    # at least twice between their first and last record.
    halfway = threading.Barrier(len(scopes) + 1)

    def work(mine: list[ScopeResult]) -> None:
        go.wait()
        for n, scope in enumerate(mine):
            if n == len(mine) // 2:
                halfway.wait()
            ours.record(scope)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in scopes]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes: an unlocked `+=` loses counts
    try:
        for thread in threads:
            thread.start()
        go.wait()
        add(points(reader))  # while the first halves are recorded
        halfway.wait()
        while any(thread.is_alive() for thread in threads):
            add(points(reader))
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    add(points(reader))
    for mine in scopes:
        for scope in mine:
            reference.record(scope)
    want = {
        key: [point.count, point.sum, list(point.bucket_counts), point.min, point.max]
        for key, (_, point) in points(reference_reader).items()
    }
    assert totals == want
    assert sum(total[0] for key, total in totals.items() if key[0] == "budget.db.queries") == sum(
        "db.queries" in scope.values for mine in scopes for scope in mine
    )


def test_a_view_keeping_some_attributes_merges_identities() -> None:
    """A View that keeps only `http.route`: GET and POST of a route are one point, as with the record path."""
    view = View(instrument_name="budget.*", attribute_keys={names.HTTP_ROUTE})
    ours, (reader,), reference, (reference_reader,) = pair(views=[view])
    rng = random.Random(5)
    for _ in range(200):
        scope = result(rng.choice(IDENTITIES[:3]), random_values(rng, dyadic=True))
        ours.record(scope)
        reference.record(scope)
    got = points(reader)
    same_points(got, points(reference_reader))
    assert {key[1] for key in got} == {((names.HTTP_ROUTE, "orders/"),), ((names.HTTP_ROUTE, "books/<int:pk>/"),)}


def test_an_exponential_view_takes_the_record_path(caplog: pytest.LogCaptureFixture) -> None:
    """A stream our buckets cannot feed (exponential histogram) gets its values one by one, logged once."""
    view = View(instrument_name="budget.duration", aggregation=ExponentialBucketHistogramAggregation())
    ours, (reader,), reference, (reference_reader,) = pair(views=[view])
    for n in range(3):
        scope = result(IDENTITIES[0], {"duration_ms": 10.5 * n, "db.queries": n})
        ours.record(scope)
        reference.record(scope)
    got = points(reader)
    assert got.keys() == points(reference_reader).keys()
    duration = next(point for (name, _), (_, point) in got.items() if name == "budget.duration")
    assert (duration.count, duration.sum, duration.max) == (3, 31.5, 21.0)
    assert ours._slots["duration_ms"].__class__ is not tuple and ours._slots["db.queries"].__class__ is tuple
    assert sum("duration_ms histogram is recorded through Histogram.record" in r.message for r in caplog.records) == 1


def test_identities_past_the_cap_are_recorded_through_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pending state is bounded: past MAX_PENDING identities a scope goes to `Histogram.record`, still counted."""
    from otel_budget import _metrics

    monkeypatch.setattr(_metrics, "MAX_PENDING", 3)
    ours, (reader,), reference, (reference_reader,) = pair()
    for n in range(10):
        scope = result((ScopeKind.HTTP, f"r{n}/", "GET"), {"db.queries": n, "duration_ms": n / 4})
        ours.record(scope)
        reference.record(scope)
        assert len(ours._pending) <= 3
    same_points(points(reader), points(reference_reader))


def test_drop_inherited_forgets_the_pending_aggregates() -> None:
    """A forked pool child drops what its parent aggregated but had not yet merged."""
    ours, (reader,), _, _ = pair()
    ours.record(result(IDENTITIES[0], {"db.queries": 7}))
    assert ours._pending
    assert ours.drop_inherited()
    assert points(reader) == {}
    ours.record(result(IDENTITIES[0], {"db.queries": 2}))
    ((_, point),) = [v for k, v in points(reader).items() if k[0] == "budget.db.queries"]
    assert (point.count, point.sum) == (1, 2)


def test_a_forked_child_records_though_a_parent_thread_held_the_lock() -> None:
    """gunicorn forks while a thread is inside `record`: the child's metrics still work (a fresh lock)."""
    ours, (reader,), _, _ = pair()
    ours.record(result(IDENTITIES[0], {"db.queries": 1}))
    ours._lock.acquire()  # a parent thread mid-record at the fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 2
        try:
            ours.drop_inherited()
            ours.record(result(IDENTITIES[0], {"db.queries": 5}))
            got = [(p.count, p.sum) for (name, _), (_, p) in points(reader).items() if name == "budget.db.queries"]
            code = 0 if got == [(1, 5)] else 1
        finally:
            os._exit(code)
    ours._lock.release()
    deadline = time.monotonic() + 30
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if waited == (0, 0):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the lock its parent's thread held")
    assert os.waitstatus_to_exitcode(waited[1]) == 0
