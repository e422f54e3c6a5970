"""What the pytest plugin prints: a test's budget failure and the run's heaviest scopes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from otel_budget import names
from otel_budget._table import number, render_table
from otel_budget.results import ScopeResult

__all__ = ["REPORT_ROWS", "failure_message", "heaviest_table"]

REPORT_ROWS = 15
_HEAVIEST_HEADER = ("scope", "runs", "over", "db.queries", "repeated", "db ms", "duration ms", "heaviest in test")


def failure_message(over: Iterable[ScopeResult], source: str, marker_limits: Mapping[str, float]) -> str:
    """What a test that broke its budgets shows: every scope, metric, limit and actual value."""
    over = list(over)
    first, *_ = over
    worst = first.violations[0]
    more = sum(len(scope.violations) for scope in over) - 1
    lines = [
        f"otel-budget: {first.label}: {worst.metric} {number(worst.actual)} > limit {number(worst.limit)}"
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
                f"  {violation.metric}: {number(violation.actual)} > limit {number(violation.limit)}"
                f"  [rule {violation.rule}]"
            )
            if violation.statement:
                lines.append(f"    repeated {number(violation.actual)} times: {violation.statement}")
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
