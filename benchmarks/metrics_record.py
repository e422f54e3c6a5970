"""Instructions per `BudgetMetrics.record` alone, for callgrind: in-process aggregation against `Histogram.record`.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/metrics_record.py aggregated 2000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/metrics_record.py aggregated 6000

Difference / 4000 = one scope's record (the 12 default histograms of per_span's scope, 20 PostgreSQL queries,
no violation). `record-path` is the same `BudgetMetrics` on a MeterProvider subclass, which it does not
merge into, so every value is one SDK `Histogram.record` (the cost before issue 14); use 200 and 600 there.
The run ends with one collection, so the merge is paid once at both sizes.
"""

from __future__ import annotations

import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_budget._metrics import BudgetMetrics
from otel_budget.names import ScopeKind
from otel_budget.results import ScopeResult

# What a scope of per_span.one_scope measures (1 SERVER + 20 PostgreSQL spans), by metric name.
VALUES = {
    "duration_ms": 2.153,
    "memory.growth_mb": 0.043,
    "memory.peak_growth_mb": 0.0,
    "db.queries": 20,
    "db.duration_ms": 0.543,
    "db.repeated_queries": 5,
    "external.calls": 0,
    "external.duration_ms": 0.0,
    "tasks.enqueued": 0,
    "external.untimed_calls": 0,
    "db.untimed_connections": 0,
    "cpu_ms": 0.0,
    "db.postgresql.queries": 20,
    "db.postgresql.duration_ms": 0.543,
}
WARM_UP = 300


class PublicPathProvider(MeterProvider):
    """The SDK's MeterProvider under another type: `BudgetMetrics` records into it value by value."""


def main(argv: list[str]) -> int:
    modes = {"aggregated": MeterProvider, "record-path": PublicPathProvider}
    if len(argv) != 2 or argv[0] not in modes:
        print(f"usage: metrics_record.py {{{'|'.join(modes)}}} SCOPES", file=sys.stderr)
        return 2
    reader = InMemoryMetricReader()
    provider = modes[argv[0]]([reader], shutdown_on_exit=False)
    budget_metrics = BudgetMetrics(provider)
    result = ScopeResult(ScopeKind.HTTP, "products/", "GET", "http", VALUES, (), trace_id=1, span_id=2)
    for _ in range(WARM_UP + int(argv[1])):
        budget_metrics.record(result)
    reader.get_metrics_data()
    provider.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
