"""Fixtures for the alerting tests: the stack's services, found through the `stack` package.

Every service these tests need is started by `make stack` (`python3 stack/stack.py up`);
the tests never start their own copies, and a service that is down is a failure that says
how to bring it up, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import stack as stack_package
import yaml
from alerting_stack import ALERTS, DASHBOARD, JAEGER_URL, UP_HINT, PrometheusAPI


@pytest.fixture(scope="session")
def stack() -> ModuleType:
    return stack_package


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
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


@pytest.fixture(scope="session")
def http_get() -> Callable[[str], Any]:
    """GET a JSON document from a loopback service, bypassing any proxy settings."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(url: str) -> Any:
        with opener.open(url, timeout=10) as response:
            return json.load(response)

    return get
