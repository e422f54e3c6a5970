"""End-to-end fixtures: the real stack (`make stack`), the example shop and Jaeger's API.

The shop (gunicorn + Celery worker under `opentelemetry-instrument`) is started once per session
by examples/shop/processes.py, the same runner examples/demo.py uses. Its spans go through the
collector to Jaeger and are read back over Jaeger's HTTP API.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from shop_e2e import DATABASES, SHOP_DIR, STACK_SERVICES, ShopClient, ShopTraces, port_open, running

from jaeger_reader import JaegerReader
from processes import ShopProcesses


def _require(services: tuple[tuple[str, int], ...]) -> None:
    """Fail (never skip) when a service of the stack is down, naming it and `make stack`."""
    down = [f"{name} on 127.0.0.1:{port}" for name, port in services if not port_open(port)]
    if down:
        pytest.fail(
            "the end-to-end tests need the local stack, and these services are not reachable: "
            + "; ".join(down)
            + ".\nStart them with `make stack` (python3 stack/stack.py up); `make stack-status` shows the state.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def databases() -> None:
    """PostgreSQL and FerretDB are up."""
    _require(DATABASES)


@pytest.fixture(scope="session")
def stack_services() -> None:
    """Every service of the stack the shop needs is up, and Jaeger's API answers."""
    _require(STACK_SERVICES)
    try:
        JaegerReader().services()
    except OSError as exc:
        pytest.fail(
            f"Jaeger's query API http://127.0.0.1:16686/api/services does not answer ({exc}); "
            "start the stack with `make stack`, `make stack-status` shows the state",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def shop_database(databases: None) -> None:
    """Migrate and seed the shop's PostgreSQL database and MongoDB documents (idempotent)."""
    done = subprocess.run(
        [sys.executable, str(SHOP_DIR / "manage.py"), "setup_shop"],
        cwd=SHOP_DIR, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"manage.py setup_shop failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def shop(stack_services: None, shop_database: None) -> Iterator[ShopClient]:
    """gunicorn (2 gthread workers) and a Celery worker (prefork, 2), exporting every 200 ms."""
    with running(ShopProcesses(bsp_delay_ms=200)) as client:
        yield client


@pytest.fixture(scope="session")
def jaeger(stack_services: None) -> JaegerReader:
    return JaegerReader()


@pytest.fixture(scope="session")
def traces(jaeger: JaegerReader) -> ShopTraces:
    return ShopTraces(jaeger)


@pytest.fixture(scope="session")
def task_results(stack_services: None) -> Callable[[str], dict[str, Any]]:
    """A Celery task's return value, read from the shop's result backend (Redis db 1)."""
    import redis

    backend = redis.Redis(host="127.0.0.1", port=6379, db=1)

    def result(task_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            raw = backend.get(f"celery-task-meta-{task_id}")
            if raw is not None:
                meta = json.loads(raw)
                assert meta["status"] == "SUCCESS", f"task {task_id}: {meta}"
                return meta["result"]  # type: ignore[no-any-return]
            time.sleep(0.1)
        raise AssertionError(f"task {task_id}: no result in Redis db 1 after {timeout_s:.0f} s (is the worker up?)")

    return result
