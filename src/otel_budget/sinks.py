"""Where a finished scope's `ScopeResult` goes: its own span, the listeners (metrics: `_metrics.py`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from opentelemetry.sdk.trace import Span

from otel_budget import _sdkspan, spanformat
from otel_budget._ratelimit import log_exception
from otel_budget.results import ScopeResult

__all__ = ["Listener", "Listeners", "write_to_span"]

logger = logging.getLogger(__name__)

Listener = Callable[[ScopeResult], None]


def write_to_span(span: Span, result: ScopeResult) -> None:
    """Put `result`'s summary attributes and `budget.exceeded` events on the scope span (still open)."""
    summary = spanformat.encode_summary(result)
    if not _sdkspan.set_clean_attributes(span, summary):
        span.set_attributes(summary)
    if result.violations:
        for name, attributes, timestamp_ns in spanformat.encode_events(result):
            span.add_event(name, attributes, timestamp=timestamp_ns)


class Listeners:
    """The callables that get every finished scope's `ScopeResult`; one that raises is logged, never propagated."""

    def __init__(self) -> None:
        self._listeners: tuple[Listener, ...] = ()
        self._lock = threading.Lock()

    def add(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove(self, listener: Listener) -> None:
        """Raises ValueError when `listener` was not added."""
        with self._lock:
            listeners = list(self._listeners)
            listeners.remove(listener)
            self._listeners = tuple(listeners)

    def __call__(self, result: ScopeResult) -> None:
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:
                log_exception(logger, "otel-budget: a scope listener failed")
