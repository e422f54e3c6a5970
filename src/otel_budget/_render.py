"""What the pytest plugin prints: a test's budget failure and the run's heaviest scopes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from otel_budget import names
from otel_budget._table import number, render_table
from otel_budget.activation import django_unconfigured
from otel_budget.config import BudgetConfig
from otel_budget.names import ScopeKind
from otel_budget.results import ScopeResult, Violation

__all__ = ["REPORT_ROWS", "failure_message", "heaviest_table", "instrumentation_line", "unbudgeted_warning"]

REPORT_ROWS = 15
UNBUDGETED_NAMES = 20  # tests named in the no-scope warning; the rest are counted
_KIND_NOUN = {ScopeKind.HTTP: "view", ScopeKind.CELERY: "task", ScopeKind.SCOPE: "scope"}
_HEAVIEST_HEADER = ("scope", "runs", "over", "db.queries", "repeated", "db ms", "duration ms", "heaviest in test")


def failure_message(over: Iterable[ScopeResult], budgets: BudgetConfig, marker_limits: Mapping[str, float]) -> str:
    """What a test that broke its budgets shows: every scope, metric, limit, actual value, and where
    each limit is set (the file's section or override, the test's marker, or code)."""
    over = list(over)
    first, *_ = over
    worst = first.violations[0]
    more = sum(len(scope.violations) for scope in over) - 1
    lines = [
        f"otel-budget: {first.label}: {worst.metric} {number(worst.actual)} > limit {number(worst.limit)}"
        + (f" (and {more} more)" if more else ""),
        f"{len(over)} scope(s) over budget in this test; budgets: {budgets.source}",
    ]
    if marker_limits:
        lines.append(f"this test's @pytest.mark.budget: {_keywords(marker_limits)}")
    raise_to: dict[str, float] = {}  # limits a marker can raise
    in_code: dict[str, float] = {}  # limits set in code, which win over any marker
    for scope in over:
        lines.append("")
        lines.append(f"{scope.label}  (trace {scope.trace_id_hex})")
        for violation in scope.violations:
            lines.append(
                f"  {violation.metric}: {number(violation.actual)} > limit {number(violation.limit)}"
                f"  [rule {violation.rule}]"
            )
            if violation.statement and violation.metric == names.DB_REPEATED_QUERIES:
                lines.append(f"    repeated {number(violation.actual)} times: {violation.statement}")
            elif violation.statement:  # db.repeated_duration_ms: the time of the most repeated statement
                lines.append(f"    the most repeated statement: {violation.statement}")
            from_code = _set_in_code(violation, marker_limits)
            lines.append(f"    {_where(violation, scope, budgets, from_code)}")
            target = in_code if from_code else raise_to
            target[violation.metric] = max(target.get(violation.metric, 0), violation.actual)
    lines.append("")
    if raise_to:
        lines.append(f"Fix the code, or raise the limit for this test: @pytest.mark.budget({_keywords(raise_to)})")
    if in_code:
        lines.append(
            f"Fix the code, or raise the limit where the code sets it: {_keywords(in_code)} "
            "(rule code: in-code limits win over @pytest.mark.budget, so a marker cannot raise them)"
        )
    return "\n".join(lines)


def _set_in_code(violation: Violation, marker_limits: Mapping[str, float]) -> bool:
    """Whether the limit `violation` broke comes from code (`@budget`, `budget_scope`, `set_budget`).

    The marker's limits also count as rule `code`; in-code limits win over them, so a `code` limit
    that differs from the marker's (or that the marker does not name) was set in code.
    """
    return violation.rule == names.RULE_CODE and marker_limits.get(violation.metric) != violation.limit


def _where(violation: Violation, scope: ScopeResult, budgets: BudgetConfig, from_code: bool) -> str:
    """Where the broken limit is set, so that the reader raises it in the right place."""
    rule = violation.rule
    if from_code:
        how = "budget_scope(...) or set_budget()" if scope.kind == ScopeKind.SCOPE else "@budget(...) or set_budget()"
        return f"limit set in code for this {_KIND_NOUN[scope.kind]} ({how}); @pytest.mark.budget cannot raise it"
    if rule == names.RULE_CODE:
        return "limit from this test's @pytest.mark.budget"
    for prefix, table in ((names.ROUTE_RULE_PREFIX, "[[http.route]]"), (names.TASK_RULE_PREFIX, "[[celery.task]]")):
        if rule.startswith(prefix):
            return f'limit from {budgets.source}: {table} match = "{rule[len(prefix):]}"'
    if rule not in budgets.sections:
        return f"limit: the built-in default ({budgets.source} has no [{rule}] section)"
    return f"limit from {budgets.source}: [{rule}]"


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
    table = []
    for label, (nodeid, result) in sorted(worst.items(), key=lambda kv: _weight(kv[1][1]), reverse=True)[:rows]:
        values = result.values
        table.append(
            (
                label,
                str(runs[label]),
                str(over[label]),
                number(values.get(names.DB_QUERIES, 0)),
                number(values.get(names.DB_REPEATED_QUERIES, 0)),
                number(values.get(names.DB_DURATION_MS, 0)),
                number(values.get(names.DURATION_MS, 0)),
                nodeid,
            )
        )
    lines = render_table(_HEAVIEST_HEADER, table, left_aligned={0, 7})
    if len(worst) > rows:
        lines.append(f"... and {len(worst) - rows} lighter scope(s)")
    return lines


def _weight(result: ScopeResult) -> tuple[float, float]:
    return (result.values.get(names.DB_QUERIES, 0), result.values.get(names.DURATION_MS, 0))


def _keywords(limits: Mapping[str, float]) -> str:
    return ", ".join(f"{metric.replace('.', '_')}={number(value)}" for metric, value in limits.items())


def instrumentation_line(instrumentors: Sequence[object]) -> str:
    """The report header's second line: which instrumentations the plugin switched on, and Django's state."""
    switched = sorted(type(instrumentor).__module__.rsplit(".", 1)[-1] for instrumentor in instrumentors)
    line = f"otel-budget: instrumentations switched on: {', '.join(switched) or 'none'}"
    if "django" not in switched and django_unconfigured():
        line += (
            "; not Django: its settings are not configured, so test-client requests are not budgeted "
            "(install pytest-django and set DJANGO_SETTINGS_MODULE)"
        )
    return line


def unbudgeted_warning(nodeids: Sequence[str], source: str) -> list[str]:
    """The terminal summary's warning: a title, then the tests in which no request, task or scope ran."""
    lines = [
        f"otel-budget: {len(nodeids)} test(s) ran no request, task or scope: not checked against {source}",
        "A Django test-client request is budgeted only with Django's instrumentation on (pytest-django "
        "configures the settings it needs), a Celery task only when it runs in the test's process; wrap "
        "anything else in budget_scope(...). See the header for the instrumentations switched on.",
    ]
    lines += [f"  {nodeid}" for nodeid in nodeids[:UNBUDGETED_NAMES]]
    if len(nodeids) > UNBUDGETED_NAMES:
        lines.append(f"  ... and {len(nodeids) - UNBUDGETED_NAMES} more")
    return lines
