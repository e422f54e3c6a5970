"""For the CLI tests: run the command; a known workload of real SDK spans through the budget processor;
OTLP/JSON made from those spans."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind

from otel_budget import BudgetSpanProcessor
from otel_budget.config import parse_config
from otel_budget.results import ScopeResult

MS = 1_000_000
BUDGETS_TOML = """
[http]
db.queries = 8

[celery]
duration_ms = 250

[scope]
db.queries = 2
"""
N_PLUS_ONE = "SELECT * FROM shop_customer WHERE id = %s"


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Run the installed `otel-budget` console script."""
    command = [str(Path(sys.executable).with_name("otel-budget")), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    return CliResult(done.returncode, done.stdout, done.stderr)


def make_provider(service: str, exporter: SpanExporter, listener: Callable[[ScopeResult], None] | None = None) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    budgets = parse_config(tomllib.loads(BUDGETS_TOML), source="budgets.toml")
    processor = BudgetSpanProcessor(config=budgets, record_metrics=False)
    if listener is not None:
        processor.add_listener(listener)
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def emit_workload(provider: TracerProvider, t0: int) -> None:
    """Requests, tasks and one explicit scope with known counts and durations (start times from `t0` ns).

    - GET orders/<int:pk>/ x5: 2i SELECTs of one statement (N+1) plus one other, i = 1..5
      → db.queries 3 5 7 9 11, db.repeated_queries 2 4 6 8 10, 50 ms each.
    - GET products/ x3: 1 query each, the third one 9 queries (over db.queries = 8).
    - task shop.tasks.rebuild x4: 100 200 300 400 ms (limit 250).
    - task shop.tasks.send_email x3: 10 10 300 ms.
    - scope nightly-import x1: 3 queries (limit 2).
    """
    tracer = provider.get_tracer("workload")
    clock = t0
    for i in range(1, 6):
        clock = _request(tracer, clock, "orders/<int:pk>/", [N_PLUS_ONE] * (2 * i) + ["SELECT * FROM shop_order WHERE id = %s"])
    for queries in (1, 1, 9):
        clock = _request(tracer, clock, "products/", [f"SELECT * FROM shop_product_{n}" for n in range(queries)])
    for duration in (100, 200, 300, 400):
        clock = _task(tracer, clock, "shop.tasks.rebuild", duration)
    for duration in (10, 10, 300):
        clock = _task(tracer, clock, "shop.tasks.send_email", duration)
    scope = tracer.start_span("nightly-import", start_time=clock, attributes={"budget.scope": "nightly-import"})
    with trace.use_span(scope, end_on_exit=False):
        end = _queries(tracer, clock, ["INSERT INTO shop_customer VALUES (%s)"] * 3)
    scope.end(end_time=end + MS)


def _request(tracer: trace.Tracer, start: int, route: str, statements: Sequence[str]) -> int:
    span = tracer.start_span(
        f"GET {route}",
        kind=SpanKind.SERVER,
        start_time=start,
        attributes={"http.route": route, "http.request.method": "GET", "url.path": "/" + route},
    )
    with trace.use_span(span, end_on_exit=False):
        _queries(tracer, start, statements)
    span.end(end_time=start + 50 * MS)
    return start + 60 * MS


def _task(tracer: trace.Tracer, start: int, name: str, duration_ms: int) -> int:
    span = tracer.start_span(
        f"run/{name}", kind=SpanKind.CONSUMER, start_time=start, attributes={"celery.task_name": name, "celery.action": "run"}
    )
    span.end(end_time=start + duration_ms * MS)
    return start + (duration_ms + 10) * MS


def _queries(tracer: trace.Tracer, start: int, statements: Sequence[str]) -> int:
    clock = start + MS
    for statement in statements:
        query = tracer.start_span(
            statement.split()[0],
            kind=SpanKind.CLIENT,
            start_time=clock,
            attributes={"db.system": "postgresql", "db.statement": statement, "db.name": "shop"},
        )
        query.end(end_time=clock + MS)
        clock += 2 * MS
    return clock


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """OTLP/JSON as the collector's file exporter writes it: hex ids, integer enums, 64-bit ints as strings."""
    document: dict[str, Any] = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _base64_to_hex(span[key])
    return document


def _base64_to_hex(text: str) -> str:
    return base64.b64decode(text).hex()
