"""The scaled topology when a gateway dies mid-run: the sender sees nothing, the counts stay exact, what is lost is counted.

Hold the servers lock: `flock /tmp/otel-budget-servers.lock pytest tests/collector`.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from scaled_traffic import (
    DECISION_WAIT,
    SPANS_PER_TRACE,
    Topology,
    counted_violations,
    jaeger_span_counts,
    scaled_topology,
    send_traces,
    wait_for_restart,
)

TRACES, KILL_AT, PACE = 300, 150, 0.02  # 300 traces over ~6 s, gateway2 SIGKILLed before trace 150
FIGURES = Path(os.environ.get("OTEL_BUDGET_STACK_DIR", "/tmp/otel-budget-stack")) / "gateway-outage.json"


@pytest.fixture(scope="module")
def outage() -> Iterator[dict[str, Any]]:
    """Traffic through agent + 2 gateways, gateway2 killed mid-run, then restarted; the figures."""
    with scaled_topology() as topology:
        yield run_outage(topology, f"gateway-outage-{uuid.uuid4().hex[:8]}")


def run_outage(topology: Topology, service: str) -> dict[str, Any]:
    killed_at: list[float] = []

    def on_trace(i: int) -> None:
        time.sleep(PACE)
        if i == KILL_AT:
            pid = topology.gateways[1].our_pid()
            assert pid, "the second gateway is not running"
            os.kill(pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

    sent = send_traces(service, topology.endpoint, TRACES, on_trace=on_trace)
    over = sent.ids("over_budget")
    time.sleep(DECISION_WAIT + 6)  # gateway1 decides its last traces, batches, exports
    while_down = jaeger_span_counts(service)
    t_restart = time.monotonic()
    topology.start(topology.gateways[1])
    after = wait_for_restart(service, len(while_down), timeout=75)  # retries back off up to 30 s
    before_kill = {t for t, at in sent.sent_at.items() if at < killed_at[0]}
    figures = {
        "traces": TRACES, "over_budget": len(over), "killed_after_s": round(killed_at[0] - min(sent.sent_at.values()), 1),
        "over_budget_in_jaeger_while_down": len(over & while_down.keys()),
        "over_budget_in_jaeger_after_restart": len(over & after.keys()),
        "over_budget_lost": sorted(round(sent.sent_at[t] - killed_at[0], 1) for t in over - after.keys()),
        "over_budget_lost_before_kill": len((over - after.keys()) & before_kill),
        "incomplete_traces_after_restart": sum(1 for n in after.values() if n != SPANS_PER_TRACE),
        "restart_to_delivery_s": round(time.monotonic() - t_restart, 1),
    }
    FIGURES.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    return {"sent": sent, "service": service, "exporter_port": topology.exporter_port, "killed_at": killed_at[0], "figures": figures,
            "while_down": while_down, "after": after}


def test_the_sender_sees_no_export_failure(outage: dict[str, Any]) -> None:
    """The application's OTLP exports to the agent all succeed while a gateway is dead."""
    assert set(outage["sent"].export_results) == {SpanExportResult.SUCCESS}


def test_the_counts_are_exact_through_the_outage(outage: dict[str, Any]) -> None:
    """The agent counts before routing: budget_violations_total is exactly the events sent."""
    assert counted_violations(outage["service"], outage["exporter_port"]) == outage["sent"].events


def test_traces_decided_before_the_kill_are_not_lost(outage: dict[str, Any]) -> None:
    """Only over-budget traces sent in the last decision_wait before the kill, or after it, can be missing."""
    sent, killed_at, after = outage["sent"], outage["killed_at"], outage["after"]
    lost = sent.ids("over_budget") - after.keys()
    assert all(sent.sent_at[t] > killed_at - DECISION_WAIT - 2 for t in lost), outage["figures"]


def test_the_surviving_gateway_keeps_its_share(outage: dict[str, Any]) -> None:
    """Over-budget traces sent after the kill still reach Jaeger through gateway1 (its share of the ring)."""
    sent, killed_at, while_down = outage["sent"], outage["killed_at"], outage["while_down"]
    after_kill = {t for t in sent.ids("over_budget") if sent.sent_at[t] > killed_at}
    assert after_kill & while_down.keys(), outage["figures"]
