"""_sdkspan: the SDK span fields read directly are still there, and mean what the public API says."""

from __future__ import annotations

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
        span.end()


def test_clean_attributes_go_in_until_the_span_ends() -> None:
    """The direct write lands on an open span and declines an ended one (the caller then uses the SDK's)."""
    span = TracerProvider().get_tracer("t").start_span("s")
    assert _sdkspan.set_clean_attributes(span, {"budget.db.queries": 3}) is True
    assert span.attributes["budget.db.queries"] == 3
    span.end()
    assert _sdkspan.set_clean_attributes(span, {"budget.db.queries": 4}) is False
