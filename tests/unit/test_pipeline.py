"""`_pipeline`: the provider's span processors called as one (compiled path); nothing fused without it."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_budget import BudgetSpanProcessor, install
from otel_budget._pipeline import Pipeline, does_nothing, fuse, fused, members
from otel_budget.processor import _COMPILED

COMPILED = _COMPILED is not None


class Recorder(SpanProcessor):
    """Writes down every hook it gets, into a log shared with the other recorders."""

    def __init__(self, name: str, log: list[tuple[str, str, str]], fail_on_end: bool = False, flushes: bool = True) -> None:
        self.name = name
        self.log = log
        self.fail_on_end = fail_on_end
        self.flushes = flushes
        self.flushed: list[int] = []
        self.shut = False

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self.log.append((self.name, "on_start", span.name))

    def _on_ending(self, span: Span) -> None:
        self.log.append((self.name, "_on_ending", span.name))

    def on_end(self, span: ReadableSpan) -> None:
        self.log.append((self.name, "on_end", span.name))
        if self.fail_on_end:
            raise RuntimeError("on_end failed")

    def shutdown(self) -> None:
        self.shut = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flushed.append(timeout_millis)
        return self.flushes


def provider_with(*before: SpanProcessor, fused_: bool = True) -> tuple[TracerProvider, InMemorySpanExporter, Any]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    for processor in before:
        provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ours = BudgetSpanProcessor(record_metrics=False)
    provider.add_span_processor(ours)
    if fused_:
        fuse(provider)
    return provider, exporter, ours


def one_request(provider: TracerProvider, queries: int = 7) -> None:
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("GET items/", kind=SpanKind.SERVER, attributes={"http.request.method": "GET"}) as server:
        server.set_attribute("http.route", "items/")
        for _ in range(queries):
            with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql", "db.statement": "SELECT 1"}):
                pass


def test_does_nothing_tells_a_pass_body_from_work() -> None:
    assert does_nothing(BatchSpanProcessor.on_start) and does_nothing(BatchSpanProcessor._on_ending)
    assert does_nothing(SimpleSpanProcessor.on_start) and does_nothing(SpanProcessor.on_end)

    def documented(span: Any) -> None:
        """Only a docstring."""

    def returns_one(span: Any) -> int:
        return 1

    assert does_nothing(documented)
    assert not does_nothing(BatchSpanProcessor.on_end) and not does_nothing(returns_one)
    assert not does_nothing(len) and not does_nothing(None) and not does_nothing(Recorder("r", []).on_start)


def test_install_fuses_on_the_compiled_path_only() -> None:
    provider = TracerProvider()
    exporter = SimpleSpanProcessor(InMemorySpanExporter())
    provider.add_span_processor(exporter)
    ours = install(provider)
    chain = provider._active_span_processor._span_processors  # noqa: SLF001
    assert members(provider._active_span_processor) == [exporter, ours]  # noqa: SLF001
    assert fused(provider) is COMPILED
    assert len(chain) == (1 if COMPILED else 2)
    if COMPILED:
        assert isinstance(chain[0], Pipeline) and chain[0].processors == (exporter, ours)


def test_fused_and_unfused_export_the_same_budgets() -> None:
    """The same request through the pipeline and through the SDK's loop: the same spans, the same verdict."""
    exported = []
    for fused_ in (True, False):
        provider, exporter, _ = provider_with(fused_=fused_)
        one_request(provider)
        spans = exporter.get_finished_spans()
        server = spans[-1]
        exported.append(
            (
                [span.name for span in spans],
                {key: value for key, value in server.attributes.items() if key.endswith("queries")},
                [dict(event.attributes) for event in server.events],
            )
        )
    assert exported[0] == exported[1]
    names, queries, events = exported[0]
    assert names == ["SELECT"] * 7 + ["GET items/"]
    assert queries == {"budget.db.queries": 7, "budget.db.repeated_queries": 7, "budget.db.postgresql.queries": 7}
    assert [event["budget.metric"] for event in events] == ["db.repeated_queries"]


def test_every_member_gets_every_hook_in_order_and_later_processors_come_after() -> None:
    log: list[tuple[str, str, str]] = []
    provider, _, _ = provider_with(Recorder("first", log))
    provider.add_span_processor(Recorder("last", log))  # after the fusion: the SDK adds it after the pipeline
    assert len(provider._active_span_processor._span_processors) == (2 if COMPILED else 4)  # noqa: SLF001
    provider.get_tracer("tests").start_span("work").end()
    assert log == [
        ("first", "on_start", "work"), ("last", "on_start", "work"),
        ("first", "_on_ending", "work"), ("last", "_on_ending", "work"),
        ("first", "on_end", "work"), ("last", "on_end", "work"),
    ]


def test_an_exception_stops_the_later_members_as_the_sdk_loop_does() -> None:
    outcomes = []
    for fused_ in (True, False):
        log: list[tuple[str, str, str]] = []
        provider, exporter, _ = provider_with(Recorder("failing", log, fail_on_end=True), fused_=fused_)
        with pytest.raises(RuntimeError, match="on_end failed"):
            provider.get_tracer("tests").start_span("work").end()
        outcomes.append((log[-1], len(exporter.get_finished_spans())))
    assert outcomes == [(("failing", "on_end", "work"), 0)] * 2


def test_fusing_twice_changes_nothing_and_shutdown_and_flush_reach_every_member() -> None:
    log: list[tuple[str, str, str]] = []
    recorder = Recorder("first", log)
    provider, _, ours = provider_with(recorder)
    chain = provider._active_span_processor._span_processors  # noqa: SLF001
    assert fuse(provider) is COMPILED
    assert provider._active_span_processor._span_processors == chain  # noqa: SLF001
    assert members(provider._active_span_processor)[0] is recorder and members(provider._active_span_processor)[-1] is ours  # noqa: SLF001
    assert provider.force_flush(10_000) is True
    assert len(recorder.flushed) == 1 and 0 < recorder.flushed[0] <= 10_000
    provider.shutdown()
    assert recorder.shut


def test_a_provider_without_our_compiled_processor_is_left_alone() -> None:
    provider = TracerProvider()
    recorder = Recorder("only", [])
    provider.add_span_processor(recorder)
    assert fuse(provider) is False
    assert provider._active_span_processor._span_processors == (recorder,)  # noqa: SLF001


def test_a_member_that_does_not_flush_makes_the_flush_false_and_the_later_ones_still_flush() -> None:
    outcomes = []
    for fused_ in (True, False):
        log: list[tuple[str, str, str]] = []
        stuck, later = Recorder("stuck", log, flushes=False), Recorder("later", log)
        provider, _, _ = provider_with(stuck, later, fused_=fused_)  # both inside the pipeline when fused
        outcomes.append((provider.force_flush(10_000), len(stuck.flushed), len(later.flushed)))
    assert outcomes == [(False, 1, 1)] * 2
