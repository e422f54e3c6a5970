"""Every read of the SDK metrics' private fields, in one place, checked against the SDK once.

`_metrics.BudgetMetrics` aggregates its histograms in-process (a bisect and a few adds per value,
instead of an SDK `Histogram.record` at ~80 000 instructions each) and, once per collection, hands
each (instrument, attribute set) aggregate to the SDK here: it is added into the SDK's own
`_ExplicitBucketHistogramAggregation` of every reader's stream of that instrument, exactly as the
SDK's `consume_measurement` would have built it value by value. The SDK then makes the points
(temporality, start times, Views' names, exporters) as for any histogram.

Where a stream does not aggregate into explicit buckets with our boundaries (an application View
with other boundaries or another aggregation, a reader preferring exponential histograms), `accepts`
says so and the caller records that instrument through the public `Histogram.record` instead. The
first use runs a probe (`shape_ok`): a scratch MeterProvider whose merged point must equal the one
`Histogram.record` gives for the same values; where the SDK's shape differs, nothing here is used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["Aggregate", "accepts", "is_sdk", "merge", "shape_ok"]

logger = logging.getLogger(__name__)

# (attributes, start_time_unix_nano of its first value, bucket_counts, sum, min, max)
Aggregate = tuple[Mapping[str, Any], int, Sequence[int], float, float, float]

try:
    from opentelemetry.sdk.metrics import MeterProvider as _SdkMeterProvider
    from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    from opentelemetry.sdk.metrics._internal.aggregation import (
        DefaultAggregation,
        _DropAggregation,
        _ExplicitBucketHistogramAggregation,
    )
    from opentelemetry.sdk.metrics._internal.instrument import Histogram as _SdkHistogram

    _IMPORTED = True
except ImportError:  # pragma: no cover - another SDK layout: the public path only
    _IMPORTED = False

_SHAPE_OK: bool | None = None


def is_sdk(provider: object) -> bool:
    """The SDK's own MeterProvider (not the API's no-op or proxy, nor another implementation)."""
    return _IMPORTED and type(provider) is _SdkMeterProvider


def _storages(provider: Any) -> Iterable[Any]:
    # `_reader_storages` is replaced, never mutated, when a reader is added or removed (SDK comment).
    return provider._measurement_consumer._reader_storages.values()  # type: ignore[no-any-return]


def _streams(provider: Any, instrument: Any) -> list[Any]:
    """Every reader's `_ViewInstrumentMatch`es of `instrument` (made as its first measurement would)."""
    return [match for storage in _storages(provider) for match in storage._get_or_init_view_instrument_match(instrument)]


def _fits(match: Any, bounds: tuple[float, ...]) -> bool:
    template = match._aggregation
    if isinstance(template, _DropAggregation):
        return True
    return type(template) is _ExplicitBucketHistogramAggregation and template._boundaries == bounds


def accepts(provider: Any, instrument: Any, bounds: tuple[float, ...]) -> bool:
    """`instrument` is the SDK's, and every stream of it aggregates into explicit buckets with `bounds` (or drops it)."""
    return isinstance(instrument, _SdkHistogram) and all(_fits(m, bounds) for m in _streams(provider, instrument))


def merge(provider: Any, instrument: Any, bounds: tuple[float, ...], aggregates: list[Aggregate]) -> bool:
    """Add `aggregates` into every stream of `instrument`; False if a stream took none (it does not fit)."""
    if not instrument._is_enabled():  # a MeterConfigurator disabled our meter: `record` drops too
        return True
    aggregates = sorted(aggregates, key=lambda aggregate: aggregate[1])  # a View's merged key starts first
    fitted = True
    for match in _streams(provider, instrument):
        if isinstance(match._aggregation, _DropAggregation):
            continue
        if not _fits(match, bounds):
            fitted = False
            continue
        keys = match._view._attribute_keys
        for attributes, start_ns, counts, total, low, high in aggregates:
            kept = dict(attributes) if keys is None else {k: v for k, v in attributes.items() if k in keys}
            aggregation = _aggregation(match, kept, start_ns)
            with aggregation._lock:
                if aggregation._value is None:
                    aggregation._value = aggregation._get_empty_bucket_counts()
                value = aggregation._value
                for index, count in enumerate(counts):
                    if count:
                        value[index] += count
                aggregation._sum += total
                if aggregation._record_min_max:
                    aggregation._min = min(aggregation._min, low)
                    aggregation._max = max(aggregation._max, high)
    return fitted


def _aggregation(match: Any, attributes: dict[str, Any], start_ns: int) -> Any:
    """The stream's aggregation for `attributes`, made as `_ViewInstrumentMatch.consume_measurement` does."""
    key = _hash_attributes(attributes)
    aggregation = match._attributes_aggregation.get(key)
    if aggregation is None:
        with match._lock:
            aggregation = match._attributes_aggregation.get(key)
            if aggregation is None:
                view = match._view
                factory = view._aggregation
                if isinstance(factory, DefaultAggregation):
                    factory = match._instrument_class_aggregation[match._instrument.__class__]
                aggregation = factory._create_aggregation(
                    match._instrument, attributes, view._exemplar_reservoir_factory, start_ns
                )
                match._attributes_aggregation[key] = aggregation
    return aggregation


def shape_ok() -> bool:
    """True when merging gives the very points `Histogram.record` gives (probed once, on a scratch provider)."""
    global _SHAPE_OK
    if _SHAPE_OK is None:
        try:
            _SHAPE_OK = _IMPORTED and _probe()
        except Exception:  # noqa: BLE001 - any difference in the SDK's shape: the public path
            _SHAPE_OK = False
        if not _SHAPE_OK:
            logger.warning(
                "otel-budget: this OpenTelemetry SDK's metric storage differs from the one otel-budget knows; "
                "its histograms use Histogram.record (slower, same points)"
            )
    return _SHAPE_OK


def _probe() -> bool:
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
    from opentelemetry.sdk.resources import Resource

    bounds = (0.0, 1.0, 5.0)
    values = (0.5, 3, 7.25, 1)
    points: list[dict[str, Any]] = []
    for temporality in (AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA):
        reader = InMemoryMetricReader(preferred_temporality={_SdkHistogram: temporality})
        provider = _SdkMeterProvider(
            [reader], resource=Resource.get_empty(), shutdown_on_exit=False, exemplar_filter=AlwaysOffExemplarFilter()
        )
        meter = provider.get_meter("otel_budget.probe")
        recorded = meter.create_histogram("recorded", explicit_bucket_boundaries_advisory=bounds)
        merged = meter.create_histogram("merged", explicit_bucket_boundaries_advisory=bounds)
        for value in values:
            recorded.record(value, {"k": "v"})
        counts = [0] * (len(bounds) + 1)
        for value in values:
            counts[sum(1 for bound in bounds if bound < value)] += 1
        aggregate = ({"k": "v"}, 1, counts, sum(values), min(values), max(values))
        if not (accepts(provider, merged, bounds) and merge(provider, merged, bounds, [aggregate])):
            return False
        data = reader.get_metrics_data()
        provider.shutdown()
        assert data is not None
        points.append({m.name: m.data.data_points for m in data.resource_metrics[0].scope_metrics[0].metrics})
    for by_name in points:
        (want,), (got,) = by_name["recorded"], by_name["merged"]
        if not (_fields(got) == _fields(want) and got.start_time_unix_nano == 1 and math.isfinite(got.sum)):
            return False
    return True


def _fields(point: Any) -> tuple[Any, ...]:
    return (point.count, point.sum, point.min, point.max, tuple(point.bucket_counts), dict(point.attributes))
