"""A `ScopeResult` as span attributes and `budget.exceeded` events, and back.

`encode` is what the processor writes on a scope span; `decode` reads it back from what a backend
returns (Jaeger's JSON, OTLP/JSON, an in-memory exporter's spans), for the report, the pytest plugin,
the examples and the tests: one model of a finished scope, one encoder, one decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from otel_budget import names
from otel_budget.names import ScopeKind
from otel_budget.results import ScopeResult, Violation
from otel_budget.settings import compiled_module

__all__ = ["Event", "decode", "decode_span", "encode", "encode_events", "encode_summary", "scope_identity"]

Event = tuple[str, Mapping[str, Any], int]  # name, attributes, timestamp (ns)

# Our own attributes that are not metrics.
_NOT_METRICS = frozenset(
    {
        names.ATTR_VIOLATIONS, names.ATTR_RULE, names.ATTR_CONFIG_ERROR, names.ATTR_KILLED, names.SCOPE_NAME,
        names.ATTR_MEMORY_TOP,
    }
)  # fmt: skip
_KINDS = {SpanKind.SERVER: "server", SpanKind.CONSUMER: "consumer"}
# metric -> its attribute key, made once per metric (`db.<system>.*` as systems appear, bounded).
_ATTRIBUTE_KEYS: dict[str, str] = {metric: names.PREFIX + metric for metric in names.FIXED_METRICS}
_MAX_KEYS = 512


def scope_identity(result: ScopeResult) -> dict[str, Any]:
    """The attributes that name a scope on its events and metrics: route and method, task, or scope name."""
    if result.kind == ScopeKind.HTTP:
        return {names.HTTP_ROUTE: result.name, names.HTTP_REQUEST_METHOD: result.method or ""}
    if result.kind == ScopeKind.CELERY:
        return {names.CELERY_TASK_NAME: result.name}
    return {names.SCOPE_NAME: result.name}


def encode_summary(result: ScopeResult) -> dict[str, Any]:
    """The summary attributes: `budget.<metric>` for every value, `budget.violations`, `budget.rule`
    (and `budget.killed` on a killed task's)."""
    values = result.values
    summary = (_prefixed if values.__class__ is dict else prefixed)(values, _ATTRIBUTE_KEYS, _key)
    summary[names.ATTR_VIOLATIONS] = len(result.violations)
    summary[names.ATTR_RULE] = result.rule
    if result.config_error:
        summary[names.ATTR_CONFIG_ERROR] = result.config_error
    if result.killed:
        summary[names.ATTR_KILLED] = True
    if result.memory_top:
        summary[names.ATTR_MEMORY_TOP] = result.memory_top
    return summary


def prefixed(values: Mapping[str, Any], keys: Mapping[str, str], make_key: Callable[[str], str]) -> dict[str, Any]:
    """`values` under their attribute keys (`keys[metric]`, else `make_key(metric)`); `_speedups.prefixed` is
    its compiled twin."""
    return {keys.get(metric) or make_key(metric): value for metric, value in values.items()}


_speedups = compiled_module()
_prefixed: Callable[..., dict[str, Any]] = getattr(_speedups, "prefixed", prefixed) if _speedups else prefixed


def _key(metric: str) -> str:
    key = names.PREFIX + metric
    if len(_ATTRIBUTE_KEYS) < _MAX_KEYS:
        _ATTRIBUTE_KEYS[metric] = key
    return key


def encode_events(result: ScopeResult) -> list[Event]:
    """One `budget.exceeded` event per violation, dated when its limit was crossed."""
    if not result.violations:
        return []
    identity = scope_identity(result)
    events: list[Event] = []
    for violation in result.violations:
        event: dict[str, Any] = {
            names.EVENT_METRIC: violation.metric,
            names.EVENT_LIMIT: violation.limit,
            names.EVENT_ACTUAL: violation.actual,
            names.EVENT_RULE: violation.rule,
            **identity,
        }
        if violation.statement is not None:
            event[names.EVENT_STATEMENT] = violation.statement
        if violation.details:
            event.update({names.PREFIX + key: value for key, value in violation.details.items()})
        events.append((names.EVENT_EXCEEDED, event, violation.timestamp_ns))
    return events


def encode(result: ScopeResult) -> tuple[dict[str, Any], list[Event]]:
    """The attributes and events that `result` puts on its scope span."""
    return encode_summary(result), encode_events(result)


def decode(
    attributes: Mapping[str, Any],
    events: Iterable[Event],
    *,
    span_name: str,
    span_kind: str,
    trace_id: int,
    span_id: int,
    service: str | None = None,
    start_ns: int | None = None,
) -> ScopeResult | None:
    """The `ScopeResult` a scope span carries; None for a span that is not a scope span.

    Args:
        attributes: the span's attributes (ours and the instrumentation's).
        events: its events as (name, attributes, timestamp in ns).
        span_kind: `server`, `consumer` or anything else, lower case.
    """
    if names.ATTR_VIOLATIONS not in attributes:
        return None
    kind, name, method = _identify(attributes, span_name, span_kind)
    values = {
        key[len(names.PREFIX) :]: float(value)
        for key, value in attributes.items()
        if key.startswith(names.PREFIX) and key not in _NOT_METRICS and _is_number(value)
    }
    violations = tuple(
        _violation(fields, timestamp_ns) for event_name, fields, timestamp_ns in events if event_name == names.EVENT_EXCEEDED
    )
    repeated = next((v.statement for v in violations if v.metric in names.STATEMENT_METRICS and v.statement), None)
    error = attributes.get(names.ATTR_CONFIG_ERROR)
    top = attributes.get(names.ATTR_MEMORY_TOP)
    return ScopeResult(
        kind=kind,
        name=name,
        method=method,
        rule=str(attributes.get(names.ATTR_RULE, "")),
        values=values,
        violations=violations,
        trace_id=trace_id,
        span_id=span_id,
        repeated_statement=repeated,
        config_error=str(error) if error else None,
        service=service,
        start_ns=start_ns,
        killed=attributes.get(names.ATTR_KILLED) is True,
        memory_top=str(top) if top else None,
    )


def decode_span(span: ReadableSpan, service: str | None = None) -> ScopeResult | None:
    """`decode` of an SDK span (an in-memory exporter's, a test's)."""
    context = span.context
    return decode(
        span.attributes or {},
        [(event.name, event.attributes or {}, event.timestamp) for event in span.events],
        span_name=span.name,
        span_kind=_KINDS.get(span.kind, ""),
        trace_id=context.trace_id if context is not None else 0,
        span_id=context.span_id if context is not None else 0,
        service=service if service is not None else _service(span),
        start_ns=span.start_time,
    )


def _violation(fields: Mapping[str, Any], timestamp_ns: int) -> Violation:
    statement = fields.get(names.EVENT_STATEMENT)
    details = {key[len(names.PREFIX) :]: str(fields[key]) for key in names.EVENT_DETAILS if fields.get(key) is not None}
    return Violation(
        metric=str(fields.get(names.EVENT_METRIC, "")),
        limit=float(fields.get(names.EVENT_LIMIT, 0)),
        actual=float(fields.get(names.EVENT_ACTUAL, 0)),
        rule=str(fields.get(names.EVENT_RULE, "")),
        timestamp_ns=int(timestamp_ns),
        statement=str(statement) if statement else None,
        details=details or None,
    )


def _identify(attributes: Mapping[str, Any], span_name: str, span_kind: str) -> tuple[ScopeKind, str, str | None]:
    """(kind, name, method) of a scope span, from the attributes the instrumentations and we set."""
    if attributes.get(names.SCOPE_NAME) is not None:
        return ScopeKind.SCOPE, str(attributes[names.SCOPE_NAME]), None
    method = next((str(attributes[key]) for key in names.HTTP_METHOD if attributes.get(key) is not None), None)
    if span_kind == "server" or attributes.get(names.HTTP_ROUTE) is not None or method is not None:
        route = attributes.get(names.HTTP_ROUTE)
        # Named as the processor names it, never by the span's name (`GET /orders/20/` under ASGI is a raw path).
        return ScopeKind.HTTP, str(route) if route else names.unmatched_scope_name(method), method
    task = attributes.get(names.CELERY_TASK_NAME)
    if task is None:
        task = span_name[4:] if span_name.startswith("run/") else span_name
    return ScopeKind.CELERY, str(task), None


def _service(span: ReadableSpan) -> str | None:
    name = span.resource.attributes.get("service.name") if span.resource is not None else None
    return str(name) if name is not None else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
