"""The pytest plugin's options and `@pytest.mark.budget` marker: declared and read here."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from otel_budget.config import ConfigError, validate_limits
from otel_budget.settings import Settings

__all__ = ["MARKER", "MARKER_HELP", "add_options", "budgets_file", "marker_limits"]

MARKER = "budget"
MARKER_HELP = (
    "budget(limits=None, **metric_limits): budgets for every request, task and scope in this test, "
    "e.g. budget(db_queries=3) or budget({'db.repeated_queries': 10}); they replace the file's "
    "limits they name. Only used with --budgets / OTEL_BUDGET_CONFIG."
)


def add_options(parser: pytest.Parser) -> None:
    """`--budgets FILE` and `--budgets-report`."""
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


def budgets_file(config: pytest.Config, settings: Settings) -> str | None:
    """`--budgets`, else `OTEL_BUDGET_CONFIG`; None: the plugin stays off.

    Raises:
        pytest.UsageError: `--budgets-report` without a budgets file.
    """
    path: str | None = config.getoption("budgets") or settings.config_path
    if path is None and config.getoption("budgets_report"):
        raise pytest.UsageError("--budgets-report needs a budgets file: --budgets FILE or OTEL_BUDGET_CONFIG")
    return path


def marker_limits(item: pytest.Item) -> dict[str, float]:
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
