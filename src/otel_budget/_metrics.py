"""OpenTelemetry metrics: the `budget.violations` counter and one histogram per measured metric.

The histograms are aggregated here, per (metric, scope identity), in explicit buckets with the
instrument's own boundaries: a record is a dict lookup, a `bisect` and a few adds per value under one
lock per scope. Once per collection (an observable instrument's callback, which the SDK runs at the
start of every reader's collect) the aggregates are merged into the SDK's histogram storage
(`_sdkmetrics`), so the points, temporality, Views, readers and exporters are the SDK's own.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping
from time import time_ns
from typing import Any

from opentelemetry import metrics

from otel_budget import _sdkmetrics, names
from otel_budget.results import ScopeResult
from otel_budget.settings import compiled_module
from otel_budget.spanformat import scope_identity

logger = logging.getLogger(__name__)

_UNITS = {"ms": "ms", "mb": "MiB", "queries": "{query}", "calls": "{call}", "enqueued": "{task}"}

# Bucket boundaries by unit, given to the SDK as advice (a View the application configures wins).
# The SDK's default (0, 5, 10, 25, 50, ...) suits none of ours: 18 queries a request read back as a
# p95 of 24.25 and 0.004 MiB of growth as a p50 of 2.5. Counts get one bucket per value up to 20, so a
# quantile lands within 1 of the true count; MiB start at 10 KiB; ms reach a slow Celery task's minutes.
_COUNT_BOUNDS = (*range(21), 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000, 2000, 5000)
_BOUNDS: dict[str, tuple[float, ...]] = {
    "ms": (0, 1, 2, 5, 10, 25, 50, 75, 100, 150, 250, 500, 750, 1000, 1500, 2500, 5000, 10000, 30000, 60000, 300000),
    "MiB": (0, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
}


_NAME_UNITS = ("_ms", "_mb")
_INF = float("inf")
# Scope identities aggregated between two collections; a scope beyond them is recorded through the SDK.
# Routes are capped at names.MAX_SCOPE_NAMES, so this is only reached with many methods per route.
MAX_PENDING = 4096


def _unit(metric: str) -> str:
    return _UNITS.get(metric.rsplit("_", 1)[-1].rsplit(".", 1)[-1], "1")


def instrument_name(metric: str) -> str:
    """`budget.<metric>` without the unit the metric's name ends with (`_ms`, `_mb`): the instrument
    declares it, and Prometheus exporters append it once (`budget_duration_milliseconds`, not
    `budget_duration_ms_milliseconds`)."""
    for suffix in _NAME_UNITS:
        if metric.endswith(suffix):
            return names.PREFIX + metric[: -len(suffix)]
    return names.PREFIX + metric


def bucket_bounds(unit: str) -> tuple[float, ...]:
    """The histogram bucket boundaries for a metric of `unit`: counts unless it is `ms` or `MiB`."""
    return _BOUNDS.get(unit, _COUNT_BOUNDS)


def aggregate_values(
    states: dict[str, list[Any]], values: Mapping[str, float], slots: Mapping[str, Any], recorded: list[tuple[str, float]]
) -> None:
    """Add a scope's `values` to its identity's `states` (metric -> [bucket_counts, sum, min, max, start_ns]);
    the values of metrics recorded through the SDK (`slots[metric]` a Histogram) are appended to `recorded`.

    Called under the lock of `BudgetMetrics`. `_speedups.aggregate` is its compiled twin, step for step.
    """
    for metric, value in values.items():
        bounds = slots[metric]
        if bounds.__class__ is not tuple:
            if bounds is not None:
                recorded.append((metric, value))
            continue
        # As `Histogram.record` would: negative values as 0 (see `record`), infinity dropped.
        value = value if value >= 0 else 0
        if value == _INF:
            continue
        state = states.get(metric)
        if state is None:
            state = states[metric] = [[0] * (len(bounds) + 1), 0, _INF, -_INF, time_ns()]
        state[0][bisect_left(bounds, value)] += 1
        state[1] += value
        if value < state[2]:
            state[2] = value
        if value > state[3]:
            state[3] = value


def _compiled_aggregate() -> Callable[[dict[str, list[Any]], Mapping[str, float], Mapping[str, Any], list[Any]], None]:
    """`_speedups.aggregate` where the compiled module is loaded, else `aggregate_values`."""
    speedups = compiled_module()
    return getattr(speedups, "aggregate", aggregate_values) if speedups is not None else aggregate_values


_aggregate_values = _compiled_aggregate()  # for a plain dict of values (what the processor makes)


class _Pending:
    """One scope identity's aggregates since the last collection: metric -> [bucket_counts, sum, min, max, start_ns]."""

    __slots__ = ("attributes", "states")

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.attributes = attributes
        self.states: dict[str, list[Any]] = {}


class BudgetMetrics:
    """Records each finished scope into instruments created lazily from the global (or given) MeterProvider.

    Args:
        meter_provider: where they go (default: the global MeterProvider).
        histograms: the metrics that get a histogram (default: every measured one). With the SDK's
            MeterProvider each costs a bisect and a few adds per scope (docs/benchmarks.md); with
            another provider, or a View that changes their aggregation, one `Histogram.record`.
    """

    def __init__(
        self, meter_provider: metrics.MeterProvider | None = None, histograms: Collection[str] | None = None
    ) -> None:
        self._meter_provider = meter_provider
        self._only = frozenset(histograms) if histograms is not None else None
        self._meter: metrics.Meter | None = None
        self._provider: Any = None  # the SDK MeterProvider the aggregates are merged into, if any
        self._violations: metrics.Counter | None = None
        self._evicted: metrics.Counter | None = None
        self._spans_dropped: metrics.Counter | None = None
        self._histograms: dict[str, metrics.Histogram] = {}
        # metric -> None (no histogram), its bucket bounds (aggregated here) or its Histogram (recorded)
        self._slots: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pending: dict[tuple[Any, str, str], _Pending] = {}
        self._logged: set[str] = set()

    def record(self, result: ScopeResult) -> None:
        if self._meter is None:
            self._get_meter()
        values = result.values
        slots = self._slots
        if not slots.keys() >= values.keys():
            for metric in values:
                if metric not in slots:
                    self._add_slot(metric)
        recorded = self._aggregate(result, values, slots) if self._provider is not None else values.items()
        if recorded:
            attributes = scope_identity(result)
            histograms = self._histograms
            for metric, value in recorded:
                histogram = histograms.get(metric)
                if histogram is not None:
                    # Histograms take no negative values: memory that shrank is recorded as 0 growth
                    # here (the signed value stays on the span).
                    histogram.record(value if value >= 0 else 0, attributes)
        if result.violations:
            counter = self._violations
            assert counter is not None
            attributes = scope_identity(result)  # the same attributes as the scope's events
            for violation in result.violations:
                counter.add(
                    1, {**attributes, names.EVENT_METRIC: violation.metric, names.EVENT_RULE: violation.rule}
                )

    def _aggregate(
        self, result: ScopeResult, values: Mapping[str, float], slots: dict[str, Any]
    ) -> Iterable[tuple[str, float]]:
        """Add the scope's values to its identity's aggregates; returns those to record through the SDK."""
        key = (result.kind, result.name, result.method or "")  # the identity scope_identity gives
        recorded: list[tuple[str, float]] = []
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                if len(self._pending) >= MAX_PENDING:
                    return values.items()
                pending = self._pending[key] = _Pending(scope_identity(result))
            (_aggregate_values if values.__class__ is dict else aggregate_values)(pending.states, values, slots, recorded)
        return recorded

    def _add_slot(self, metric: str) -> None:
        only = self._only
        if metric not in only if only is not None else metric in names.NOT_DEFAULT_HISTOGRAMS:
            self._slots[metric] = None
            return
        meter = self._get_meter()
        unit = _unit(metric)
        bounds = bucket_bounds(unit)
        histogram = meter.create_histogram(
            instrument_name(metric),
            unit=unit,
            description=f"otel-budget: {metric} per scope",
            explicit_bucket_boundaries_advisory=bounds,
        )
        self._histograms[metric] = histogram
        slot: Any = histogram
        if self._provider is not None:
            try:
                if _sdkmetrics.accepts(self._provider, histogram, bounds):
                    slot = bounds
                else:
                    self._log_once(metric, "a View or reader aggregates it otherwise")
            except Exception:  # noqa: BLE001 - never into the host: the public path
                self._log_once(metric, "its SDK storage could not be read", exc_info=True)
        self._slots[metric] = slot

    def flush(self) -> None:
        """Merge the aggregates since the last collection into the SDK (every reader's streams)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        by_metric: dict[str, list[_sdkmetrics.Aggregate]] = {}
        for entry in pending.values():
            for metric, (counts, total, low, high, start_ns) in entry.states.items():
                by_metric.setdefault(metric, []).append((entry.attributes, start_ns, counts, total, low, high))
        for metric, aggregates in by_metric.items():
            histogram = self._histograms[metric]
            if not _sdkmetrics.merge(self._provider, histogram, bucket_bounds(_unit(metric)), aggregates):
                # A reader added since, whose stream aggregates otherwise: from now on through the SDK.
                self._slots[metric] = histogram
                self._log_once(metric, "a reader added later aggregates it otherwise")

    def _log_once(self, metric: str, why: str, exc_info: bool = False) -> None:
        if metric not in self._logged:
            self._logged.add(metric)
            logger.warning(
                "otel-budget: the %s histogram is recorded through Histogram.record (%s)",
                metric,
                why,
                exc_info=exc_info,
            )

    def scope_evicted(self, count: int = 1) -> None:
        self._get_meter()
        assert self._evicted is not None
        self._evicted.add(count)

    def spans_dropped(self, count: int) -> None:
        """Spans of over-budget traces not exported: a cap on held spans was reached (`_held.HeldSpans`)."""
        self._get_meter()
        assert self._spans_dropped is not None
        self._spans_dropped.add(count)

    def drop_inherited(self) -> bool:
        """In a forked child: forget the measurements of our instruments that it inherited; True if done.

        The SDK (1.45) gives a forked child its own `service.instance.id` but keeps the parent's
        measurements, so a child would export the parent's counts again as its own (a Celery pool child
        forked after its main process reported a killed task). No public API resets them: this clears
        our instruments' entries in the provider's reader storages, and does nothing if their shape differs.
        The aggregates not yet merged are the parent's too: they are dropped as well.
        """
        with self._lock:
            self._pending = {}
        provider = self._meter_provider or metrics.get_meter_provider()
        consumer = getattr(provider, "_measurement_consumer", None)
        storages = getattr(consumer, "_reader_storages", None)
        if not isinstance(storages, Mapping):
            return False
        dropped = False
        for storage in storages.values():
            matches = getattr(storage, "_instrument_view_instrument_matches", None)
            lock = getattr(storage, "_lock", None)
            if not isinstance(matches, dict) or lock is None:
                continue
            with lock:
                for instrument in [i for i in matches if _is_ours(i)]:
                    del matches[instrument]
                dropped = True
        return dropped

    def _after_fork_in_child(self) -> None:
        # A thread of the parent may have held the lock at the fork: the child's own.
        self._lock = threading.Lock()

    def _get_meter(self) -> metrics.Meter:
        if self._meter is None:
            provider = self._meter_provider or metrics.get_meter_provider()
            meter = provider.get_meter(names.METER_NAME)
            self._violations = meter.create_counter(
                names.INSTRUMENT_VIOLATIONS, unit="{violation}", description="otel-budget: budgets exceeded"
            )
            self._evicted = meter.create_counter(
                names.INSTRUMENT_EVICTED, unit="{scope}", description="otel-budget: open scopes evicted unfinished"
            )
            self._spans_dropped = meter.create_counter(
                names.INSTRUMENT_SPANS_DROPPED,
                unit="{span}",
                description="otel-budget: spans of over-budget unsampled traces not exported (a cap was reached)",
            )
            if _sdkmetrics.is_sdk(provider) and _sdkmetrics.shape_ok():
                _flushed_by(provider, meter).add(self)
                self._provider = provider
            self._meter = meter  # last: another thread seeing it set finds the counters made
        return self._meter


# provider -> the BudgetMetrics whose aggregates its collections merge (one flush instrument per provider:
# the SDK hands a second registration of the same name the first instrument, without its callback)
_FLUSHED: weakref.WeakKeyDictionary[Any, weakref.WeakSet[BudgetMetrics]] = weakref.WeakKeyDictionary()
_FLUSHED_LOCK = threading.Lock()


def _flushed_by(provider: Any, meter: metrics.Meter) -> weakref.WeakSet[BudgetMetrics]:
    with _FLUSHED_LOCK:
        live = _FLUSHED.get(provider)
        if live is None:
            live = _FLUSHED[provider] = weakref.WeakSet()
            meter.create_observable_gauge(
                names.INSTRUMENT_FLUSH,
                callbacks=[_flush_callback(live)],
                description="otel-budget: merges the histograms aggregated in-process (never observes a value)",
            )
        return live


def _flush_callback(live: weakref.WeakSet[BudgetMetrics]) -> Any:
    def flush(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        for budget_metrics in list(live):
            try:
                budget_metrics.flush()
            except Exception:  # noqa: BLE001 - a reader's collect must go on
                logger.warning("otel-budget: could not merge the histograms into the SDK", exc_info=True)
        return ()

    return flush


def _after_fork_in_child() -> None:
    for live in list(_FLUSHED.values()):
        for budget_metrics in list(live):
            budget_metrics._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _is_ours(instrument: Any) -> bool:
    scope = getattr(instrument, "instrumentation_scope", None)
    return getattr(scope, "name", None) == names.METER_NAME
