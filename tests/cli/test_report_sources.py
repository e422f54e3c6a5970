"""The report's building blocks on plain data: percentiles and the two span readers."""

from __future__ import annotations

import pytest

from otel_budget.report import percentile
from otel_budget.sources import parse_lookback, scope_spans_from_jaeger, scope_spans_from_otlp


def test_percentile_is_nearest_rank() -> None:
    """p50 and p95 are observed values: the smallest with at least p% at or below it."""
    values = [3.0, 1.0, 2.0, 5.0, 4.0]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (3.0, 5.0, 5.0)
    assert percentile([7.0], 95) == 7.0
    assert percentile([float(v) for v in range(1, 21)], 95) == 19.0


def test_lookback_units() -> None:
    """Lookbacks are a number and one unit."""
    assert [parse_lookback(text) for text in ("45s", "30m", "1h", "2d", "1w")] == [45, 1800, 3600, 172800, 604800]
    with pytest.raises(ValueError, match="invalid lookback '0h'"):
        parse_lookback("0h")


def jaeger_trace(**tags: object) -> dict[str, object]:
    return {
        "processes": {"p1": {"serviceName": "shop"}},
        "spans": [
            {
                "traceID": "00f067aa0ba902b7",  # a 64-bit id, as Jaeger shows it
                "spanID": "53995c3f42cd8ad8",
                "operationName": "GET orders/",
                "startTime": 1_700_000_000_000_000,
                "processID": "p1",
                "tags": [{"key": k, "type": "string", "value": v} for k, v in tags.items()],
                "logs": [
                    {
                        "timestamp": 1,
                        "fields": [
                            {"key": "event", "value": "budget.exceeded"},
                            {"key": "budget.metric", "value": "db.queries"},
                            {"key": "budget.limit", "value": 3},
                            {"key": "budget.actual", "value": 4},
                            {"key": "budget.rule", "value": "code"},
                        ],
                    },
                    {"timestamp": 2, "fields": [{"key": "event", "value": "exception"}]},
                ],
            },
            {"traceID": "00f067aa0ba902b7", "spanID": "1", "operationName": "SELECT", "tags": [], "processID": "p1"},
        ],
    }


def test_jaeger_request_span() -> None:
    """A Jaeger v1 span with budget.* tags: kind, route, method, values, events; other spans skipped."""
    trace = jaeger_trace(**{"span.kind": "server", "http.route": "orders/", "http.method": "GET"},
                         **{"budget.violations": 1, "budget.db.queries": 4, "budget.rule": "code"})  # fmt: skip
    [scope] = scope_spans_from_jaeger([trace])
    assert (scope.kind, scope.name, scope.method, scope.label, scope.service) == (
        "http", "orders/", "GET", "GET orders/", "shop"
    )  # fmt: skip
    assert scope.trace_id_hex == "000000000000000000f067aa0ba902b7"
    assert scope.values == {"db.queries": 4.0}
    assert [(e.metric, e.limit, e.actual, e.rule) for e in scope.violations] == [("db.queries", 3.0, 4.0, "code")]


def test_jaeger_task_and_scope_spans() -> None:
    """Tasks are named by celery.task_name (else the span name without run/), scopes by budget.scope."""
    [task] = scope_spans_from_jaeger([jaeger_trace(**{"span.kind": "consumer", "budget.violations": 0})])
    assert (task.kind, task.name) == ("celery", "GET orders/")
    tagged = jaeger_trace(**{"span.kind": "consumer", "celery.task_name": "shop.rebuild", "budget.violations": 0})
    assert next(scope_spans_from_jaeger([tagged])).label == "task shop.rebuild"
    scope = jaeger_trace(**{"budget.scope": "nightly", "budget.violations": 0})
    assert next(scope_spans_from_jaeger([scope])).label == "scope nightly"


def test_otlp_base64_ids_and_string_ints() -> None:
    """protobuf's own JSON mapping (base64 ids, enum names) reads like OTLP/JSON."""
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "worker"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "S/kvNXezTaajzpKdDg5HNg==",
                                "spanId": "APBnqgupArc=",
                                "name": "run/shop.rebuild",
                                "kind": "SPAN_KIND_CONSUMER",
                                "startTimeUnixNano": "1700000000000000000",
                                "attributes": [
                                    {"key": "budget.violations", "value": {"intValue": "0"}},
                                    {"key": "budget.db.queries", "value": {"intValue": "12"}},
                                    {"key": "budget.duration_ms", "value": {"doubleValue": 1.5}},
                                ],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    [scope] = scope_spans_from_otlp(document)
    assert (scope.trace_id_hex, scope.span_id_hex) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert (scope.label, scope.service, scope.values) == (
        "task shop.rebuild", "worker", {"db.queries": 12.0, "duration_ms": 1.5}
    )  # fmt: skip
