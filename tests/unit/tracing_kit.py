"""Unit-test helpers: a TracerProvider exporting to memory with our processor (fixtures are in conftest.py)."""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer

from otel_budget import BudgetSpanProcessor, ScopeResult
from otel_budget._pipeline import fuse
from otel_budget.config import BudgetConfig, parse_config

__all__ = ["Tracing", "make_tracing"]


@dataclass
class Tracing:
    """A TracerProvider exporting to memory, with our processor added after the exporter's."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    processor: BudgetSpanProcessor
    results: list[ScopeResult] = field(default_factory=list)

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        self.provider.force_flush()
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        matches = [span for span in self.spans() if span.name == name]
        assert len(matches) == 1, [span.name for span in self.spans()]
        return matches[0]

    def events(self, name: str) -> dict[str, dict[str, Any]]:
        """The `budget.exceeded` events of span `name`, by metric."""
        return {
            str(event.attributes["budget.metric"]): dict(event.attributes)
            for event in self.span(name).events
            if event.name == "budget.exceeded"
        }

    def request(self, route: str | None = "items/", method: str = "GET", **attributes: Any) -> Any:
        span = self.tracer.start_as_current_span(
            f"{method} {route}", kind=SpanKind.SERVER, attributes={"http.request.method": method, **attributes}
        )
        return _RouteSetter(span, route)

    def db(self, statement: str, system: str = "postgresql", stable: bool = False, **attributes: Any) -> None:
        keys = ("db.system.name", "db.query.text") if stable else ("db.system", "db.statement")
        with self.tracer.start_as_current_span(
            "db", kind=SpanKind.CLIENT, attributes={keys[0]: system, keys[1]: statement, **attributes}
        ):
            pass


class _RouteSetter:
    """Like Django: the route is set on the server span once the URL is resolved, after it started."""

    def __init__(self, manager: Any, route: str | None) -> None:
        self.manager = manager
        self.route = route

    def __enter__(self) -> Any:
        span = self.manager.__enter__()
        if self.route is not None:
            span.set_attribute("http.route", self.route)
        return span

    def __exit__(self, *exc: Any) -> Any:
        return self.manager.__exit__(*exc)


def make_tracing(config: BudgetConfig | dict[str, Any] | None = None, *, batch: bool = False, **options: Any) -> Tracing:
    """A Tracing whose processor runs with `config` and `options` (metrics off unless asked for)."""
    if isinstance(config, dict):
        config = parse_config(config, source="budgets.toml")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    options.setdefault("record_metrics", False)
    processor = BudgetSpanProcessor(config=config, **options)
    provider.add_span_processor(processor)
    fuse(provider)  # as `install` does: on the compiled path both processors are called as one (_pipeline.py)
    tracing = Tracing(provider, exporter, processor)
    processor.add_listener(tracing.results.append)
    return tracing


def touched_mapping(size: int) -> mmap.mmap:
    """Anonymous memory with every page written: resident until closed, whatever malloc holds.

    Tests that measure RSS growth use it rather than a big `bytes`: after an earlier test freed a big
    block, glibc raises its mmap and trim thresholds (up to 32 and 64 MiB) and serves the next big
    block from freed heap pages that are still resident, so RSS does not move (seen in a full run).
    """
    mapping = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        mapping[offset] = 1
    return mapping
