"""pytest plugin: fail tests whose requests, tasks or scopes exceed their budgets.

Active only with `--budgets FILE` or `OTEL_BUDGET_CONFIG`; otherwise it registers its options and
marker and does nothing else.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from otel_budget import names
from otel_budget.activation import install, is_enabled
from otel_budget.config import BudgetConfig, BudgetRule, ConfigError, load_config, validate_limits
from otel_budget.processor import BudgetSpanProcessor
from otel_budget.results import ScopeResult

__all__ = ["BudgetPlugin", "MarkedBudgets"]

logger = logging.getLogger(__name__)

MARKER = "budget"
PLUGIN_NAME = "otel_budget_session"
REPORT_ROWS = 15
SCOPE_GRACE_S = 1.0  # how long a test's still-open scopes are waited for after its body returns

# Instrumentations the plugin switches on when it sets up tracing itself: (module, class).
INSTRUMENTORS = (
    ("opentelemetry.instrumentation.django", "DjangoInstrumentor"),
    ("opentelemetry.instrumentation.psycopg2", "Psycopg2Instrumentor"),
    ("opentelemetry.instrumentation.psycopg", "PsycopgInstrumentor"),
    ("opentelemetry.instrumentation.pymongo", "PymongoInstrumentor"),
    ("opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
    ("opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
    ("opentelemetry.instrumentation.urllib", "URLLibInstrumentor"),
    ("opentelemetry.instrumentation.celery", "CeleryInstrumentor"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("otel-budget", "budgets for requests, tasks and scopes (otel-budget)")
    group.addoption(
        "--budgets",
        metavar="FILE",
        default=None,
        help="budgets TOML file: fail every test whose Django test-client requests, Celery tasks or "
        "budget_scope blocks exceed it (default: $OTEL_BUDGET_CONFIG; neither: plugin off).",
    )
    group.addoption(
        "--budgets-report",
        action="store_true",
        default=False,
        help="print the heaviest scopes of the run at the end (needs --budgets or $OTEL_BUDGET_CONFIG).",
    )


@pytest.hookimpl(trylast=True)  # after conftests that set up their own TracerProvider
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "budget(limits=None, **metric_limits): budgets for every request, task and scope in this test, "
        "e.g. budget(db_queries=3) or budget({'db.repeated_queries': 10}); they replace the file's "
        "limits they name. Only used with --budgets / OTEL_BUDGET_CONFIG.",
    )
    path = config.getoption("budgets") or os.environ.get(names.ENV_CONFIG) or None
    if path is None:
        if config.getoption("budgets_report"):
            raise pytest.UsageError("--budgets-report needs a budgets file: --budgets FILE or OTEL_BUDGET_CONFIG")
        return
    if not is_enabled():
        return
    try:
        budgets = load_config(path)
    except ConfigError as exc:
        raise pytest.UsageError(f"otel-budget: the budgets file cannot be used:\n{exc}") from None
    processor, setup = _set_up_tracing(path)
    plugin = BudgetPlugin(budgets, processor, setup=setup, report=config.getoption("budgets_report"))
    config.pluginmanager.register(plugin, PLUGIN_NAME)


class BudgetPlugin:
    """Collects the scopes finished while each test runs and fails the test on any violation.

    Args:
        budgets: the parsed budgets file.
        processor: the budget processor on the TracerProvider; its budgets are replaced while the plugin runs.
        setup: how tracing was set up, for the report header.
        report: print the heaviest scopes of the run in the terminal summary.
    """

    def __init__(self, budgets: BudgetConfig, processor: BudgetSpanProcessor, *, setup: str, report: bool = False) -> None:
        self.budgets = budgets
        self.processor = processor
        self.setup = setup
        self.report = report
        self.results: list[tuple[str, ScopeResult]] = []  # (test node id, result) for the report
        self._collecting: list[ScopeResult] | None = None
        self._lock = threading.Lock()
        self._instrumented: list[Any] = []
        self._previous_config = processor.config
        processor.config = budgets
        processor.add_listener(self._on_scope)

    # -- session ------------------------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # After every pytest_configure: Django settings are configured by now (pytest-django).
        self._instrumented = _instrument_installed()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        for instrumentor in self._instrumented:
            instrumentor.uninstrument()
        self.processor.remove_listener(self._on_scope)
        self.processor.config = self._previous_config

    def pytest_report_header(self, config: pytest.Config) -> str:
        return f"otel-budget: budgets from {self.budgets.source}; {self.setup}"

    # -- per test -----------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        processor = self.processor
        marker_limits = _marker_limits(item)
        collected: list[ScopeResult] = []
        if marker_limits:
            processor.config = _with_code_limits(self.budgets, marker_limits)
        open_before = processor.open_scopes
        with self._lock:
            self._collecting = collected
        try:
            result = yield
        finally:
            _wait_for_scopes(processor, open_before)
            with self._lock:
                self._collecting = None
            processor.config = self.budgets
            self.results.extend((item.nodeid, scope) for scope in collected)
        over = [scope for scope in collected if scope.violations]
        if over:
            pytest.fail(failure_message(over, self.budgets.source, marker_limits), pytrace=False)
        return result

    def _on_scope(self, result: ScopeResult) -> None:
        with self._lock:
            if self._collecting is not None:
                self._collecting.append(result)

    # -- report -------------------------------------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
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


def _marker_limits(item: pytest.Item) -> dict[str, float]:
    """The `@pytest.mark.budget` limits of `item`, the closest marker winning; fails the test on a bad one."""
    limits: dict[str, float] = {}
    for marker in reversed(list(item.iter_markers(MARKER))):
        if len(marker.args) > 1 or (marker.args and not isinstance(marker.args[0], Mapping)):
            pytest.fail(f"@pytest.mark.budget takes one dict and/or keyword limits, got {marker.args!r}", pytrace=False)
        given = {**(marker.args[0] if marker.args else {}), **marker.kwargs}
        try:
            limits.update(validate_limits(given, source="@pytest.mark.budget"))
        except ConfigError as exc:
            pytest.fail(str(exc), pytrace=False)
    return limits


@dataclass(frozen=True)
class MarkedBudgets(BudgetConfig):
    """A budgets file with a test's `@pytest.mark.budget` limits on top of every rule, as rule `code`."""

    marker_limits: Mapping[str, float] = field(default_factory=dict)

    def rule_for(self, kind: str, name: str | None, method: str | None = None) -> BudgetRule:
        return super().rule_for(kind, name, method).overridden(names.RULE_CODE, self.marker_limits)


def _with_code_limits(budgets: BudgetConfig, limits: Mapping[str, float]) -> BudgetConfig:
    return MarkedBudgets(
        source=budgets.source, sections=budgets.sections, routes=budgets.routes, tasks=budgets.tasks, marker_limits=limits
    )


def _set_up_tracing(path: str) -> tuple[BudgetSpanProcessor, str]:
    """Reuse the SDK TracerProvider if one is configured, else set one up; return our processor on it."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "add_span_processor"):
        setup = "reusing the configured TracerProvider"
    else:
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        setup = "own TracerProvider (no exporter)"
    processor = install(provider, config_path=path)
    if processor is None:  # pragma: no cover - install() only declines a non-SDK provider or when disabled
        raise pytest.UsageError("otel-budget: could not add the budget processor to the TracerProvider")
    return processor, setup


def _instrument_installed() -> list[Any]:
    """Switch on the instrumentations whose library is installed and not yet instrumented."""
    try:
        from opentelemetry.instrumentation.dependencies import DependencyConflictError
    except ImportError:  # no instrumentation package installed (otel-budget without extras)
        return []

    done = []
    for module_name, class_name in INSTRUMENTORS:
        if module_name.endswith(".django") and not _django_configured():
            continue
        try:
            instrumentor = getattr(importlib.import_module(module_name), class_name)()
        except ImportError:
            continue
        if instrumentor.is_instrumented_by_opentelemetry:
            continue
        try:
            instrumentor.instrument(raise_exception_on_conflict=True)
        except DependencyConflictError:
            continue  # the library itself is not installed (or not a supported version)
        except Exception:
            logger.exception("otel-budget: %s failed; not instrumented", class_name)
            continue
        done.append(instrumentor)
    return done


def _django_configured() -> bool:
    try:
        from django.conf import settings
    except ImportError:
        return False
    return bool(settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE"))


# -- messages -----------------------------------------------------------------------------------------
def failure_message(over: Iterable[ScopeResult], source: str, marker_limits: Mapping[str, float]) -> str:
    """What a test that broke its budgets shows: every scope, metric, limit and actual value."""
    over = list(over)
    first, *_ = over
    worst = first.violations[0]
    more = sum(len(scope.violations) for scope in over) - 1
    lines = [
        f"otel-budget: {first.label}: {worst.metric} {_number(worst.actual)} > limit {_number(worst.limit)}"
        + (f" (and {more} more)" if more else ""),
        f"{len(over)} scope(s) over budget in this test; budgets: {source}",
    ]
    if marker_limits:
        lines.append(f"this test's @pytest.mark.budget: {_keywords(marker_limits)}")
    raise_to: dict[str, float] = {}
    for scope in over:
        lines.append("")
        lines.append(f"{scope.label}  (trace {scope.trace_id_hex})")
        for violation in scope.violations:
            lines.append(
                f"  {violation.metric}: {_number(violation.actual)} > limit {_number(violation.limit)}"
                f"  [rule {violation.rule}]"
            )
            if violation.statement:
                lines.append(f"    repeated {_number(violation.actual)} times: {violation.statement}")
            raise_to[violation.metric] = max(raise_to.get(violation.metric, 0), violation.actual)
    lines.append("")
    lines.append(f"Fix the code, or raise the limit for this test: @pytest.mark.budget({_keywords(raise_to)})")
    return "\n".join(lines)


def heaviest_table(results: Iterable[tuple[str, ScopeResult]], rows: int = REPORT_ROWS) -> list[str]:
    """The heaviest scopes by label (route, task, scope name): most DB queries first, then longest."""
    worst: dict[str, tuple[str, ScopeResult]] = {}
    runs: dict[str, int] = {}
    over: dict[str, int] = {}
    for nodeid, result in results:
        label = result.label
        runs[label] = runs.get(label, 0) + 1
        over[label] = over.get(label, 0) + bool(result.violations)
        if label not in worst or _weight(result) > _weight(worst[label][1]):
            worst[label] = (nodeid, result)
    if not worst:
        return ["no requests, tasks or scopes ran inside a test"]
    header = ("scope", "runs", "over", "db.queries", "repeated", "db ms", "duration ms", "heaviest in test")
    table = [header]
    for label, (nodeid, result) in sorted(worst.items(), key=lambda kv: _weight(kv[1][1]), reverse=True)[:rows]:
        values = result.values
        table.append(
            (
                label,
                str(runs[label]),
                str(over[label]),
                _number(values.get(names.DB_QUERIES, 0)),
                _number(values.get(names.DB_REPEATED_QUERIES, 0)),
                _number(values.get(names.DB_DURATION_MS, 0)),
                _number(values.get(names.DURATION_MS, 0)),
                nodeid,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [cell.ljust(w) if i in (0, 7) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    if len(worst) > rows:
        lines.append(f"... and {len(worst) - rows} lighter scope(s)")
    return lines


def _weight(result: ScopeResult) -> tuple[float, float]:
    return (result.values.get(names.DB_QUERIES, 0), result.values.get(names.DURATION_MS, 0))


def _keywords(limits: Mapping[str, float]) -> str:
    return ", ".join(f"{metric.replace('.', '_')}={_number(value)}" for metric, value in limits.items())


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
