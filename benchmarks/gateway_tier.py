"""Spans per second the two-gateway tier passes on this machine, and where it saturates (issue 12).

The scaled topology (collector-config/agent.yaml -> two collector-config/gateway.yaml) started beside the
shared stack on ports of its own (`stack.scaled_copy(offset=22000)`: agent OTLP 26317, own metrics 30888;
gateways 26417/30890 and 26427/30891); the gateways export to a sink collector (127.0.0.1:26999, debug
exporter, nothing kept, own metrics :26998) standing in for Jaeger, so that the shared Jaeger is not flooded.

Sender processes replay pre-encoded OTLP requests to the agent at a paced rate, one step per offered rate.
A request holds 50 traces of the shape otel-budget exports: a SERVER scope span and 20 DB CLIENT spans
(21 spans); every 5th trace's scope span carries a `budget.exceeded` event (the gateways keep those, and
10 % of the rest). Per step, from each collector's own telemetry (deltas over the step): spans in
(`otelcol_receiver_accepted_spans`), refused (`otelcol_receiver_refused_spans`), exported
(`otelcol_exporter_sent_spans`), failed/dropped (`otelcol_exporter_send_failed_spans`,
`otelcol_exporter_enqueue_failed_spans`), the largest exporter queue seen; CPU % of each collector
process (/proc/<pid>/stat, 100 % = one core); the senders' failed exports; the load average.

A step is saturated when the agent accepts less than 97 % of what was offered, anything is refused,
failed or dropped, or a sending queue reaches its capacity. Bounded: STEP_S seconds per rate plus the
gateways' 10 s decision wait, loopback only. Starts collectors on fixed ports: run it under the lock,

    flock /tmp/otel-budget-servers.lock .venv/bin/python benchmarks/gateway_tier.py 5000,10000,20000,40000,60000,80000
    GATEWAY_TIER_SENDERS=4 flock /tmp/otel-budget-servers.lock .venv/bin/python benchmarks/gateway_tier.py 100000,140000,180000,240000

(GATEWAY_TIER_SENDERS: sender processes, 2 by default.)

One JSON line per step on stdout; a markdown table at the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stack  # noqa: E402
from stack.commands import wait_healthy  # noqa: E402

OFFSET, SINK_PORT, SINK_METRICS_PORT = 22000, 26999, 26998
STEP_S, SETTLE_S, SENDERS = 10.0, 14.0, int(os.environ.get("GATEWAY_TIER_SENDERS", "2"))  # SETTLE_S > the gateways' decision_wait (10 s) + batch (1 s)
TRACES_PER_REQUEST, DB_SPANS, EXCEEDED_EVERY = 50, 20, 5
SPANS_PER_REQUEST = TRACES_PER_REQUEST * (1 + DB_SPANS)
SINK = """
receivers: {otlp: {protocols: {grpc: {endpoint: 127.0.0.1:%d}}}}
exporters: {debug: {verbosity: basic, sampling_initial: 1, sampling_thereafter: 100000}}
service:
  telemetry:
    resource: {attributes: [{name: service.name, value: otelcol-budget-tier-sink}]}
    metrics:
      level: detailed
      readers: [{pull: {exporter: {prometheus: {host: 127.0.0.1, port: %d}}}}]
  pipelines: {traces: {receivers: [otlp], exporters: [debug]}}
"""
COUNTERS = ("otelcol_receiver_accepted_spans", "otelcol_receiver_refused_spans", "otelcol_exporter_sent_spans",
            "otelcol_exporter_send_failed_spans", "otelcol_exporter_enqueue_failed_spans")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LINE = re.compile(r"^([a-z_]+?)(?:_total)?(\{[^}]*\})? (\S+)$")


def telemetry(port: int) -> dict[str, float]:
    """A collector's own counters (summed over series, trace series only) and its largest queue fill (0..1)."""
    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = dict.fromkeys(COUNTERS, 0.0)
    size: dict[str, float] = {}
    capacity: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name in out and 'otel_signal="metrics"' not in labels and 'otel_signal="logs"' not in labels:
            out[name] += value
            exporter = re.search(r'exporter="([^"]*)"', labels)
            if exporter:  # the agent's load_balancing exporter, apart from any sub-exporter series
                key = f"{name}/{exporter.group(1)}"
                out[key] = out.get(key, 0.0) + value
        elif name == "otelcol_exporter_queue_size":
            size[labels] = value
        elif name == "otelcol_exporter_queue_capacity":
            capacity[labels] = value
    out["queue_fill"] = max((size[k] / capacity[k] for k in size if capacity.get(k)), default=0.0)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def requests(count: int) -> list[bytes]:
    """`count` encoded ExportTraceServiceRequests of TRACES_PER_REQUEST traces (a SERVER span and DB_SPANS DB spans)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    def attr(key: str, value: str | int) -> KeyValue:
        v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
        return KeyValue(key=key, value=v)

    rng = random.Random(os.getpid())
    out = []
    now = time.time_ns()
    for _ in range(count):
        spans = []
        for t in range(TRACES_PER_REQUEST):
            trace_id = rng.getrandbits(128).to_bytes(16, "big")
            root = rng.getrandbits(64).to_bytes(8, "big")
            events = []
            if t % EXCEEDED_EVERY == 0:
                events = [Span.Event(time_unix_nano=now + 40_000_000, name="budget.exceeded",
                                     attributes=[attr("budget.metric", "db.query_count"), attr("budget.limit", 10),
                                                 attr("budget.actual", DB_SPANS), attr("budget.rule", "default")])]
            spans.append(Span(trace_id=trace_id, span_id=root, name="GET products/", kind=Span.SPAN_KIND_SERVER,
                              start_time_unix_nano=now, end_time_unix_nano=now + 50_000_000, events=events,
                              attributes=[attr("http.route", "products/"), attr("http.request.method", "GET"),
                                          attr("http.response.status_code", 200), attr("budget.db.query_count", DB_SPANS)]))
            for n in range(DB_SPANS):
                start = now + 1_000_000 + n * 2_000_000
                spans.append(Span(trace_id=trace_id, span_id=rng.getrandbits(64).to_bytes(8, "big"),
                                  parent_span_id=root, name="SELECT shop_product", kind=Span.SPAN_KIND_CLIENT,
                                  start_time_unix_nano=start, end_time_unix_nano=start + 1_000_000,
                                  attributes=[attr("db.system", "postgresql"), attr("db.name", "shop"),
                                              attr("db.statement", 'SELECT "shop_product"."id", "shop_product"."name" '
                                                                   'FROM "shop_product" WHERE "shop_product"."id" = %s')]))
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=Resource(attributes=[attr("service.name", "tier-bench")]),
            scope_spans=[ScopeSpans(scope=InstrumentationScope(name="opentelemetry.instrumentation.django"), spans=spans)])])
        out.append(request.SerializeToString())
    return out


def sender(endpoint: str, spans_per_s: float, seconds: float, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Export pre-encoded requests to `endpoint` at `spans_per_s` for `seconds`; puts (sent, failed, elapsed, cpu)."""
    import grpc  # type: ignore[import-untyped]

    channel = grpc.insecure_channel(endpoint)
    export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                 request_serializer=lambda b: b, response_deserializer=lambda b: b)
    payloads = requests(20)
    sent = failed = 0
    cpu0 = time.process_time()
    start = time.monotonic()
    interval = SPANS_PER_REQUEST / spans_per_s
    n = 0
    while (now := time.monotonic()) < start + seconds:
        due = start + n * interval
        if due > now:
            time.sleep(due - now)
        try:
            export(payloads[n % len(payloads)], timeout=5)
            sent += SPANS_PER_REQUEST
        except grpc.RpcError:
            failed += SPANS_PER_REQUEST
        n += 1
    channel.close()
    results.put((sent, failed, time.monotonic() - start, time.process_time() - cpu0))


def step(rate: int, agent_endpoint: str, procs: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """One offered rate: send for STEP_S, sample queues meanwhile, settle, return the step's figures."""
    before = {name: telemetry(port) for name, (_, port) in procs.items()}
    cpu_before = {name: cpu_seconds(pid) for name, (pid, _) in procs.items()}
    busy_before = machine_busy()
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    senders = [multiprocessing.Process(target=sender, args=(agent_endpoint, rate / SENDERS, STEP_S, queue))
               for _ in range(SENDERS)]
    t0 = time.monotonic()
    for p in senders:
        p.start()
    fill = dict.fromkeys(procs, 0.0)
    while any(p.is_alive() for p in senders) and time.monotonic() < t0 + STEP_S + 60:
        for name, (_, port) in procs.items():
            fill[name] = max(fill[name], telemetry(port)["queue_fill"])
        time.sleep(0.5)
    done = [queue.get(timeout=60) for _ in senders]
    for p in senders:
        p.join()
    send_s = time.monotonic() - t0
    busy_after = machine_busy()
    cpu_send = {name: cpu_seconds(pid) - cpu_before[name] for name, (pid, _) in procs.items()}
    time.sleep(SETTLE_S)  # the agent's 1 s batch, the gateways' 10 s decision wait and 1 s batch
    after = {name: telemetry(port) for name, (_, port) in procs.items()}
    seconds = max(d[2] for d in done)
    delta = {name: {k: v - before[name].get(k, 0.0) for k, v in after[name].items()} for name in procs}
    lb = "otelcol_exporter_sent_spans/load_balancing"
    gateways = [n for n in procs if n.startswith("gateway")]
    row: dict[str, Any] = {
        "offered_spans_per_s": rate,
        "sent_spans_per_s": round(sum(d[0] for d in done) / seconds),
        "sender_failed_spans": sum(d[1] for d in done),
        "agent_accepted_per_s": round(delta["agent"]["otelcol_receiver_accepted_spans"] / seconds),
        "agent_exported_per_s": round(delta["agent"].get(lb, delta["agent"]["otelcol_exporter_sent_spans"]) / seconds),
        "agent_exporter_series": {k: int(v) for k, v in delta["agent"].items() if "/" in k},
        "gateways_accepted_per_s": [round(delta[g]["otelcol_receiver_accepted_spans"] / seconds) for g in gateways],
        "gateways_exported_per_s": [round(delta[g]["otelcol_exporter_sent_spans"] / seconds) for g in gateways],
        "sink_accepted_per_s": round(delta["sink"]["otelcol_receiver_accepted_spans"] / seconds),
        "refused": {n: int(delta[n]["otelcol_receiver_refused_spans"]) for n in procs},
        "failed_or_dropped": {n: int(delta[n]["otelcol_exporter_send_failed_spans"]
                                     + delta[n]["otelcol_exporter_enqueue_failed_spans"]) for n in procs},
        "max_queue_fill": {n: round(fill[n], 3) for n in procs},
        "cpu_percent": {n: round(100 * cpu_send[n] / send_s) for n in procs},
        "senders_cpu_percent": round(100 * sum(d[3] for d in done) / seconds),
        "machine_busy_percent": round(100 * (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    refused = sum(row["refused"].values())
    dropped = sum(row["failed_or_dropped"].values())
    row["saturated"] = bool(int(row["agent_accepted_per_s"]) < 0.97 * rate or refused or dropped
                            or row["sender_failed_spans"] or max(fill.values()) >= 1.0)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| offered spans/s | sent | agent accepted | agent exported | gateways accepted (1 + 2) | gateways exported "
             "(kept) | sink accepted | CPU % agent / gw1 / gw2 / sink / senders | refused / failed+dropped | max queue fill | saturated |",
             "|" + "---|" * 11]
    for r in rows:
        cpu = r["cpu_percent"]
        ga, ge = r["gateways_accepted_per_s"], r["gateways_exported_per_s"]
        lines.append(
            f"| {r['offered_spans_per_s']} | {r['sent_spans_per_s']} | {r['agent_accepted_per_s']} | {r['agent_exported_per_s']} "
            f"| {ga[0]} + {ga[1]} = {ga[0] + ga[1]} | {ge[0] + ge[1]} | {r['sink_accepted_per_s']} "
            f"| {cpu['agent']} / {cpu['gateway1']} / {cpu['gateway2']} / {cpu['sink']} / {r['senders_cpu_percent']} "
            f"| {sum(r['refused'].values())} / {sum(r['failed_or_dropped'].values()) + int(r['sender_failed_spans'])} "
            f"| {max(r['max_queue_fill'].values())} | {'yes' if r['saturated'] else 'no'} |")
    return "\n".join(lines)


def main(rates: list[int]) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="otel-budget-tier-"))
    collectors = stack.scaled_copy(offset=OFFSET, prefix="tier-bench-")
    ports = [SINK_PORT, SINK_METRICS_PORT, *(p for c in collectors for p in c.ports)]
    busy = [p for p in ports if stack.port_open(p)]
    if busy:
        print(f"ports {busy} are taken; is another gateway_tier run going?", file=sys.stderr)
        return 2
    (log_dir / "sink.yaml").write_text(SINK % (SINK_PORT, SINK_METRICS_PORT))
    with open(log_dir / "sink.log", "wb") as log:
        sink = subprocess.Popen([stack.collector_bin(), f"--config={log_dir / 'sink.yaml'}"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    os.environ["OTEL_BUDGET_TRACES_ENDPOINT"] = f"127.0.0.1:{SINK_PORT}"  # the gateways' Jaeger endpoint
    rows = []
    try:
        pids = []
        for collector in collectors:
            pids.append(collector.start())
            error = wait_healthy(collector, pids[-1])
            if error:
                raise RuntimeError(error)
        deadline = time.monotonic() + 30
        while not stack.port_open(SINK_METRICS_PORT):
            if time.monotonic() > deadline or sink.poll() is not None:
                raise RuntimeError(f"the sink collector did not start; see {log_dir / 'sink.log'}")
            time.sleep(0.2)
        gw1, gw2, agent = collectors
        procs = {"agent": (pids[2], agent.ports[3]), "gateway1": (pids[0], gw1.ports[1]),
                 "gateway2": (pids[1], gw2.ports[1]), "sink": (sink.pid, SINK_METRICS_PORT)}
        print(json.dumps({"machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                                      "collector": stack.collector_bin(), "logs": str(log_dir)}}), flush=True)
        for rate in rates:
            row = step(rate, f"127.0.0.1:{agent.ports[0]}", procs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for collector in reversed(collectors):
            collector.stop()
        sink.terminate()
        try:
            sink.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sink.kill()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main([int(r) for r in (sys.argv[1] if len(sys.argv) > 1 else "5000,10000,20000,40000,60000").split(",")]))
