"""Every read of the SDK span's private fields, in one place, checked against the SDK once at import.

The hot path reads `_parent`, `_kind`, `_context`, `_name`, `_start_time`, `_end_time` and
`_attributes._dict` directly: each public property costs a call, and `span.attributes` a new
MappingProxy per read. A SpanContext is, by its declared type, the tuple (trace_id, span_id,
is_remote, ...), so indexing it saves a property call per field. At import a probe span checks that the
SDK still has that shape (`SHAPE_OK`); where it does not, every accessor here is the public one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, set_span_in_context

__all__ = [
    "ON_ENDING_FROZEN",
    "SHAPE_OK",
    "attributes",
    "counted",
    "ended",
    "kind",
    "name",
    "parent",
    "scope_name",
    "set_clean_attributes",
    "span_id",
    "started",
    "times",
]

logger = logging.getLogger(__name__)

EMPTY: Mapping[str, Any] = MappingProxyType({})


def _check_shape() -> bool:
    """True when an SDK span has the private fields this module reads, with the meaning it assumes."""
    parent = SpanContext(trace_id=1, span_id=3, is_remote=True)
    try:
        provider = TracerProvider(sampler=ALWAYS_ON, resource=Resource.get_empty(), shutdown_on_exit=False)
        probe = provider.get_tracer("otel_budget").start_span(
            "otel-budget-shape", context=set_span_in_context(NonRecordingSpan(parent)), kind=SpanKind.SERVER
        )
        probe.set_attribute("k", "v")
        assert isinstance(probe, Span)
        bounded = probe._attributes
        started = type(probe._start_time) is int and probe._end_time is None
        probe.end()
        return (
            started
            and type(probe._end_time) is int
            and probe._parent is parent
            and (parent[1], parent[2]) == (3, True)
            and probe._context[1] == probe.get_span_context().span_id  # type: ignore[index]
            and probe._context[3] == probe.get_span_context().trace_flags  # type: ignore[index]
            and probe._context[0] == probe.get_span_context().trace_id == 1  # type: ignore[index]
            and probe._kind is SpanKind.SERVER
            and probe._name == "otel-budget-shape"
            and type(bounded) is BoundedAttributes
            and bounded._dict == {"k": "v"}
            and hasattr(probe, "_lock")
            and hasattr(bounded, "_lock")
            and bounded._immutable is True  # frozen at end
        )
    except Exception:  # another SDK: any difference means "use the public API"
        return False


class _EndingProbe(SpanProcessor):
    """Sees whether `_on_ending` gets a span that can still be written (SDK 1.45: it cannot)."""

    frozen: bool | None = None

    def _on_ending(self, span: Span) -> None:
        self.frozen = span.end_time is not None


def _on_ending_frozen() -> bool:
    """True when the SDK hands `SpanProcessor._on_ending` an already frozen span (open-telemetry-python#5614)."""
    probe = _EndingProbe()
    try:
        provider = TracerProvider(sampler=ALWAYS_ON, resource=Resource.get_empty(), shutdown_on_exit=False)
        provider.add_span_processor(probe)
        provider.get_tracer("otel_budget").start_span("otel-budget-ending").end()
    except Exception:
        return True  # then `_on_ending` checks each span itself
    return probe.frozen is not False


SHAPE_OK = _check_shape()
# Whether `_on_ending` can skip its work: the span it gets is frozen, `_EndScope` has finished the scope.
ON_ENDING_FROZEN = _on_ending_frozen()
if not SHAPE_OK:
    logger.info("otel-budget: this OpenTelemetry SDK's spans differ from 1.45's; reading them through the public API")


# -- the fast readers (SDK 1.45's fields) -------------------------------------------------------------
def _fast_parent(span: ReadableSpan) -> SpanContext | None:
    return span._parent


def _fast_kind(span: ReadableSpan) -> SpanKind:
    return span._kind


def _fast_span_id(span: ReadableSpan) -> int:
    return span._context[1]  # type: ignore[index]


def _fast_trace_id(span: ReadableSpan) -> int:
    return span._context[0]  # type: ignore[index]


def _fast_sampled(span: ReadableSpan) -> bool:
    return bool(span._context[3] & 1)  # type: ignore[index]  # SpanContext: (trace id, span id, remote, flags, ...)


def _fast_name(span: ReadableSpan) -> str:
    return span._name


def _fast_times(span: ReadableSpan) -> tuple[int | None, int | None]:
    return span._start_time, span._end_time


def _fast_started(span: ReadableSpan, key: str) -> tuple[SpanContext | None, Any, int]:
    """What `on_start` needs in one call: the parent context, the value of attribute `key`, the span id."""
    found = span._attributes
    value = found._dict.get(key) if type(found) is BoundedAttributes else (span.attributes or EMPTY).get(key)
    return span._parent, value, span._context[1]  # type: ignore[index]


def _fast_ended(span: ReadableSpan) -> tuple[int, SpanKind]:
    """What `on_end` needs in one call: the span id and kind."""
    return span._context[1], span._kind  # type: ignore[index]


Counted = tuple[Mapping[str, Any], int | None, int | None, str, int, int]


def _fast_counted(batch: list[ReadableSpan]) -> list[Counted]:
    """(attributes, start, end, name, parent id or 0, span id) of each span of a batch, for `ScopeTally.drain`:
    one call per batch."""
    return [
        (found._dict if type(found := span._attributes) is BoundedAttributes else span.attributes or EMPTY,
         span._start_time, span._end_time, span._name, parent[1] if (parent := span._parent) is not None else 0,
         span._context[1])  # type: ignore[index]
        for span in batch
    ]  # fmt: skip


def _fast_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """A span's attributes, read-only, without the new MappingProxy that `span.attributes` makes per call."""
    found = span._attributes
    if type(found) is BoundedAttributes:  # the SDK's spans: a dict inside
        return found._dict
    return span.attributes or EMPTY


# -- the public readers (any SDK) ---------------------------------------------------------------------
def _public_parent(span: ReadableSpan) -> SpanContext | None:
    return span.parent


def _public_kind(span: ReadableSpan) -> SpanKind:
    return span.kind


def _public_span_id(span: ReadableSpan) -> int:
    context = span.context
    return context.span_id if context is not None else 0


def _public_trace_id(span: ReadableSpan) -> int:
    context = span.context
    return context.trace_id if context is not None else 0


def _public_sampled(span: ReadableSpan) -> bool:
    context = span.context
    return context is not None and context.trace_flags.sampled


def _public_name(span: ReadableSpan) -> str:
    return span.name


def _public_times(span: ReadableSpan) -> tuple[int | None, int | None]:
    return span.start_time, span.end_time


def _public_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or EMPTY


def _public_started(span: ReadableSpan, key: str) -> tuple[SpanContext | None, Any, int]:
    return span.parent, (span.attributes or EMPTY).get(key), _public_span_id(span)


def _public_ended(span: ReadableSpan) -> tuple[int, SpanKind]:
    return _public_span_id(span), span.kind


def _public_counted(batch: list[ReadableSpan]) -> list[Counted]:
    return [
        (span.attributes or EMPTY, span.start_time, span.end_time, span.name,
         span.parent.span_id if span.parent is not None else 0, _public_span_id(span))
        for span in batch
    ]  # fmt: skip


parent = _fast_parent if SHAPE_OK else _public_parent
kind = _fast_kind if SHAPE_OK else _public_kind
span_id = _fast_span_id if SHAPE_OK else _public_span_id
sampled = _fast_sampled if SHAPE_OK else _public_sampled
trace_id = _fast_trace_id if SHAPE_OK else _public_trace_id
name = _fast_name if SHAPE_OK else _public_name
times = _fast_times if SHAPE_OK else _public_times
attributes = _fast_attributes if SHAPE_OK else _public_attributes
started = _fast_started if SHAPE_OK else _public_started
ended = _fast_ended if SHAPE_OK else _public_ended
counted = _fast_counted if SHAPE_OK else _public_counted


def scope_name(span: ReadableSpan) -> str | None:
    """The name of the instrumentation that made `span` (its tracer's instrumentation scope); rarely read."""
    scope = span.instrumentation_scope
    return scope.name if scope is not None else None


def set_clean_attributes(span: Span, values: dict[str, Any]) -> bool:
    """Add `values` to an SDK span's attributes in one `dict.update`; False: use `set_attributes`.

    `set_attributes` validates and copies every value, one at a time (a fifth of a scope's cost here).
    Ours are already clean (str, int, float), so when the span's limits cannot be reached (no value
    length limit, room for all of them) they go straight in, under the same two locks the SDK takes.
    """
    if not SHAPE_OK:
        return False
    bounded = span._attributes
    if type(bounded) is not BoundedAttributes or bounded.max_value_len is not None:
        return False
    if bounded.maxlen is not None and len(bounded._dict) + len(values) > bounded.maxlen:
        return False  # the SDK drops the oldest and counts them: let it
    with span._lock:
        if span._end_time is not None or bounded._immutable:
            return False
        with bounded._lock:
            bounded._dict.update(values)
    return True
