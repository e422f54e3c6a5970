"""The spans of unsampled scopes, held (bounded) until their scope ends: exported if it ends over budget.

A scope that the head sampler did not sample is recorded (`sampling.ScopeSampler`) but not exported.
Its spans that end in this process are held here; when the scope ends over budget they are handed,
with the scope span, to the provider's exporting span processors as sampled copies, so its trace is
exported complete. Within budget they are let go. Caps bound what is held per scope and in total;
the spans an over-budget scope could not export are counted (`budget.spans.dropped`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import SpanContext, TraceFlags

from otel_budget._pipeline import members

if TYPE_CHECKING:
    from otel_budget.tally import ScopeTally

__all__ = ["DEFAULT_MAX_HELD", "DEFAULT_MAX_HELD_PER_SCOPE", "HeldSpans", "sampled_copy"]

DEFAULT_MAX_HELD = 10_000  # spans held at once, all scopes (~32 MiB of SDK DB spans, docs/benchmarks.md)
DEFAULT_MAX_HELD_PER_SCOPE = 1_000
_EXPORTING = (BatchSpanProcessor, SimpleSpanProcessor)


class HeldSpans:
    """Holds the ended spans of unsampled scopes, at most `per_scope` per scope and `total` at once.

    Args:
        per_scope: spans held per scope (the scope span itself is always exported).
        total: spans held at once, all scopes.
    """

    def __init__(self, *, per_scope: int = DEFAULT_MAX_HELD_PER_SCOPE, total: int = DEFAULT_MAX_HELD) -> None:
        self.per_scope = max(0, per_scope)
        self.total = max(0, total)
        self.count = 0  # spans held now
        self._lock = threading.Lock()
        self._pipeline: Any = None  # the provider's span processor (its multi-processor), from a scope span

    def start(self, tally: ScopeTally, span: Any) -> None:
        """`tally`'s scope span `span` is not sampled: hold its spans from now on."""
        tally.held = []
        if self._pipeline is None:
            self._pipeline = getattr(span, "_span_processor", None)  # the SDK Span's; absent elsewhere

    def hold(self, tally: ScopeTally, span: ReadableSpan) -> None:
        """Keep `span`, an ended span of `tally`'s scope, or count it as not held."""
        held = tally.held
        if held is None:
            return
        with self._lock:
            if len(held) >= self.per_scope or self.count >= self.total:
                tally.held_overflow += 1
                return
            self.count += 1
        held.append(span)

    def release(self, tally: ScopeTally) -> list[ReadableSpan]:
        """Stop holding `tally`'s spans; return them."""
        held, tally.held = tally.held, None
        if not held:
            return []
        with self._lock:
            self.count -= len(held)
        return held

    def settle(self, tally: ScopeTally, span: ReadableSpan, over_budget: bool) -> int:
        """`tally`'s scope span `span` ended: export its trace if `over_budget`, else hand it to the outer
        scope. Returns the spans it could not export (over the caps)."""
        held = self.release(tally)
        if over_budget:
            self.export([*held, span])
            return tally.held_overflow
        outer = tally.parent
        if outer is not None and not outer.closed and outer.held is not None:
            for kept in (*held, span):
                self.hold(outer, kept)
            outer.held_overflow += tally.held_overflow
        return 0

    def export(self, spans: list[ReadableSpan]) -> None:
        """Hand sampled copies of `spans` to the provider's exporting span processors."""
        for processor in _exporting(self._pipeline):
            for span in spans:
                processor.on_end(sampled_copy(span))

    def after_fork(self) -> None:
        self.count = 0
        self._lock = threading.Lock()


def _exporting(pipeline: Any) -> list[SpanProcessor]:
    """The SDK's exporting processors (batch, simple) among the provider's span processors."""
    return [processor for processor in members(pipeline) if isinstance(processor, _EXPORTING)]


def sampled_copy(span: ReadableSpan) -> ReadableSpan:
    """`span` as a finished span whose context has the SAMPLED flag; everything else the same."""
    context = span.get_span_context()
    assert context is not None
    sampled = SpanContext(
        context.trace_id,
        context.span_id,
        is_remote=context.is_remote,
        trace_flags=TraceFlags(context.trace_flags | TraceFlags.SAMPLED),
        trace_state=context.trace_state,
    )
    return ReadableSpan(
        name=span.name,
        context=sampled,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
