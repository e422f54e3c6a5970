"""The pytest plugin's options and `@pytest.mark.budget` marker: declared and read here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

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
    parser.addini(
        "budgets",
        "otel-budget: budgets TOML file, relative to this ini file (--budgets wins; then $OTEL_BUDGET_CONFIG)",
        default=None,
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
    path: str | None = config.getoption("budgets")
    if path is not None:
        _refuse_moved_rootdir(config, path)
    else:
        path = _ini_budgets(config) or settings.config_path
    if path is None and config.getoption("budgets_report"):
        raise pytest.UsageError(
            "--budgets-report needs a budgets file: --budgets FILE, `budgets =` in the pytest ini file, or OTEL_BUDGET_CONFIG"
        )
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
            problem = str(exc)
        else:
            continue
        pytest.fail(problem, pytrace=False)  # outside `except`: the message once, not again as its cause
    return limits


def _ini_budgets(config: pytest.Config) -> str | None:
    value = config.getini("budgets")
    if not value:
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return os.path.normpath(base / str(value))


def _refuse_moved_rootdir(config: pytest.Config, path: str) -> None:
    """`--budgets FILE` (two words) outside the project: pytest took FILE for a test path.

    pytest picks its rootdir and ini file before it loads plugins, so it does not yet know that
    `--budgets` takes a value and counts FILE among the test paths: the search for the ini file
    starts above both FILE and the current directory, and misses the project's own.

    Raises:
        pytest.UsageError: an ini file between the current directory and that start was skipped.
    """
    args = [str(a) for a in config.invocation_params.args]
    separate = any(a == "--budgets" and args[i + 1 : i + 2] == [path] for i, a in enumerate(args))
    if not separate or any(a == "--rootdir" or a.startswith("--rootdir=") for a in args):
        return
    here = config.invocation_params.dir.resolve()
    start = Path(os.path.commonpath([here, (here / path).resolve()]))
    skipped = next((d for d in (here, *here.parents) if d != start and start in d.parents and _has_pytest_ini(d)), None)
    if skipped is None or (config.inipath is not None and config.inipath.parent.resolve() == skipped):
        return
    raise pytest.UsageError(
        f"otel-budget: pytest read `--budgets {path}` before otel-budget's options were known and took {path} "
        f"for a test path, so it looked for its ini file from {start} and did not read the one in {skipped} "
        f"(rootdir {config.rootpath}). Write --budgets={path} (one word), or set `budgets = {path}` in that ini file."
    )


_INI_SECTIONS = {"pytest.ini": "", ".pytest.ini": "", "pyproject.toml": "[tool.pytest", "tox.ini": "[pytest]", "setup.cfg": "[tool:pytest]"}


def _has_pytest_ini(directory: Path) -> bool:
    for name, section in _INI_SECTIONS.items():
        try:
            text = (directory / name).read_text(encoding="utf-8", errors="replace") if section else ""
        except OSError:
            continue
        if not section and (directory / name).is_file() or section and section in text:
            return True
    return False
