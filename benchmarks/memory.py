"""Memory: RSS over 100 000 finished scopes (is it flat?) and the state kept per open scope (tracemalloc).

Each measurement runs in a fresh interpreter (`python memory.py worker ...`), so one
configuration's heap does not colour the other's.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_mib() -> float:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _varied_scope(tracer: Any, index: int) -> None:
    """The per-span benchmark's scope, plus statements with literals that change every request
    (cache churn: 10 000 distinct texts cycle through the 4096-entry normalisation cache)."""
    from per_span import one_scope
    from opentelemetry.trace import SpanKind

    with tracer.start_as_current_span("GET products/", kind=SpanKind.SERVER) as server:
        server.set_attribute("http.route", f"products/{index % 50}/")  # 50 routes: 50 metric series
        one_scope(tracer)  # a SERVER span under a local parent: part of this scope, not a new one
        for offset in (0, 5000):
            with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as span:
                span.set_attributes(
                    {"db.system": "postgresql", "db.statement": f"SELECT * FROM t WHERE id = {(index + offset) % 10_000}"}
                )


def growth_worker(config: str, scopes: int, checkpoints: list[int]) -> dict[str, Any]:
    from per_span import make_provider

    from otel_budget._pipeline import members

    provider, meter_provider = make_provider(config)
    tracer = provider.get_tracer("bench")
    rss: dict[int, float] = {}
    for index in range(1, scopes + 1):
        _varied_scope(tracer, index)
        if index % 50 == 0:
            # This loop starves the exporter thread of the GIL; without a flush the batch queue's
            # high-water mark (up to 65 536 spans) would be what RSS shows, not our state.
            provider.force_flush()
        if index in checkpoints:
            gc.collect()
            rss[index] = round(_rss_mib(), 2)
    processor = next((p for p in members(provider._active_span_processor) if hasattr(p, "open_scopes")), None)  # noqa: SLF001
    left = {"open_scopes": processor.open_scopes, "open_spans": len(processor._spans)} if processor else {}
    provider.shutdown()
    meter_provider.shutdown()
    return {"rss_mib": rss, **left}


def state_worker(open_scopes: int, children: int) -> dict[str, Any]:
    """Bytes allocated by otel-budget's code (and not freed) per open scope, with `children` DB spans counted."""
    from _common import DB_STATEMENTS, db_attributes
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    from otel_budget import BudgetSpanProcessor

    provider = TracerProvider()  # no exporter: only our processor's state is of interest
    provider.add_span_processor(BudgetSpanProcessor(record_metrics=False, max_open_scopes=open_scopes + 1))
    tracer = provider.get_tracer("bench")
    warm = tracer.start_span("warm-up", kind=SpanKind.SERVER)  # module-level caches, first-use allocations
    _children(tracer, warm, children, DB_STATEMENTS, db_attributes)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    spans = []
    for _ in range(open_scopes):
        span = tracer.start_span("GET products/", kind=SpanKind.SERVER, attributes={"http.method": "GET"})
        with trace.use_span(span):
            span.set_attribute("http.route", "products/")
        _children(tracer, span, children, DB_STATEMENTS, db_attributes)
        spans.append(span)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    ours = [tracemalloc.Filter(True, os.path.join("*", "otel_budget", "*"))]
    diff = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    total = sum(stat.size_diff for stat in diff)
    by_file = {os.path.basename(stat.traceback[0].filename): stat.size_diff for stat in diff if stat.size_diff}
    for span in spans:
        span.end()
    return {"bytes_per_scope": total / open_scopes, "by_file": by_file, "open_scopes": open_scopes, "children": children}


def held_worker(open_scopes: int, children: int, sampling: str, trace_malloc: bool = True) -> dict[str, Any]:
    """Memory held while `open_scopes` unsampled scopes (ALWAYS_OFF) are open, each with `children` ended DB spans.

    `sampling` is OTEL_BUDGET_SAMPLING's value: `all` records the spans and holds them until the scope
    ends (over budget they are exported); `follow` drops them (nothing held). Everything allocated is
    traced, the SDK's spans included: held spans are the SDK's objects. Without `trace_malloc`, only
    RSS is read (tracemalloc's own bookkeeping would inflate it).
    """
    from _common import DB_STATEMENTS, db_attributes
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
    from opentelemetry.trace import SpanKind

    import otel_budget

    provider = TracerProvider(sampler=ALWAYS_OFF)
    processor = otel_budget.install(provider, record_metrics=False, sampling=sampling,
                                    max_open_scopes=open_scopes + 1)  # fmt: skip
    assert processor is not None
    tracer = provider.get_tracer("bench")
    warm = tracer.start_span("warm-up", kind=SpanKind.SERVER)
    _children(tracer, warm, children, DB_STATEMENTS, db_attributes)
    warm.end()
    gc.collect()
    rss0 = _rss_mib()
    if trace_malloc:
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
    spans = []
    for _ in range(open_scopes):
        span = tracer.start_span("GET products/", kind=SpanKind.SERVER, attributes={"http.method": "GET"})
        with trace.use_span(span):
            span.set_attribute("http.route", "products/")
        _children(tracer, span, children, DB_STATEMENTS, db_attributes)
        spans.append(span)
    gc.collect()
    total = 0
    if trace_malloc:
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    rss1 = _rss_mib()
    held = processor._held.count if processor._held is not None else 0
    for span in spans:
        span.end()
    return {"sampling": sampling, "open_scopes": open_scopes, "children": children, "held_spans": held,
            "traced_mib": round(total / 2**20, 2), "bytes_per_scope": round(total / open_scopes),
            "rss_growth_mib": round(rss1 - rss0, 2)}


def _children(tracer: Any, scope_span: Any, count: int, statements: Any, attributes: Any) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    with trace.use_span(scope_span):
        for index in range(count):
            with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as span:
                span.set_attributes(attributes(statements[index % len(statements)]))


def _worker(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "worker", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=HERE)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(*, scopes: int = 100_000, open_scopes: int = 2000, log: Callable[[str], None] = print) -> dict[str, Any]:
    checkpoints = sorted({max(1, scopes // 10), *range(scopes // 10, scopes + 1, max(1, scopes // 10))} - {0})
    growth = {}
    for config in ("otel", "otel+budget"):
        growth[config] = _worker("growth", config, str(scopes), ",".join(map(str, checkpoints)))
        rss = growth[config]["rss_mib"]
        first, last = rss[str(checkpoints[0])], rss[str(checkpoints[-1])]
        growth[config]["growth_mib"] = round(last - first, 2)
        log(f"  memory {config}: RSS {first} MiB at {checkpoints[0]:,} scopes, {last} MiB at {checkpoints[-1]:,}")
    state = {}
    for children in (0, 20):
        state[f"children={children}"] = _worker("state", str(open_scopes), str(children))
        log(f"  state per open scope ({children} DB spans counted): {state[f'children={children}']['bytes_per_scope']:.0f} B")
    return {"scopes": scopes, "checkpoints": checkpoints, "growth": growth, "state": state}


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    sys.path.insert(0, HERE)
    kind, *rest = sys.argv[2:]
    if kind == "growth":
        result = growth_worker(rest[0], int(rest[1]), [int(c) for c in rest[2].split(",")])
    elif kind == "held":
        result = held_worker(int(rest[0]), int(rest[1]), rest[2], rest[3:4] != ["rss"])
    else:
        result = state_worker(int(rest[0]), int(rest[1]))
    print(json.dumps(result))
