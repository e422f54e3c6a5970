"""Fixtures of the reliability suite: the real stack, the shop's processes, and the figures each test prints.

Every test records its figure with the `figure` fixture: printed at once (visible with `-s`), kept as a
junit property (`record_property`) and repeated in a section of pytest's terminal summary, so the
`make test` log shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import reliability_kit as kit

FIGURES = pytest.StashKey[list[tuple[str, str]]]()
# What the suite needs from `make stack`. A service that is down fails the test, never skips it.
STACK_SERVICES = ("postgres", "redis", "ferretdb", "collector", "jaeger")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if not figures:
        return
    terminalreporter.section("otel-budget reliability figures")
    for test, text in figures:
        terminalreporter.write_line(f"{test}: {text}")


@pytest.fixture
def figure(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> Callable[[str, str], None]:
    """`figure(label, text)`: print a measured figure and keep it for the summary."""

    def record(label: str, text: str) -> None:
        line = f"{label}: {text}"
        print(f"\n[figure] {request.node.name}: {line}", flush=True)
        request.config.stash[FIGURES].append((request.node.name, line))
        record_property(label, text)

    return record


@pytest.fixture(scope="session")
def stack_services() -> None:
    """The stack's services are healthy (same health checks as `make stack`); fail clearly if not."""
    down = kit.unhealthy(STACK_SERVICES)
    if down:
        pytest.fail(
            "the reliability suite needs the service stack; not healthy:\n  " + "\n  ".join(down)
            + "\nstart it with `make stack` (python3 stack/stack.py up)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def shop_db(stack_services: None) -> None:
    kit.ensure_shop_database()


@pytest.fixture(scope="session")
def reliability_shop(shop_db: None) -> Iterator[tuple[kit.AppProcess, kit.AppProcess, str]]:
    """The shop plus the reliability app: gunicorn (gthread, 3 workers, --preload) and a Celery
    prefork worker (3 processes), with injected faults armed and MongoDB statements captured.

    Both parents hold an open scope, an open span and a read RSS descriptor when they fork.
    Yields (web, worker, service name); both export under that service name.
    """
    service = kit.service_name("shop")
    env = kit.app_env(
        service,
        RELIABILITY_FAULTS="1",
        RELIABILITY_CAPTURE_STATEMENT="1",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="pymongo",  # instrumented by the app, with capture_statement
        RELIABILITY_STATE_AT_FORK="1",
        # gRPC channels do not survive fork; with --preload the exporter is created before it.
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{kit.HOST}:4318",
    )
    port = kit.free_port()
    web = kit.AppProcess("web", kit.gunicorn_argv(port, workers=3, threads=8, preload=True), env, port)
    worker = kit.AppProcess("worker", kit.celery_argv(3), env)
    try:
        web.start()
        worker.start()
        yield web, worker, service
    finally:
        worker.stop()
        web.stop()
