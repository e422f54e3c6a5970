"""otel-budget does not flood the host's log, whatever its scopes measure."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from tracing_kit import touched_mapping

from otel_budget import BudgetSpanProcessor, ScopeResult

MIB = 1024 * 1024


def test_scopes_that_free_memory_do_not_log_a_warning_each(
    caplog: pytest.LogCaptureFixture, figure: Callable[[str, str], None]
) -> None:
    """`memory.growth_mb` is negative when a request frees memory; recording it must not warn once per request."""
    reader = InMemoryMetricReader()
    processor = BudgetSpanProcessor(meter_provider=MeterProvider(metric_readers=[reader]))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    results: list[ScopeResult] = []
    processor.add_listener(results.append)
    tracer = provider.get_tracer("reliability.logs")
    caplog.set_level(logging.WARNING)
    scopes = 20
    try:
        for _ in range(scopes):
            cache = touched_mapping(32 * MIB)  # written, so resident
            with tracer.start_as_current_span("GET cache/drop/", kind=SpanKind.SERVER, attributes={"http.route": "cache/drop/"}):
                cache.close()  # a request that empties a cache: the process shrinks
    finally:
        provider.shutdown()
    negative = [r.values["memory.growth_mb"] for r in results if r.values["memory.growth_mb"] < 0]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    figure(
        "scopes that free memory",
        f"{scopes} scopes, {len(negative)} with negative memory.growth_mb (e.g. {negative[:1]}); "
        f"warnings logged: {len(warnings)} {sorted({r.getMessage()[:80] for r in warnings})}",
    )
    assert len(negative) >= scopes // 2, "precondition: freed memory shows as negative growth"
    assert len(warnings) <= 1, "at most one line, not one per scope"
