"""OpenTelemetry metrics: the `budget.violations` counter and one histogram per measured metric."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry import metrics

from otel_budget import names
from otel_budget.results import ScopeResult
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


class BudgetMetrics:
    """Records each finished scope into instruments created lazily from the global (or given) MeterProvider.

    Args:
        meter_provider: where they go (default: the global MeterProvider).
        histograms: the metrics that get a histogram (default: every measured one). Each costs one
            SDK `Histogram.record` per scope, ~8-10 µs here (docs/benchmarks.md).
    """

    def __init__(
        self, meter_provider: metrics.MeterProvider | None = None, histograms: Collection[str] | None = None
    ) -> None:
        self._meter_provider = meter_provider
        self._only = frozenset(histograms) if histograms is not None else None
        self._meter: metrics.Meter | None = None
        self._violations: metrics.Counter | None = None
        self._evicted: metrics.Counter | None = None
        self._spans_dropped: metrics.Counter | None = None
        self._histograms: dict[str, metrics.Histogram] = {}

    def record(self, result: ScopeResult) -> None:
        meter = self._get_meter()
        attributes = scope_identity(result)  # the same attributes as the scope's events
        only = self._only
        for metric, value in result.values.items():
            if metric not in only if only is not None else metric in names.NOT_DEFAULT_HISTOGRAMS:
                continue
            histogram = self._histograms.get(metric)
            if histogram is None:
                unit = _unit(metric)
                histogram = meter.create_histogram(
                    instrument_name(metric),
                    unit=unit,
                    description=f"otel-budget: {metric} per scope",
                    explicit_bucket_boundaries_advisory=bucket_bounds(unit),
                )
                self._histograms[metric] = histogram
            # Histograms take no negative values: memory that shrank is recorded as 0 growth here
            # (the signed value stays on the span).
            histogram.record(value if value >= 0 else 0, attributes)
        if result.violations:
            counter = self._violations
            assert counter is not None
            for violation in result.violations:
                counter.add(
                    1, {**attributes, names.EVENT_METRIC: violation.metric, names.EVENT_RULE: violation.rule}
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
        """
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
            self._meter = meter  # last: another thread seeing it set finds the counters made
        return self._meter


def _is_ours(instrument: Any) -> bool:
    scope = getattr(instrument, "instrumentation_scope", None)
    return getattr(scope, "name", None) == names.METER_NAME
