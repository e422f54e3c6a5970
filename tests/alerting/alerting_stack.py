"""Paths and the Prometheus API client shared by the alerting tests (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ALERTS = REPO / "dashboards" / "alerts.yml"
ALERTS_TEST = REPO / "dashboards" / "alerts.test.yml"
DASHBOARD = REPO / "dashboards" / "grafana" / "otel-budget.json"
COMPOSE = REPO / "dashboards" / "compose.yaml"
COLLECTOR_CONFIG = REPO / "collector-config" / "config.yaml"
PROMETHEUS_URL = "http://127.0.0.1:9090"
JAEGER_URL = "http://127.0.0.1:16686"
UP_HINT = "start it with `make stack` (python3 stack/stack.py up; status: python3 stack/stack.py status)"


class PrometheusAPI:
    """The stack's Prometheus HTTP API, the few calls the tests make."""

    def __init__(self, url: str = PROMETHEUS_URL) -> None:
        self.url = url
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with self._opener.open(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        try:
            data = self.get("/api/v1/query", query=promql)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Prometheus rejected {promql!r}: {exc.read().decode()}") from None
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["alerts"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/rules")["groups"])

    def reload(self) -> None:
        request = urllib.request.Request(f"{self.url}/-/reload", data=b"", method="POST")
        with self._opener.open(request, timeout=30) as response:
            assert response.status == 200

    def global_interval(self, key: str) -> float:
        """`scrape_interval` / `evaluation_interval` of the running configuration, in seconds."""
        config = yaml.safe_load(self.get("/api/v1/status/config")["yaml"])
        return parse_duration(config["global"][key])

    def wait_for(self, promql: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


def parse_duration(text: str) -> float:
    """A Prometheus duration with one unit (`5s`, `10m`, `1h`) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise ValueError(f"unsupported duration {text!r}")
