"""Fixtures of the reliability suite: the real stack, the shop's processes, and the figures each test prints.

Every test records its figure with the `figure` fixture: printed at once (visible with `-s`), kept as a
junit property (`record_property`) and repeated in a section of pytest's terminal summary, so the
`make test` log shows them.
"""

from __future__ import annotations

from collections.abc import Callable

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


@pytest.fixture
def reliability_shop(shop_db: None) -> tuple[kit.AppProcess, kit.AppProcess, str]:
    """(gunicorn, Celery worker, their service name) of the shared reliability shop."""
    return kit.SharedShop.get()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if nextitem is None or kit.HERE not in nextitem.path.parents:
        kit.SharedShop.stop()


def pytest_sessionfinish(session: pytest.Session) -> None:
    kit.SharedShop.stop()
