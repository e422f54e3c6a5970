"""The shop exporting to the scaled topology (its own agent + 2 gateways) when a gateway is SIGKILLed mid-run.

Head sampling off (the SDK's default parentbased_always_on): the agent counts, the gateways tail-sample.
Two gunicorn shops take turns request by request: one exports to the test's agent, the control to the
shared collector, so a busy machine slows both alike and the latency ratio between them is the figure.
The figures go to $OTEL_BUDGET_STACK_DIR/gateway-outage-shop.json (docs/sampling.md quotes them).
Starts collectors on fixed ports: hold the servers lock.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from scaled_traffic import (
    DECISION_WAIT,
    Topology,
    accepted_spans,
    counted_violations,
    jaeger_span_counts,
    scaled_topology,
    wait_for_restart,
)
from shop_e2e import Gunicorn, gunicorns

from jaeger_reader import JaegerReader

BEFORE_S, AFTER_S = 14.0, 8.0  # traffic before and after the kill; decision_wait is 10 s
OVER_BUDGET, WITHIN_BUDGET = "orders/", "probe/queries/"
FIGURES = Path(os.environ.get("OTEL_BUDGET_STACK_DIR", "/tmp/otel-budget-stack")) / "gateway-outage-shop.json"


@dataclass
class Traffic:
    """What was sent to the outage shop (trace id -> path, phase, time) and each request's latency ratio to the control."""

    sent: dict[int, tuple[str, str, float]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    ratios: dict[str, list[float]] = field(default_factory=dict)  # phase -> outage / control, request by request
    killed_at: float = 0.0

    def over(self, before: float | None = None, after: float | None = None, warm_up: bool = False) -> set[int]:
        """The N+1 requests' trace ids (sent before / after a time; the warm-up's only when asked)."""
        return {t for t, (path, phase, at) in self.sent.items() if path == OVER_BUDGET
                and (warm_up or phase != "warm-up")
                and (before is None or at < before) and (after is None or at > after)}  # fmt: skip

    def ratio(self, phase: str) -> float:
        return statistics.median(self.ratios[phase])


def drive(outage: Gunicorn, control: Gunicorn, until: float, phase: str, traffic: Traffic) -> None:
    """Alternate N+1 and probe requests, each to the outage shop then to the control, until `until`."""
    n = 0
    while time.monotonic() < until:
        path, params = (OVER_BUDGET, {}) if n % 2 == 0 else (WITHIN_BUDGET, {"pg": "1"})
        seconds = []
        for server in (outage, control):
            t0 = time.perf_counter()
            response = server.client.get(path, **params)  # asserts 200
            seconds.append(time.perf_counter() - t0)
            traffic.statuses[response.status] += 1
            if server is outage:
                traffic.sent[int(response.trace_id, 16)] = (path, phase, time.monotonic())
        half = "" if phase != "before" else "/1" if time.monotonic() < until - BEFORE_S / 2 else "/2"
        for key in {phase, phase + half}:
            traffic.ratios.setdefault(key, []).append(seconds[0] / seconds[1])
        n += 1


@pytest.fixture(scope="module")
def outage(stack_services: None, shop_database: None) -> Iterator[dict[str, Any]]:
    service = f"shop-outage-{uuid.uuid4().hex[:8]}"
    with scaled_topology() as topology, gunicorns(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{topology.endpoint}", "OTEL_METRIC_EXPORT_INTERVAL": "1000"},
        {"OTEL_SERVICE_NAME": f"{service}-control"},
        service=service,
    ) as (shop, control):
        yield run(topology, service, shop, control)


def run(topology: Topology, service: str, shop: Gunicorn, control: Gunicorn) -> dict[str, Any]:
    traffic = Traffic()
    drive(shop, control, time.monotonic() + 2, "warm-up", traffic)
    start = time.monotonic()
    drive(shop, control, start + BEFORE_S, "before", traffic)
    gateway1_at_kill = accepted_spans(topology.gateways[0].ports[1])
    pid = topology.gateways[1].our_pid()
    assert pid, "the second gateway is not running"
    os.kill(pid, signal.SIGKILL)
    traffic.killed_at = time.monotonic()
    drive(shop, control, traffic.killed_at + AFTER_S, "after", traffic)
    time.sleep(DECISION_WAIT + 6)  # gateway1 decides its last traces, batches, exports
    gateway1_after = accepted_spans(topology.gateways[0].ports[1])
    while_down = jaeger_span_counts(service)
    t_restart = time.monotonic()
    topology.start(topology.gateways[1])
    after = wait_for_restart(service, len(while_down), timeout=75)  # the agent's retries back off up to 30 s
    over = traffic.over()
    kill = traffic.killed_at
    figures = {
        "requests": len(traffic.sent), "over_budget": len(over), "warm_up_over_budget": len(traffic.over(warm_up=True) - over), "killed_after_s": round(kill - start, 1),
        "statuses": dict(traffic.statuses),
        "latency_ratio_to_control": {p: round(traffic.ratio(p), 3) for p in ("before/1", "before/2", "before", "after")},
        "gateway1_spans_accepted_after_kill": gateway1_after - gateway1_at_kill,
        "over_budget_in_jaeger_while_down": len(over & while_down.keys()),
        "over_budget_in_jaeger_after_restart": len(over & after.keys()),
        "over_budget_lost": len(over - after.keys()),
        "over_budget_lost_sent_before_kill": len((over - after.keys()) & traffic.over(before=kill)),
        "over_budget_lost_sent_earlier_than_decision_wait": len(
            (over - after.keys()) & traffic.over(before=kill - DECISION_WAIT - 2)),
        "restart_to_delivery_s": round(time.monotonic() - t_restart, 1),
    }
    FIGURES.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    return {"traffic": traffic, "service": service, "topology": topology, "figures": figures,
            "while_down": while_down, "after": after}


def test_the_app_keeps_answering_at_the_same_speed(outage: dict[str, Any]) -> None:
    """Every request got 200; the shop's latency relative to the control moved by no more than the noise.

    The figure is the median over requests of (outage shop's latency / the control's, the same request
    right after). The noise is how much that median moves between the two halves of the run before the
    kill, where nothing changed; the change across the kill may be twice that, and 15 % at least.
    """
    traffic = outage["traffic"]
    assert set(traffic.statuses) == {200}
    noise = abs(traffic.ratio("before/2") / traffic.ratio("before/1") - 1)
    assert abs(traffic.ratio("after") / traffic.ratio("before") - 1) <= max(2 * noise, 0.15), outage["figures"]


def test_the_counts_are_exact_through_the_outage(outage: dict[str, Any]) -> None:
    """The agent's count connector counted one db.repeated_queries event per N+1 request, nothing else."""
    over = len(outage["traffic"].over(warm_up=True))
    assert counted_violations(outage["service"], outage["topology"].exporter_port) == {"db.repeated_queries": over}


def test_traffic_resumes_on_the_surviving_gateway(outage: dict[str, Any]) -> None:
    """After the kill gateway1 keeps accepting spans, and N+1 traces sent then reach Jaeger through it."""
    traffic, while_down = outage["traffic"], outage["while_down"]
    assert outage["figures"]["gateway1_spans_accepted_after_kill"] > 0
    assert traffic.over(after=traffic.killed_at) & while_down.keys(), outage["figures"]


def test_only_the_last_decision_wait_before_the_kill_is_lost(outage: dict[str, Any], jaeger: JaegerReader) -> None:
    """Every N+1 trace sent more than decision_wait before the kill is in Jaeger, complete (scope + queries)."""
    traffic, after = outage["traffic"], outage["after"]
    early = traffic.over(before=traffic.killed_at - DECISION_WAIT - 2)
    assert early and early <= after.keys(), outage["figures"]
    for trace_id in early:
        spans = jaeger.trace(f"{trace_id:032x}")
        (scope,) = [span for span in spans if span.is_scope]
        queries = [span for span in spans if span.kind == "client" and "db.system" in span.attributes]
        assert len(queries) == scope.attributes["budget.db.queries"] > 5
