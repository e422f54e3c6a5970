"""Fixtures for the alerting tests: the stack's services, found through stack/stack.py.

Every service these tests need is started by `make stack` (`python3 stack/stack.py up`);
the tests never start their own copies, and a service that is down is a failure that says
how to bring it up, never a skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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

sys.path.insert(0, str(HERE))  # budget_traffic


def load_stack_module() -> ModuleType:
    """stack/stack.py as a module: the code `make stack` runs, so paths and health checks match."""
    spec = importlib.util.spec_from_file_location("otel_budget_stack", REPO / "stack" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def stack() -> ModuleType:
    return load_stack_module()


@pytest.fixture(scope="session")
def collector_bin(stack: ModuleType) -> str:
    path = str(stack.collector_bin())
    if not os.access(path, os.X_OK):
        pytest.fail(f"the collector built from collector-config/builder-config.yaml is missing ({path}); {UP_HINT}")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool (Debian package `prometheus`) is not installed; {UP_HINT}")
    return path


def require_healthy(stack: ModuleType, name: str) -> None:
    reason = stack.BY_NAME[name].health()
    if reason is not None:
        pytest.fail(f"{name} ({stack.BY_NAME[name].address}) is not healthy: {reason}; {UP_HINT}")


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
        import yaml

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


@pytest.fixture(scope="session")
def prometheus(stack: ModuleType) -> PrometheusAPI:
    require_healthy(stack, "prometheus")
    return PrometheusAPI()


@pytest.fixture(scope="session")
def collector(stack: ModuleType) -> None:
    require_healthy(stack, "collector")


@pytest.fixture(scope="session")
def jaeger(stack: ModuleType) -> str:
    require_healthy(stack, "jaeger")
    return JAEGER_URL


@pytest.fixture(scope="session")
def stack_dir(stack: ModuleType) -> Path:
    return Path(stack.STACK_DIR)


@pytest.fixture(scope="session")
def alert_rules() -> list[dict[str, Any]]:
    import yaml

    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


@pytest.fixture(scope="session")
def http_get() -> Iterator[Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(url: str) -> Any:
        with opener.open(url, timeout=10) as response:
            return json.load(response)

    yield get
