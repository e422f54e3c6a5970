"""Per span: the SDK's spans/s with a BatchSpanProcessor and a null exporter, with and without otel-budget.

One scope is a SERVER span (Django's attributes, `http.route` set after start, like Django) with 20
PostgreSQL CLIENT children made the way the dbapi instrumentation makes them (start, then
`set_attributes`). Each configuration lives in its own worker process (no shared interpreter state);
the parent runs them alternately in short bursts, so a busy machine slows all of them alike.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import DB_STATEMENTS, SERVER_ATTRIBUTES, NullExporter, db_attributes, summary  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor  # noqa: E402
from opentelemetry.trace import SpanKind, Tracer  # noqa: E402

from otel_budget import BudgetSpanProcessor  # noqa: E402
from otel_budget._pipeline import fuse  # noqa: E402

SPANS_PER_SCOPE = 1 + len(DB_STATEMENTS)
_SERVER = SpanKind.SERVER
_CLIENT = SpanKind.CLIENT
_DB = [db_attributes(statement) for statement in DB_STATEMENTS]



class NoopProcessor(SpanProcessor):
    """Reference: what any extra span processor costs (the SDK calls on_start, _on_ending, on_end)."""


def c_noop_processor() -> SpanProcessor:
    """Reference: the SDK's own cost of calling one more processor. Its three hooks are C callables that
    do nothing (`"".format`, `id`), so not even a Python frame of the processor runs: what is left is the
    SDK's loop over its processors (a second iteration, an attribute lookup, a call with keywords)."""
    processor = NoopProcessor()
    processor.__dict__.update(on_start="".format, _on_ending=id, on_end=id)
    return processor


class MapOnlyProcessor(SpanProcessor):
    """Reference: the least a processor that knows each span's scope must do - one dict entry per open span."""

    def __init__(self) -> None:
        self.scopes: dict[int, int] = {}

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        parent = span._parent
        scope = self.scopes.get(parent[1]) if parent is not None else 1
        if scope is not None:
            self.scopes[span._context[1]] = scope  # type: ignore[index]

    def on_end(self, span: ReadableSpan) -> None:
        self.scopes.pop(span._context[1], None)  # type: ignore[index]


class CountingOnlyProcessor(BudgetSpanProcessor):
    """Reference: otel-budget without its end-of-scope work (probes, result, attributes, events, metrics).

    What is left is the per-span part: each span mapped to its scope, each query counted. The difference
    to the full processor is what finishing a scope costs.
    """

    def _finish(self, tally: Any, end_ns: int, *, writable: bool) -> None:
        self._forget(tally)
        tally.drain()
        tally.span = None


# The histograms that dashboards/ and its alert rules read (OTEL_BUDGET_METRICS=<these>, comma-separated).
DASHBOARD_METRICS = ("duration_ms", "memory.growth_mb", "db.queries", "db.duration_ms", "db.repeated_queries")
Factory = Callable[[MeterProvider], "SpanProcessor | None"]
# name -> the processor added after the batch exporter's (None: the SDK alone)
CONFIGS: dict[str, Factory] = {
    "otel": lambda meters: None,
    "otel+budget": lambda meters: BudgetSpanProcessor(meter_provider=meters),
    "otel+budget,no-metrics": lambda meters: BudgetSpanProcessor(record_metrics=False),
    "otel+budget,dashboard-metrics": lambda meters: BudgetSpanProcessor(
        meter_provider=meters, record_metrics=DASHBOARD_METRICS
    ),
    # as before the pipeline (issue 14, fourth pass): our processor called by the SDK's loop beside the exporter's
    "ref: otel+budget,no-metrics,unfused": lambda meters: BudgetSpanProcessor(record_metrics=False),
    "ref: otel+noop-processor": lambda meters: NoopProcessor(),
    "ref: otel+c-noop-processor": lambda meters: c_noop_processor(),
    "ref: otel+map-only-processor": lambda meters: MapOnlyProcessor(),
    "ref: otel+counting-only": lambda meters: CountingOnlyProcessor(record_metrics=False),
}
DEFAULT_CONFIGS = (
    "otel",
    "otel+budget",
    "otel+budget,no-metrics",
    "otel+budget,dashboard-metrics",
    "ref: otel+noop-processor",
    "ref: otel+map-only-processor",
    "ref: otel+counting-only",
)
BASELINE = "otel"
# Big enough that the exporter thread never falls behind and the SDK never drops (and logs) a span:
# drops would make the faster configuration pay for warnings the slower one never reaches.
QUEUE_SIZE = 1 << 16


def one_scope(tracer: Tracer, children: Sequence[Mapping[str, Any]] = _DB) -> None:
    """The SERVER span and one CLIENT child per entry of `children` (all 20 DB spans unless told)."""
    with tracer.start_as_current_span("GET products/", kind=_SERVER, attributes=SERVER_ATTRIBUTES) as server:
        server.set_attribute("http.route", "products/")
        for attributes in children:
            with tracer.start_as_current_span("SELECT", kind=_CLIENT) as span:
                if span.is_recording():
                    span.set_attributes(attributes)
        server.set_attribute("http.status_code", 200)


def _schedule_delay_ms() -> float:
    """The exporter's timer: the SDK's 5 s, or (`BENCH_EXPORT_ON_FULL_BATCH=1`, benchmarks/instructions.py) an
    hour, so that only a full batch of 512 wakes it: the exports then depend on the spans made, not on how
    long the run takes on a busy machine (each timer export moves the GIL between the threads)."""
    return 3_600_000.0 if os.environ.get("BENCH_EXPORT_ON_FULL_BATCH") == "1" else 5000.0


def make_provider(config: str) -> tuple[TracerProvider, MeterProvider]:
    """The SDK as `opentelemetry-instrument` builds it: batch exporter first, our processor after it.

    The MeterProvider is the SDK's (as under the distro), so recording our histograms costs what it costs.
    """
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    provider = TracerProvider()
    if os.environ.get("BENCH_SIMPLE_EXPORT") == "1":  # instructions.py --exporter simple: no exporter thread
        provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
    else:
        provider.add_span_processor(
            BatchSpanProcessor(NullExporter(), max_queue_size=QUEUE_SIZE, schedule_delay_millis=_schedule_delay_ms())
        )
    processor = CONFIGS[config](meter_provider)
    if processor is not None:
        provider.add_span_processor(processor)
        if not config.endswith(",unfused"):
            fuse(provider)  # as `otel_budget.install` does (a processor that is not ours is left as it is)
    return provider, meter_provider


def worker(config: str) -> None:
    """Serve `run N` requests on stdin: run N scopes, answer `<cpu s> <wall s>`; `quit` to stop."""
    provider, meter_provider = make_provider(config)
    tracer = provider.get_tracer("bench")
    for _ in range(300):
        one_scope(tracer)
    gc.collect()
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, arg = line.partition(" ")
        if command != "run":
            break
        scopes = int(arg)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(scopes):
            one_scope(tracer)
        print(f"{time.process_time() - cpu0} {time.perf_counter() - wall0}", flush=True)
    provider.shutdown()
    meter_provider.shutdown()


class Worker:
    """One configuration in its own interpreter."""

    def __init__(self, config: str, argv: list[str] | None = None, *, hash_seed: int = 0) -> None:
        self.config = config
        self.process = subprocess.Popen(
            argv or [sys.executable, os.path.abspath(__file__), "worker", config],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
            env=dict(os.environ, PYTHONHASHSEED=str(hash_seed)),
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"per-span worker {config} did not start")

    def run(self, scopes: int) -> tuple[float, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"run {scopes}\n")
        self.process.stdin.flush()
        cpu, wall = self.process.stdout.readline().split()
        return float(cpu), float(wall)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        self.process.wait(timeout=60)


def run(
    *,
    rounds: int = 7,
    duration: float = 3.0,
    burst: float = 0.05,
    configs: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`rounds` rounds; in each, every configuration runs ~`duration` s in bursts of ~`burst` s, alternating.

    Every round starts fresh worker processes (one hash seed per round, the same for all configurations):
    an interpreter's memory layout makes it a few per cent faster or slower for its whole life, and that
    luck should land in the spread between rounds, not on one configuration.
    """
    names = configs or list(DEFAULT_CONFIGS)
    pool: dict[str, Worker] = {}
    scopes = bursts = 0
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    ratios: dict[str, dict[str, list[float]]] = {
        name: {"spans_per_s": [], "cpu_us_per_span": []} for name in names if name != BASELINE
    }
    try:
        for index in range(rounds):
            pool = {name: Worker(name, hash_seed=index + 1) for name in names}
            if not scopes:  # size a burst from a first measurement of the slowest configuration
                per_scope = max(pool[name].run(20)[1] / 20 for name in names)
                scopes = max(1, int(burst / per_scope))
                bursts = max(1, int(duration / (scopes * per_scope)))
            cpu = dict.fromkeys(names, 0.0)
            wall = dict.fromkeys(names, 0.0)
            for number in range(bursts):
                shift = (index + number) % len(names)
                for name in names[shift:] + names[:shift]:  # rotate: no configuration always first
                    burst_cpu, burst_wall = pool[name].run(scopes)
                    cpu[name] += burst_cpu
                    wall[name] += burst_wall
            spans = scopes * bursts * SPANS_PER_SCOPE
            this_round = {
                name: {"spans_per_s": spans / wall[name], "cpu_us_per_span": cpu[name] / spans * 1e6} for name in names
            }
            for name in names:
                samples[name].append(this_round[name])
            if BASELINE in this_round:
                base = this_round[BASELINE]
                for name, ratio in ratios.items():
                    ratio["spans_per_s"].append(this_round[name]["spans_per_s"] / base["spans_per_s"])
                    ratio["cpu_us_per_span"].append(this_round[name]["cpu_us_per_span"] / base["cpu_us_per_span"])
            log(
                f"  per-span round {index + 1}/{rounds}: "
                + ", ".join(f"{name} {this_round[name]['spans_per_s']:,.0f} spans/s" for name in names)
            )
            for each in pool.values():
                each.close()
            pool = {}
    finally:
        for each in pool.values():
            each.close()
    return {
        "spans_per_scope": SPANS_PER_SCOPE,
        "rounds": rounds,
        "duration_s": duration,
        "scopes_per_burst": scopes,
        "bursts_per_round": bursts,
        "configs": {
            name: {metric: summary([s[metric] for s in samples[name]]) for metric in ("spans_per_s", "cpu_us_per_span")}
            for name in names
        },
        # Per round against the baseline of the same round; median and spread over the rounds.
        "ratios": {name: {metric: summary(values) for metric, values in ratio.items()} for name, ratio in ratios.items()},
    }


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2])
