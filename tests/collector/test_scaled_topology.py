"""The scaled topology for real: agent.yaml and gateway.yaml on the built collector, traffic through agent + 2 gateways.

The run starts its own agent and gateways beside the shared stack (stack.scaled_copy: the shared ports
+ 20000): hold the servers lock, `flock /tmp/otel-budget-servers.lock pytest tests/collector`.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stack
import yaml
from opentelemetry.sdk.trace.export import SpanExportResult
from scaled_traffic import (
    SPANS_PER_TRACE,
    SentTraces,
    accepted_spans,
    binomial_interval,
    counted_violations,
    Topology,
    scaled_topology,
    send_traces,
    wait_for_jaeger,
)

CONFIGS = Path(__file__).resolve().parents[2] / "collector-config"
GATEWAY_ENV = {"GATEWAY_OTLP_PORT": "4417", "GATEWAY_METRICS_PORT": "8890"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load(name: str) -> Any:
    return yaml.safe_load((CONFIGS / name).read_text())


def validate(config: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([stack.collector_bin(), "validate", f"--config={CONFIGS / config}"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=60)


@pytest.mark.parametrize(("config", "env"), [("agent.yaml", None), ("gateway.yaml", GATEWAY_ENV)])
def test_validate_accepts_the_scaled_configs(config: str, env: dict[str, str] | None) -> None:
    """`validate` exits 0 on agent.yaml and on gateway.yaml with its ports in the environment."""
    result = validate(config, env)
    assert result.returncode == 0, result.stdout


def test_agent_counts_exactly_like_the_single_collector() -> None:
    """The agent's receivers, connectors, metrics pipeline and Prometheus exporter are config.yaml's."""
    agent, single = load("agent.yaml"), load("config.yaml")
    assert agent["receivers"] == single["receivers"]
    assert agent["connectors"] == single["connectors"]
    assert agent["processors"] == single["processors"]
    assert agent["exporters"]["prometheus"] == single["exporters"]["prometheus"]
    assert agent["service"]["pipelines"]["metrics"] == single["service"]["pipelines"]["metrics"]
    assert {"count", "span_metrics"} <= set(agent["service"]["pipelines"]["traces"]["exporters"])


def test_gateway_samples_after_the_agent_counted() -> None:
    """Counting happens on the agent, before sampling; the gateway has no count connector."""
    agent, gateway = load("agent.yaml"), load("gateway.yaml")
    assert all("tail_sampling" not in p["processors"] for p in agent["service"]["pipelines"].values())
    assert "tail_sampling" in gateway["service"]["pipelines"]["traces"]["processors"]
    assert "connectors" not in gateway


def probabilistic_share() -> float:
    policies = load("gateway.yaml")["processors"]["tail_sampling"]["policies"]
    return float(next(p for p in policies if p["type"] == "probabilistic")["probabilistic"]["sampling_percentage"]) / 100


@pytest.fixture(scope="module")
def scaled_stack() -> Iterator[Topology]:
    with scaled_topology() as topology:
        yield topology


@pytest.fixture(scope="module")
def run(scaled_stack: Topology) -> tuple[str, SentTraces, dict[int, int], tuple[int, int]]:
    """200 traces sent to the agent; what Jaeger holds of them; spans each gateway accepted."""
    service = f"scaled-topology-{uuid.uuid4().hex[:8]}"
    ports = [gateway.ports[1] for gateway in scaled_stack.gateways]
    before = accepted_spans(ports[0]), accepted_spans(ports[1])
    sent = send_traces(service, scaled_stack.endpoint)
    must_keep = len(sent.ids("over_budget", "error", "slow"))
    held = wait_for_jaeger(service, at_least=must_keep, timeout=60)  # decision_wait is 10 s
    accepted = accepted_spans(ports[0]) - before[0], accepted_spans(ports[1]) - before[1]
    kept = {kind: f"{len(ids & held.keys())}/{len(ids)}" for kind, ids in sent.by_kind.items()}
    print(f"kept in Jaeger {kept}; spans per gateway {accepted}; "
          f"plain interval {binomial_interval(len(sent.ids('plain')), probabilistic_share(), tail=0.0005)}")
    return service, sent, held, accepted


def test_the_sender_sees_no_export_failure(run: tuple[str, SentTraces, dict[int, int], tuple[int, int]]) -> None:
    """Every OTLP export of the test process to the agent succeeded."""
    _, sent, _, _ = run
    assert sent.export_results and set(sent.export_results) == {SpanExportResult.SUCCESS}


def test_both_gateways_get_whole_traces(run: tuple[str, SentTraces, dict[int, int], tuple[int, int]]) -> None:
    """The agent spreads the 800 spans over both gateways, and every trace Jaeger holds is complete."""
    _, sent, held, accepted = run
    assert sum(accepted) == SPANS_PER_TRACE * len(sent.ids(*sent.by_kind))
    assert min(accepted) > 0, accepted
    assert {n for n in held.values()} == {SPANS_PER_TRACE}


def test_every_over_budget_error_and_slow_trace_is_kept(
        run: tuple[str, SentTraces, dict[int, int], tuple[int, int]]) -> None:
    """Tail sampling keeps all 40 traces with a budget.exceeded event, the 10 errors and the 10 slow ones, complete."""
    _, sent, held, _ = run
    for kind in ("over_budget", "error", "slow"):
        missing = sent.ids(kind) - held.keys()
        assert not missing, f"{len(missing)} of {len(sent.ids(kind))} {kind} traces are not in Jaeger"
        assert all(held[t] == SPANS_PER_TRACE for t in sent.ids(kind))


def test_the_rest_is_kept_at_the_probabilistic_share(
        run: tuple[str, SentTraces, dict[int, int], tuple[int, int]]) -> None:
    """Of the 140 plain traces, the number kept lies in the 99.9 % interval of Binomial(140, share)."""
    _, sent, held, _ = run
    plain = sent.ids("plain")
    kept = len(plain & held.keys())
    lo, hi = binomial_interval(len(plain), probabilistic_share(), tail=0.0005)
    assert lo <= kept <= hi, f"{kept} of {len(plain)} plain traces kept, expected {lo}..{hi}"
    assert held.keys() <= sent.ids(*sent.by_kind)


def test_the_agent_counts_every_violation(
        scaled_stack: Topology, run: tuple[str, SentTraces, dict[int, int], tuple[int, int]]) -> None:
    """budget_violations_total on the agent's Prometheus exporter is exactly the events sent, per metric."""
    service, sent, _, _ = run
    assert counted_violations(service, scaled_stack.exporter_port) == sent.events


def test_validate_names_a_malformed_traces_endpoint() -> None:
    """A gateway whose Jaeger endpoint is not host:port: `validate` fails naming the exporter and the port."""
    result = validate("gateway.yaml", {**GATEWAY_ENV, "OTEL_BUDGET_TRACES_ENDPOINT": "jaeger:notaport"})
    assert result.returncode != 0
    assert 'exporters::otlp_grpc/jaeger::clientconfig: invalid port "notaport"' in result.stdout


def test_a_gateway_port_that_is_not_a_port_stops_it_at_start() -> None:
    """GATEWAY_OTLP_PORT=abc passes `validate` (it is only a string there) but the gateway exits at once, saying why."""
    env = {**GATEWAY_ENV, "GATEWAY_OTLP_PORT": "abc", "GATEWAY_METRICS_PORT": str(free_port())}
    assert validate("gateway.yaml", env).returncode == 0
    result = subprocess.run([stack.collector_bin(), f"--config={CONFIGS / 'gateway.yaml'}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=60)
    assert result.returncode != 0
    assert 'failed to start "otlp" receiver: listen tcp: lookup tcp/abc: unknown port' in result.stdout


def test_an_agent_whose_gateways_do_not_answer_still_counts() -> None:
    """The agent sending to gateway ports nobody listens on: the sender's exports succeed, the counts are exact."""
    topology = Topology(stack.scaled_copy(offset=21000, prefix="dead-gateways-"))  # the gateways never started
    agent = topology.agent
    if any(stack.port_open(p) for c in topology.collectors for p in c.ports):
        pytest.fail(f"a port of {[c.ports for c in topology.collectors]} is taken", pytrace=False)
    try:
        topology.start(agent)
        service = f"dead-gateways-{uuid.uuid4().hex[:8]}"
        sent = send_traces(service, topology.endpoint, count=50)
        assert set(sent.export_results) == {SpanExportResult.SUCCESS}
        deadline = time.monotonic() + 20
        while counted_violations(service, topology.exporter_port) != sent.events and time.monotonic() < deadline:
            time.sleep(0.5)
        assert counted_violations(service, topology.exporter_port) == sent.events
        deadline = time.monotonic() + 20
        while "Exporting failed" not in Path(agent.log_path).read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert f"127.0.0.1:{topology.gateways[0].ports[0]}" in Path(agent.log_path).read_text()
    finally:
        agent.stop()
