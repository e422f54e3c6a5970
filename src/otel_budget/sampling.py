"""The head sampler's DROP turned into RECORD_ONLY for spans that can belong to a scope (docs/sampling.md).

A span the sampler drops is a `NonRecordingSpan` that no span processor sees, so a scope whose trace
is not sampled would be neither tallied nor counted. `ScopeSampler` wraps the provider's sampler and,
where it says DROP, records the span without sampling it (`Decision.RECORD_ONLY`: processors see it,
exporters skip it) when the span opens a scope (a root or remote-parent `SERVER` or `CONSUMER` span,
a `budget_scope`) or when its parent is a span of an open scope. A span outside any scope stays
dropped. The trace flags are those the wrapped sampler chose, so what is exported and what is
propagated downstream are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes

from otel_budget import names

__all__ = ["ScopeSampler", "wrap_sampler"]

logger = logging.getLogger("otel_budget")

_DROP = Decision.DROP
_RECORD_ONLY = Decision.RECORD_ONLY
_SCOPE_KINDS = (SpanKind.SERVER, SpanKind.CONSUMER)
_SCOPE_NAME = names.SCOPE_NAME


class ScopeSampler(Sampler):
    """`sampler`'s decisions, except that a dropped span that can belong to a scope is recorded (unsampled).

    Args:
        sampler: the wrapped sampler (the one configured by `OTEL_TRACES_SAMPLER` or given to the provider).
        in_scope: whether the span with this id is a span of an open scope (`BudgetSpanProcessor.tally_for`).
    """

    def __init__(self, sampler: Sampler, in_scope: Callable[[int], object]) -> None:
        self.sampler = sampler
        self._in_scope = in_scope

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self.sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        if result.decision is not _DROP:
            return result
        try:
            parent = get_current_span(parent_context).get_span_context()
            if attributes is not None and _SCOPE_NAME in attributes:
                opens = True  # budget_scope(): a scope wherever it starts
            elif not parent.is_valid or parent.is_remote:
                opens = kind in _SCOPE_KINDS
            else:  # a local parent: recorded only if it is a span of an open scope
                opens = self._in_scope(parent.span_id) is not None
        except Exception:
            logger.exception("otel-budget: sampling check failed; the span follows the sampler")
            return result
        if not opens:
            return result
        # The span starts with the result's attributes, not the ones it was started with (Tracer.start_span).
        if result.attributes:
            attributes = {**(attributes or {}), **result.attributes}
        return SamplingResult(_RECORD_ONLY, attributes, result.trace_state)

    def get_description(self) -> str:
        return f"OtelBudgetScopes{{{self.sampler.get_description()}}}"


def wrap_sampler(provider: Any, in_scope: Callable[[int], object]) -> bool:
    """Wrap `provider`'s sampler in a `ScopeSampler` (once); False when it has no sampler we can wrap.

    Tracers the provider handed out before keep the sampler they were given: under
    `opentelemetry-instrument` this runs before the instrumentors create theirs.
    """
    sampler = getattr(provider, "sampler", None)
    if isinstance(sampler, ScopeSampler):
        return True
    if not isinstance(sampler, Sampler):
        return False
    provider.sampler = ScopeSampler(sampler, in_scope)
    return True
