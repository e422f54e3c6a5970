"""What the memory study (`OTEL_BUDGET_MEMORY_STUDY`) costs a scope: thread CPU time per scope, three ways.

    python benchmarks/memory_study.py [SCOPES] [ROUNDS]

- `off`: the study off (the default; the processor holds no study at all);
- `on, idle`: the study on, nothing pending (what every scope pays while no route overran);
- `studied`: every scope is a studied run (tracemalloc started at its start, snapshot and stopped at its end).

A scope is a request like the shop's: 1 SERVER + 20 PostgreSQL CLIENT spans (`per_span.one_scope`'s), and
a view that builds a 200-row JSON response (~1 400 allocations). The three providers run in one
process, interleaved round by round; the figure is the median over rounds of CPU time / scopes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from per_span import _DB, QUEUE_SIZE, SERVER_ATTRIBUTES, NullExporter, _CLIENT, _SERVER  # noqa: E402

from otel_budget import BudgetSpanProcessor  # noqa: E402

KEY = "GET products/"


def make(study: int) -> tuple[TracerProvider, BudgetSpanProcessor]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=QUEUE_SIZE))
    processor = BudgetSpanProcessor(record_metrics=False, memory_study=study)
    provider.add_span_processor(processor)
    return provider, processor


def request(tracer: Any) -> None:
    with tracer.start_as_current_span(KEY, kind=_SERVER, attributes=SERVER_ATTRIBUTES) as server:
        server.set_attribute("http.route", "products/")
        for attributes in _DB:
            with tracer.start_as_current_span("SELECT", kind=_CLIENT) as span:
                if span.is_recording():
                    span.set_attributes(attributes)
        rows = [{"id": n, "name": f"product {n}", "price": n * 1.5, "tags": ["a", "b"]} for n in range(200)]
        server.set_attribute("http.response.body.size", len(json.dumps(rows)))


def main(argv: list[str]) -> int:
    scopes = int(argv[0]) if argv else 300
    rounds = int(argv[1]) if len(argv) > 1 else 7
    modes = {"off": make(0), "on, idle": make(1), "studied": make(1)}
    studied = modes["studied"][1]._study
    assert studied is not None
    studied.cooldown_s = 0.0
    per_scope: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(rounds + 1):
        for mode, (provider, _) in modes.items():
            tracer = provider.get_tracer("bench")
            cpu = 0
            for _ in range(scopes):
                if mode == "studied":
                    studied.schedule(KEY)
                start = time.thread_time_ns()
                request(tracer)
                cpu += time.thread_time_ns() - start
            if round_:  # the first round warms up
                per_scope[mode].append(cpu / scopes / 1000)
            provider.force_flush()
    base = statistics.median(per_scope["off"])
    for mode, values in per_scope.items():
        median = statistics.median(values)
        print(f"{mode:10s} {median:8.1f} µs CPU per scope  (x{median / base:.2f}; rounds {min(values):.1f}..{max(values):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
