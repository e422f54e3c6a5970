"""dashboards/compose.yaml, checked as far as a machine without Docker can.

It is not run here (no Docker engine); see its header and docs/alerting.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from alerting_stack import COMPOSE

# Host ports of the local stack (DESIGN.md "Real services", docs/stack.md) plus Grafana.
EXPECTED_PORTS = {
    "collector": {4317: 4317, 4318: 4318, 8889: 8889},
    "jaeger": {16686: 16686, 14317: 4317, 14318: 4318},
    "tempo": {3200: 3200},
    "prometheus": {9090: 9090},
    "grafana": {3000: 3000},
    "postgres": {5432: 5432},
    "mongodb": {27017: 27017},
    "redis": {6379: 6379},
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def published(service: dict[str, Any]) -> dict[int, int]:
    """{host port: container port}, and every port bound to 127.0.0.1."""
    ports = {}
    for spec in service.get("ports", []):
        host_ip, host, container = str(spec).split(":")
        assert host_ip == "127.0.0.1", spec
        ports[int(host)] = int(container)
    return ports


def test_header_says_not_run_here() -> None:
    """The file says that it was not run in this project's CI."""
    assert "NOT RUN IN THIS PROJECT'S CI" in COMPOSE.read_text().split("\nname:")[0]


def test_services_and_ports(compose: dict[str, Any]) -> None:
    """The services of the brief, published on the local stack's ports (loopback only)."""
    assert set(compose["services"]) == set(EXPECTED_PORTS)
    for name, ports in EXPECTED_PORTS.items():
        assert published(compose["services"][name]) == ports, name


def test_every_mounted_path_exists(compose: dict[str, Any]) -> None:
    """Each bind mount's source exists, relative to the compose file."""
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            assert source.startswith("."), f"{name}: {volume} is not a bind mount of a repository file"
            assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            mounts += 1
    assert mounts >= 8


def test_collector_runs_the_shipped_config(compose: dict[str, Any]) -> None:
    """The collector mounts collector-config/config.yaml and sends traces to the jaeger service."""
    collector = compose["services"]["collector"]
    assert "contrib" in collector["image"]
    sources = {str(v).split(":")[1]: Path(str(v).split(":")[0]) for v in collector["volumes"]}
    config = (COMPOSE.parent / sources["/etc/otel-budget/config.yaml"]).resolve()
    assert config == (COMPOSE.parent.parent / "collector-config" / "config.yaml").resolve()
    assert all(arg.removeprefix("--config=") in sources for arg in collector["command"])
    assert collector["environment"]["OTEL_BUDGET_TRACES_ENDPOINT"] == "jaeger:4317"


def test_prometheus_loads_the_alert_rules(compose: dict[str, Any]) -> None:
    """Prometheus mounts dashboards/alerts.yml where its config's rule_files looks, and scrapes the collector."""
    volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in compose["services"]["prometheus"]["volumes"]}
    config = yaml.safe_load((COMPOSE.parent / volumes["/etc/prometheus/prometheus.yml"]).read_text())
    for rule_file in config["rule_files"]:
        assert (COMPOSE.parent / volumes[rule_file]).resolve() == (COMPOSE.parent / "alerts.yml").resolve()
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "collector:8889" in targets


def test_grafana_provisioning_is_mounted(compose: dict[str, Any]) -> None:
    """Grafana gets the provisioning directories and the dashboard where the provider looks."""
    volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert volumes["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"
    assert volumes["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    assert volumes["/var/lib/grafana/dashboards/otel-budget/otel-budget.json"] == "./grafana/otel-budget.json"


def test_tempo_gets_the_traces(compose: dict[str, Any]) -> None:
    """Tempo runs its mounted config, which takes OTLP gRPC on 4317, where the compose collector sends traces."""
    tempo = compose["services"]["tempo"]
    volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in tempo["volumes"]}
    assert tempo["command"] == ["-config.file=/etc/tempo/tempo.yaml"]
    config = yaml.safe_load((COMPOSE.parent / volumes["/etc/tempo/tempo.yaml"]).read_text())
    assert config["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert config["server"]["http_listen_port"] == 3200
    overrides = yaml.safe_load((COMPOSE.parent / "compose" / "collector-overrides.yaml").read_text())
    assert overrides["exporters"]["otlp_grpc/tempo"]["endpoint"] == "tempo:4317"
    assert "otlp_grpc/tempo" in overrides["service"]["pipelines"]["traces"]["exporters"]
    assert "tempo" in compose["services"]["collector"]["depends_on"]
