"""_sdkspan: the SDK span fields read directly are still there, and mean what the public API says."""

from __future__ import annotations

from collections.abc import Mapping
from operator import attrgetter

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from otel_budget import _sdkspan


def test_the_pinned_sdk_has_the_shape() -> None:
    """With the SDK this package pins (1.45), the fast readers are in use."""
    assert _sdkspan.SHAPE_OK is True
    assert _sdkspan.attributes is _sdkspan._fast_attributes


def test_fast_and_public_readers_agree() -> None:
    """Each private-field reader gives what its public-API fallback gives, on a started and an ended span."""
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER):
        span = tracer.start_span("child", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql"})
    for stage in ("started", "ended"):
        pairs = [
            (_sdkspan._fast_parent, _sdkspan._public_parent),
            (_sdkspan._fast_kind, _sdkspan._public_kind),
            (_sdkspan._fast_span_id, _sdkspan._public_span_id),
            (_sdkspan._fast_name, _sdkspan._public_name),
            (_sdkspan._fast_times, _sdkspan._public_times),
        ]
        for fast, public in pairs:
            assert fast(span) == public(span), (stage, fast.__name__)
        assert dict(_sdkspan._fast_attributes(span)) == dict(_sdkspan._public_attributes(span)) == {"db.system": "postgresql"}
        for fast_tuple, public_tuple in (
            (_sdkspan._fast_started, _sdkspan._public_started),
            (_sdkspan._fast_ended, _sdkspan._public_ended),
            (_sdkspan._fast_counted, _sdkspan._public_counted),
        ):
            fast_facts, public_facts = fast_tuple(span), public_tuple(span)
            assert [dict(f) if isinstance(f, Mapping) else f for f in fast_facts] == [
                dict(f) if isinstance(f, Mapping) else f for f in public_facts
            ], (stage, fast_tuple)
        parent, context, _ = _sdkspan.started(span)
        assert parent is not None and (parent[1], context[1]) == (span.parent.span_id, span.context.span_id)  # type: ignore[union-attr]
        span.end()


def test_the_per_span_readers_are_c_callables() -> None:
    """No Python frame per span on the hot path (issue 14): `started`, `ended`, `counted` are attrgetters."""
    for reader in (_sdkspan.started, _sdkspan.ended, _sdkspan.counted):
        assert type(reader) is attrgetter


def test_clean_attributes_go_in_until_the_span_ends() -> None:
    """The direct write lands on an open span and declines an ended one (the caller then uses the SDK's)."""
    span = TracerProvider().get_tracer("t").start_span("s")
    assert _sdkspan.set_clean_attributes(span, {"budget.db.queries": 3}) is True
    assert span.attributes["budget.db.queries"] == 3
    span.end()
    assert _sdkspan.set_clean_attributes(span, {"budget.db.queries": 4}) is False
