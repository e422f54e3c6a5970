"""Traces with known outcomes for the scaled topology (agent -> gateways -> Jaeger), and readers of the results."""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
import stack
from stack.commands import wait_healthy
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode
from otel_budget.names import EVENT_ACTUAL, EVENT_EXCEEDED, EVENT_LIMIT, EVENT_METRIC, EVENT_RULE

SPANS_PER_TRACE = 4  # the root SERVER span and three children
SCALED = ["gateway1", "gateway2", "agent"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

DECISION_WAIT = 10.0  # seconds a gateway waits for a trace's spans before deciding (collector-config/gateway.yaml)


@dataclass(frozen=True)
class Topology:
    """The test's own agent and two gateways (stack.scaled_copy), beside the shared stack's collector."""

    collectors: list[stack.Service]

    @property
    def gateways(self) -> list[stack.Service]:
        return self.collectors[:2]

    @property
    def agent(self) -> stack.Service:
        return self.collectors[2]

    @property
    def endpoint(self) -> str:
        """The agent's OTLP gRPC address."""
        return f"127.0.0.1:{self.agent.ports[0]}"

    @property
    def exporter_port(self) -> int:
        """The agent's Prometheus exporter (the count connector's totals, the apps' metrics)."""
        return self.agent.ports[2]

    def start(self, service: stack.Service) -> None:
        """Start `service` (one of ours) and wait until it answers; the test fails, naming why, if it does not."""
        pid = service.start()
        error = wait_healthy(service, pid)
        if error:
            pytest.fail(error, pytrace=False)


@contextlib.contextmanager
def scaled_topology() -> Iterator[Topology]:
    """The agent and both gateways on ports of their own (shared ports + 20000), stopped afterwards.

    The shared stack's collector is never swapped out: other engineers' runs keep it. Jaeger is shared
    (the gateways export there); every test tells its traces apart by a service name of its own.
    """
    reason = stack.BY_NAME["jaeger"].health()
    if reason is not None:
        pytest.fail(f"jaeger is not healthy ({reason}); start the stack: make stack", pytrace=False)
    topology = Topology(stack.scaled_copy())
    busy = [p for c in topology.collectors for p in c.ports if stack.port_open(p) and not c.our_pid()]
    if busy:
        pytest.fail(f"ports {busy} of the test's scaled topology are taken by another process", pytrace=False)
    try:
        for collector in topology.collectors:
            if collector.our_pid() is None:
                topology.start(collector)
        yield topology
    finally:
        for collector in reversed(topology.collectors):
            collector.stop()


class RecordingExporter(SpanExporter):
    """The SDK's OTLP gRPC exporter, remembering the result of every export."""

    def __init__(self, endpoint: str) -> None:
        self._inner = OTLPSpanExporter(endpoint=endpoint, insecure=True)
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()


@dataclass
class SentTraces:
    """What the test process sent: trace ids by kind, and the budget.exceeded events per metric."""

    by_kind: dict[str, set[int]] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)  # trace id -> time.monotonic() when its root ended
    events: Counter[str] = field(default_factory=Counter)
    export_results: list[SpanExportResult] = field(default_factory=list)

    def ids(self, *kinds: str) -> set[int]:
        return set().union(*(self.by_kind.get(k, set()) for k in kinds))


def kind_of(i: int) -> str:
    """Trace i of 200: 40 over budget, 10 with an error, 10 slow, 140 plain."""
    if i % 5 == 0:
        return "over_budget"
    if i < 50 and i % 5 == 1:
        return "error"
    if i < 50 and i % 5 == 2:
        return "slow"
    return "plain"


def send_traces(service: str, endpoint: str, count: int = 200,
                on_trace: Callable[[int], None] | None = None) -> SentTraces:
    """Send `count` traces of SPANS_PER_TRACE spans each over OTLP gRPC, head sampling off.

    `on_trace(i)` runs before trace i (to pace the traffic, or to kill a gateway mid-run).
    """
    exporter = RecordingExporter(endpoint)
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=100, schedule_delay_millis=200))
    tracer = provider.get_tracer("tests.collector.scaled_traffic")
    sent = SentTraces()
    for i in range(count):
        if on_trace:
            on_trace(i)
        kind = kind_of(i)
        start = time.time_ns()
        end = start + (2_000_000_000 if kind == "slow" else 50_000_000)  # latency policy: 1 s
        root = tracer.start_span(f"GET /scaled/{kind}", kind=SpanKind.SERVER, start_time=start,
                                 attributes={"http.route": f"/scaled/{kind}", "http.request.method": "GET"})
        sent.by_kind.setdefault(kind, set()).add(root.get_span_context().trace_id)
        metrics = ["db.queries", "duration_ms"] if i % 10 == 0 else ["db.queries"]
        for metric in metrics if kind == "over_budget" else []:
            root.add_event(EVENT_EXCEEDED, {EVENT_METRIC: metric, EVENT_LIMIT: 10, EVENT_ACTUAL: 11, EVENT_RULE: "http",
                                            "http.route": f"/scaled/{kind}", "http.request.method": "GET"},
                           timestamp=start + 1_000_000)
            sent.events[metric] += 1
        with trace.use_span(root, end_on_exit=False):
            for n in range(SPANS_PER_TRACE - 1):
                child = tracer.start_span(f"SELECT {n}", kind=SpanKind.CLIENT, start_time=start + (n + 1) * 1_000_000,
                                          attributes={"db.system": "postgresql"})
                if kind == "error" and n == 0:
                    child.set_status(Status(StatusCode.ERROR, "boom"))
                child.end(end_time=start + (n + 2) * 1_000_000)
        root.end(end_time=end)
        sent.sent_at[root.get_span_context().trace_id] = time.monotonic()
    provider.force_flush()
    provider.shutdown()
    sent.export_results = exporter.results
    return sent


def get_json(url: str) -> dict[str, object]:
    with _OPENER.open(url, timeout=10) as response:
        return dict(json.load(response))


def jaeger_span_counts(service: str) -> dict[int, int]:
    """Trace id -> number of spans Jaeger holds for the service."""
    body = get_json(f"http://127.0.0.1:16686/api/traces?service={service}&limit=10000&lookback=1h")
    return {int(t["traceID"], 16): len(t["spans"]) for t in body.get("data") or []}  # type: ignore[attr-defined]


def wait_for_restart(service: str, had: int, timeout: float) -> dict[int, int]:
    """Jaeger's traces of the service once the queued batches reached the restarted gateway (or `timeout`)."""
    deadline = time.monotonic() + timeout
    counts = jaeger_span_counts(service)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(3)
        now = jaeger_span_counts(service)
        if now != counts:
            counts, stable_since = now, time.monotonic()
        elif len(counts) > had and time.monotonic() - stable_since > DECISION_WAIT + 5:
            break
    return counts


def wait_for_jaeger(service: str, at_least: int, timeout: float) -> dict[int, int]:
    """Poll Jaeger until it holds `at_least` traces of the service and their count stopped growing."""
    deadline = time.monotonic() + timeout
    last: dict[int, int] = {}
    while time.monotonic() < deadline:
        time.sleep(2)
        counts = jaeger_span_counts(service)
        if len(counts) >= at_least and counts == last:
            return counts
        last = counts
    return last


def scrape(port: int) -> str:
    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def counted_violations(service: str, port: int) -> Counter[str]:
    """The count connector's budget_exceeded_events_total per budget_metric for `service`, from the agent's exporter on `port`."""
    totals: Counter[str] = Counter()
    for line in scrape(port).splitlines():
        if line.startswith("budget_exceeded_events_total{") and f'service_name="{service}"' in line:
            metric = re.search(r'budget_metric="([^"]*)"', line)
            totals[metric.group(1) if metric else ""] += int(float(line.rsplit(" ", 1)[1]))
    return totals


def accepted_spans(port: int) -> int:
    """Spans into the first processor (memory_limiter) of a collector whose own telemetry is on `port`.

    (v0.161.0 at `level: normal` exposes no otelcol_receiver_* series.)
    """
    wanted = 'otelcol_processor_incoming_items{otel_signal="traces",processor="memory_limiter"}'
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in scrape(port).splitlines() if line.startswith(wanted))


def binomial_interval(n: int, p: float, tail: float) -> tuple[int, int]:
    """The smallest [lo, hi] with P(X < lo) <= tail and P(X > hi) <= tail for X ~ Binomial(n, p)."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo = next(k for k in range(n + 1) if sum(pmf[: k + 1]) > tail)
    hi = next(k for k in range(n, -1, -1) if sum(pmf[k:]) > tail)
    return lo, hi
