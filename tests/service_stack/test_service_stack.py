"""The `stack` package's pure parts: the build table, the BSON codec, service selection, the command line."""

from __future__ import annotations

import os

import pytest
from stack import builds, commands, services, wire
from stack.progress import StackError, fmt_secs


def test_every_service_binary_is_in_the_build_table() -> None:
    """FerretDB, Jaeger and the collector are built; the collector builder is built first, for the collector."""
    assert [b.name for b in builds.GO_BINARIES if b.service] == ["ferretdb", "jaeger", "collector"]
    assert builds.BUILDS["collector"].requires == ("ocb",)
    assert not builds.BUILDS["ocb"].service


def test_binary_names_carry_the_version_and_the_builder_config_hash() -> None:
    """The cached file names docs/stack.md lists."""
    assert os.path.basename(builds.binary("ferretdb")) == "ferretdb-v1.24.2"
    assert os.path.basename(builds.binary("ocb")) == "ocb-v0.161.0"
    expected = f"otelcol-budget-v0.161.0-{builds.sha12(builds.BUILDER_CONFIG)}"
    assert os.path.basename(builds.collector_bin()) == expected


def test_bson_round_trip() -> None:
    """What the encoder writes, the decoder reads back."""
    doc = {"ping": 1, "$db": "admin", "ok": True}
    assert wire.bson_decode(wire.bson_encode(doc)) == doc


def test_pick_keeps_start_order_and_refuses_unknown_names() -> None:
    """Services come in start order whatever the order asked; an unknown name is an error naming the choices."""
    assert [s.name for s in commands.pick(["prometheus", "postgres"])] == ["postgres", "prometheus"]
    assert commands.pick([]) == services.SERVICES
    with pytest.raises(StackError, match="choose from postgres, redis"):
        commands.pick(["mysql"])


def test_fmt_secs() -> None:
    """Seconds under a minute, minutes and zero-padded seconds above."""
    assert (fmt_secs(42.4), fmt_secs(185)) == ("42s", "3m05s")


def test_the_scaled_topology_replaces_the_collector_in_place() -> None:
    """`--scaled`: gateways then agent where the collector was; the agent takes the collector's ports."""
    names = [s.name for s in commands.pick([], scaled=True)]
    assert names == ["postgres", "redis", "ferretdb", "jaeger", "gateway1", "gateway2", "agent", "prometheus"]
    assert services.BY_NAME["agent"].ports == services.BY_NAME["collector"].ports
    assert [g.env for g in services.GATEWAYS] == [
        {"GATEWAY_OTLP_PORT": "4417", "GATEWAY_METRICS_PORT": "8890"},
        {"GATEWAY_OTLP_PORT": "4427", "GATEWAY_METRICS_PORT": "8891"},
    ]


@pytest.mark.parametrize(("names", "scaled", "running", "stopped"), [
    ([], True, {"collector", "postgres"}, ["collector"]),
    ([], False, {"agent", "gateway1", "gateway2", "postgres"}, ["gateway1", "gateway2", "agent"]),
    (["agent"], False, {"collector", "gateway1"}, ["collector"]),
    (["collector"], False, {"agent", "gateway1"}, ["agent"]),
    (["gateway1"], False, {"collector"}, []),
])
def test_up_swaps_out_what_the_services_replace(monkeypatch: pytest.MonkeyPatch, names: list[str], scaled: bool,
                                                running: set[str], stopped: list[str]) -> None:
    """A whole topology stops the other's collectors; named services stop only those holding their ports."""
    done: list[str] = []
    for s in services.SERVICES + services.SCALED_COLLECTORS:
        monkeypatch.setattr(s, "our_pid", lambda s=s: 1 if s.name in running else None)
        monkeypatch.setattr(s, "stop", lambda s=s: done.append(s.name) or "stopped")
    commands.swap_out(commands.pick(names, scaled), commands.other_collectors(names, scaled))
    assert done == stopped


def test_the_agent_and_the_gateways_need_the_collector_built() -> None:
    """`up agent` on a fresh machine builds the collector binary they run."""
    assert {n for s in services.SCALED_COLLECTORS for n in s.needs()} == {"collector"}
    assert services.BY_NAME["postgres"].needs() == ["postgres"]


def test_chromium_is_a_test_tool_installed_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """`stack.py tools` (`make test`) installs Debian's chromium when it is not on PATH, and nothing when it is."""
    from stack import packages

    assert packages.TEST_TOOLS == ["chromium"]
    monkeypatch.setattr(packages.shutil, "which", lambda name: None)
    assert packages.missing_packages(packages.TEST_TOOLS) == (["chromium"], [])
    monkeypatch.setattr(packages.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert packages.missing_packages(packages.TEST_TOOLS) == ([], [])


def test_the_scaled_copy_shares_no_port_with_the_stack() -> None:
    """stack.scaled_copy(): the agent and gateways on ports + 20000, the agent sending to the copy's gateways."""
    gateway1, gateway2, agent = services.scaled_copy()
    assert (gateway1.ports, gateway2.ports, agent.ports) == ((24417, 28890), (24427, 28891), (24317, 24318, 28889, 28888))
    text = agent.render()  # type: ignore[attr-defined]
    shared = {p for s in services.SERVICES + services.SCALED_COLLECTORS for p in s.ports}
    assert not {p for p in shared if f"127.0.0.1:{p}" in text or f"port: {p}" in text}
    assert "127.0.0.1:24417" in text and "127.0.0.1:24427" in text
