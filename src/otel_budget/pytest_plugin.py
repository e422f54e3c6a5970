"""pytest plugin: fail tests whose requests, tasks or scopes exceed their budgets.

Active only with `--budgets FILE` or `OTEL_BUDGET_CONFIG`; otherwise it registers its options and
marker and does nothing else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

from otel_budget import names
from otel_budget._pytest_options import MARKER_HELP, add_options, budgets_file, marker_limits
from otel_budget._render import failure_message, heaviest_table, instrumentation_line, unbudgeted_warning
from otel_budget.activation import instrument_installed, set_up_tracing
from otel_budget.config import BudgetConfig, ConfigError, load_config
from otel_budget.processor import BudgetSpanProcessor
from otel_budget.results import ScopeResult
from otel_budget.settings import Settings

__all__ = ["BudgetPlugin"]

PLUGIN_NAME = "otel_budget_session"
SCOPE_GRACE_S = 1.0  # how long a test's still-open scopes are waited for after its body returns


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(trylast=True)  # after conftests that set up their own TracerProvider
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = Settings.from_env()
    path = budgets_file(config, settings)
    if path is not None and not settings.enabled:
        config.pluginmanager.register(DisabledNotice(path), PLUGIN_NAME)
    if path is None or not settings.enabled:
        return
    try:
        budgets = load_config(path)
    except ConfigError as exc:
        raise pytest.UsageError(f"otel-budget: the budgets file cannot be used:\n{exc}") from None
    processor, setup = set_up_tracing(budgets, settings)
    plugin = BudgetPlugin(budgets, processor, setup=setup, report=config.getoption("budgets_report"))
    config.pluginmanager.register(plugin, PLUGIN_NAME)


class DisabledNotice:
    """Says in the report header that budgets were asked for but the library is off."""

    def __init__(self, path: str) -> None:
        self._path = path

    def pytest_report_header(self) -> str:
        return f"otel-budget: off ({names.ENV_ENABLED}=false): {self._path} is not checked, no test fails on a budget"


class BudgetPlugin:
    """Collects the scopes finished while each test runs and fails the test on any violation.

    Args:
        budgets: the parsed budgets file.
        processor: the budget processor on the TracerProvider; if it enforces other budgets (one a
            user installed), they are replaced by `budgets` while the plugin runs.
        setup: how tracing was set up, for the report header.
        report: print the heaviest scopes of the run in the terminal summary.
    """

    def __init__(self, budgets: BudgetConfig, processor: BudgetSpanProcessor, *, setup: str, report: bool = False) -> None:
        self.budgets = budgets
        self.processor = processor
        self.setup = setup
        self.report = report
        self.results: list[tuple[str, ScopeResult]] = []  # (test node id, result) for the report
        self.unbudgeted: list[str] = []  # tests that passed their call phase with no scope finished in it
        self._collecting: list[ScopeResult] | None = None
        self._lock = threading.Lock()
        self._instrumented: list[Any] | None = None  # the instrumentors switched on, once the session starts
        self._previous_config = processor.config
        if processor.config != budgets:
            processor.config = budgets
        processor.add_listener(self._on_scope)

    # -- session ------------------------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # After every pytest_configure: Django settings are configured by now (pytest-django).
        self._instrument_once()

    def _instrument_once(self) -> None:
        if self._instrumented is None:
            self._instrumented = instrument_installed()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        for instrumentor in self._instrumented or ():
            instrumentor.uninstrument()
        self.processor.remove_listener(self._on_scope)
        self.processor.config = self._previous_config

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        self._instrument_once()  # the terminal reporter asks for the header in its own pytest_sessionstart
        return [f"otel-budget: budgets from {self.budgets.source}; {self.setup}", instrumentation_line(self._instrumented or ())]

    # -- per test -----------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        processor = self.processor
        limits = marker_limits(item)
        collected: list[ScopeResult] = []
        processor.set_overlay(limits or None)
        open_before = processor.open_scopes
        with self._lock:
            self._collecting = collected
        try:
            result = yield
        finally:
            _wait_for_scopes(processor, open_before)
            with self._lock:
                self._collecting = None
            processor.set_overlay(None)
            self.results.extend((item.nodeid, scope) for scope in collected)
        if not collected:
            self.unbudgeted.append(item.nodeid)
        over = [scope for scope in collected if scope.violations]
        if over:
            pytest.fail(failure_message(over, self.budgets, limits), pytrace=False)
        return result

    def _on_scope(self, result: ScopeResult) -> None:
        with self._lock:
            if self._collecting is not None:
                self._collecting.append(result)

    # -- report -------------------------------------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.unbudgeted:
            title, *lines = unbudgeted_warning(self.unbudgeted, self.budgets.source)
            terminalreporter.write_sep("=", title, yellow=True, bold=True)
            for line in lines:
                terminalreporter.write_line(line)
        if not self.report:
            return
        terminalreporter.write_sep("=", "otel-budget: heaviest scopes")
        for line in heaviest_table(self.results):
            terminalreporter.write_line(line)


def _wait_for_scopes(processor: BudgetSpanProcessor, open_before: int) -> None:
    """Give scopes the test opened in other threads a moment to end (a Celery worker marks a task done
    just before its span ends, so `result.get()` can return first)."""
    deadline = time.monotonic() + SCOPE_GRACE_S
    while processor.open_scopes > open_before and time.monotonic() < deadline:
        time.sleep(0.005)
