"""Sampling never hides a scope: every scope tallied whatever the head sampler decides, over-budget traces kept."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

from otel_budget import ScopeResult, install
from otel_budget.sampling import ScopeSampler

SCOPES = 200
OVER_EVERY = 10  # every tenth request makes 6 repeated queries: over the built-in db.repeated_queries = 5


@dataclass
class Sampled:
    """A provider with `sampler`, exporting to memory, with otel-budget installed (metrics to memory)."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    results: list[ScopeResult] = field(default_factory=list)

    def spans(self) -> list[ReadableSpan]:
        self.provider.force_flush()
        return list(self.exporter.get_finished_spans())

    def traces(self) -> dict[int, list[ReadableSpan]]:
        traces: dict[int, list[ReadableSpan]] = defaultdict(list)
        for span in self.spans():
            traces[span.context.trace_id].append(span)  # type: ignore[union-attr]
        return dict(traces)

    def metrics(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        return {
            metric.name: list(metric.data.data_points)
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def request(self, queries: int, repeated: bool, parent: Any = None) -> tuple[int, bool]:
        """One request: a SERVER span, a view span under it, `queries` DB spans under that; (trace id, sampled)."""
        tracer = self.provider.get_tracer("tests")
        with tracer.start_as_current_span("GET", context=parent, kind=SpanKind.SERVER) as server:
            server.set_attribute("http.route", "orders/")
            with tracer.start_as_current_span("view"):
                for i in range(queries):
                    statement = "SELECT * FROM line WHERE id = 1" if repeated else f"SELECT {i} FROM t{i}"
                    with tracer.start_as_current_span(
                        "q", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql", "db.statement": statement}
                    ):
                        pass
        context = server.get_span_context()
        return context.trace_id, context.trace_flags.sampled


def make_sampled(sampler: Sampler, *, batch: bool = False, **options: Any) -> Sampled:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    processor = install(provider, meter_provider=MeterProvider([reader]), **options)
    assert processor is not None
    sampled = Sampled(provider, exporter, reader)
    processor.add_listener(sampled.results.append)
    return sampled


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OTEL_BUDGET_CONFIG", "OTEL_BUDGET_SAMPLING", "OTEL_BUDGET_METRICS", "OTEL_BUDGET_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    yield


SAMPLERS = {
    "traceidratio-0.1": lambda: TraceIdRatioBased(0.1),
    "parentbased-always-off": lambda: ParentBased(ALWAYS_OFF),
    "always-off": lambda: ALWAYS_OFF,
}


def check_complete(trace: list[ReadableSpan], size: int) -> None:
    """`trace` is one whole request: `size` spans, one root, every parent exported, every span once."""
    ids = [span.context.span_id for span in trace]  # type: ignore[union-attr]
    assert len(trace) == len(set(ids)) == size
    roots = [span for span in trace if span.parent is None]
    assert [span.name for span in roots] == ["GET"]
    assert all(span.parent.span_id in ids for span in trace if span.parent is not None)
    assert all(span.context.trace_flags.sampled for span in trace)  # type: ignore[union-attr]


@pytest.mark.parametrize("sampler", SAMPLERS.values(), ids=SAMPLERS.keys())
@pytest.mark.parametrize("batch", [False, True], ids=["simple", "batch"])
def test_every_scope_counted_and_every_over_budget_trace_exported(sampler: Any, batch: bool) -> None:
    """200 requests: 200 results, exact metrics; exported: the sampled traces plus every over-budget one, complete."""
    sampled = make_sampled(sampler(), batch=batch)
    requests = [sampled.request(6 if i % OVER_EVERY == 3 else 2, repeated=i % OVER_EVERY == 3) for i in range(SCOPES)]
    over = {trace_id for i, (trace_id, _) in enumerate(requests) if i % OVER_EVERY == 3}
    kept = {trace_id for trace_id, is_sampled in requests if is_sampled}

    assert len(sampled.results) == SCOPES
    assert sum(len(result.violations) for result in sampled.results) == len(over) == SCOPES // OVER_EVERY
    metrics = sampled.metrics()
    assert sum(point.value for point in metrics["budget.violations"]) == len(over)
    (queries,) = metrics["budget.db.queries"]
    assert (queries.count, queries.sum) == (SCOPES, 6 * len(over) + 2 * (SCOPES - len(over)))
    assert "budget.spans.dropped" not in {name for name, points in metrics.items() if points}

    traces = sampled.traces()
    assert set(traces) == kept | over
    for trace_id in over:
        check_complete(traces[trace_id], 1 + 1 + 6)
        (server,) = [span for span in traces[trace_id] if span.name == "GET"]
        assert server.attributes["budget.violations"] == 1  # type: ignore[index]
        assert [event.name for event in server.events] == ["budget.exceeded"]
    for trace_id in kept - over:
        check_complete(traces[trace_id], 1 + 1 + 2)
    if not isinstance(sampler(), TraceIdRatioBased):
        assert kept == set()
    sampled.provider.shutdown()


def test_ratio_sampler_still_samples_about_its_share() -> None:
    """The exported traces within budget stay at the sampler's rate (0.1 of 200: a few, not all)."""
    sampled = make_sampled(TraceIdRatioBased(0.1))
    requests = [sampled.request(1, repeated=False) for _ in range(SCOPES)]
    assert 0 < sum(is_sampled for _, is_sampled in requests) < SCOPES // 2
    assert len(sampled.traces()) == sum(is_sampled for _, is_sampled in requests)
    assert len(sampled.results) == SCOPES


def test_span_outside_any_scope_stays_dropped() -> None:
    """An INTERNAL root span (no scope) and its children are not recorded: they cost a dropped span only."""
    sampled = make_sampled(ParentBased(ALWAYS_OFF))
    tracer = sampled.provider.get_tracer("tests")
    with tracer.start_as_current_span("import-time") as root:
        with tracer.start_as_current_span("q", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite"}) as child:
            pass
    assert not root.is_recording() and not child.is_recording()
    assert sampled.results == []


def test_remote_unsampled_parent_and_explicit_scope() -> None:
    """A request under a remote unsampled parent and a `budget.scope` span under a dropped one are both scopes."""
    sampled = make_sampled(ParentBased(ALWAYS_OFF))
    remote = set_span_in_context(NonRecordingSpan(SpanContext(7, 9, is_remote=True, trace_flags=TraceFlags(0))))
    trace_id, is_sampled = sampled.request(6, repeated=True, parent=remote)
    assert (trace_id, is_sampled) == (7, False)
    tracer = sampled.provider.get_tracer("tests")
    with tracer.start_as_current_span("outside"):
        with tracer.start_as_current_span("job", attributes={"budget.scope": "job"}) as job:
            recorded = job.is_recording()
    assert recorded
    assert [result.name for result in sampled.results] == ["orders/", "job"]
    (server,) = [span for span in sampled.traces()[7] if span.name == "GET"]
    assert server.parent is not None and server.parent.span_id == 9


def test_nested_scope_within_budget_is_part_of_the_outer_trace() -> None:
    """An over-budget request that holds an explicit scope within budget is exported with that scope's spans."""
    sampled = make_sampled(ALWAYS_OFF)
    tracer = sampled.provider.get_tracer("tests")
    with tracer.start_as_current_span("GET", kind=SpanKind.SERVER) as server:
        with tracer.start_as_current_span("inner", attributes={"budget.scope": "inner"}):
            with tracer.start_as_current_span("step"):
                pass
        for _ in range(6):
            with tracer.start_as_current_span(
                "q", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite", "db.statement": "SELECT 1"}
            ):
                pass
    (trace,) = sampled.traces().values()
    check_complete(trace, 1 + 2 + 6)
    assert server.get_span_context().trace_id == trace[0].context.trace_id  # type: ignore[union-attr]


def test_caps_bound_held_spans_and_count_the_overflow() -> None:
    """Over the per-scope cap, an over-budget trace exports what was held; the rest counts in budget.spans.dropped."""
    sampled = make_sampled(ALWAYS_OFF, max_held_spans_per_scope=3)
    sampled.request(6, repeated=True)  # 7 spans under the scope span: 3 held, 4 not
    (trace,) = sampled.traces().values()
    assert len(trace) == 3 + 1
    assert [span.name for span in trace if span.parent is None] == ["GET"]
    (dropped,) = sampled.metrics()["budget.spans.dropped"]
    assert dropped.value == 4


def test_total_cap_is_released_when_scopes_end() -> None:
    """The process-wide cap: a scope holds at most what is left of it, and what a finished scope held is freed."""
    sampled = make_sampled(ALWAYS_OFF, max_held_spans=5)
    sampled.request(2, repeated=False)  # within budget: 3 held, then let go
    sampled.request(6, repeated=True)  # 5 of its 7 held (the cap), 2 dropped
    sampled.request(6, repeated=True)  # the same again: the first one's freed its share
    traces = list(sampled.traces().values())
    assert [len(trace) for trace in traces] == [5 + 1, 5 + 1]
    (dropped,) = sampled.metrics()["budget.spans.dropped"]
    assert dropped.value == 2 + 2


def test_sampled_traces_are_not_exported_twice() -> None:
    """With every trace sampled nothing is held: each span exported once, as before."""
    sampled = make_sampled(ParentBased(TraceIdRatioBased(1.0)))
    sampled.request(6, repeated=True)
    (trace,) = sampled.traces().values()
    check_complete(trace, 1 + 1 + 6)


def test_follow_restores_sampled_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_BUDGET_SAMPLING=follow: the sampler is not wrapped; unsampled scopes are neither tallied nor exported."""
    monkeypatch.setenv("OTEL_BUDGET_SAMPLING", "follow")
    sampled = make_sampled(TraceIdRatioBased(0.1))
    assert not isinstance(sampled.provider.sampler, ScopeSampler)
    requests = [sampled.request(6, repeated=True) for _ in range(SCOPES)]
    kept = {trace_id for trace_id, is_sampled in requests if is_sampled}
    assert len(sampled.results) == len(kept) < SCOPES
    assert set(sampled.traces()) == kept
    assert sum(point.value for point in sampled.metrics()["budget.violations"]) == len(kept)


def test_install_wraps_once_and_describes_the_sampler() -> None:
    """A second install() leaves the wrapped sampler as it is; the description names the wrapped one."""
    provider = TracerProvider(sampler=ALWAYS_OFF)
    install(provider)
    wrapped = provider.sampler
    install(provider)
    assert provider.sampler is wrapped
    assert isinstance(wrapped, ScopeSampler) and wrapped.sampler is ALWAYS_OFF
    assert wrapped.get_description() == "OtelBudgetScopes{AlwaysOffSampler}"
