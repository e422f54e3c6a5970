"""A finished scope's values and its rule in, its `ScopeResult` out: which budgets it broke, and when."""

from __future__ import annotations

from collections.abc import Mapping

from otel_budget import names
from otel_budget.config import BudgetRule
from otel_budget.names import ScopeKind
from otel_budget.normalize import shorten
from otel_budget.results import ScopeResult, Violation

__all__ = ["judge", "violations"]


def violations(
    rule: BudgetRule,
    values: Mapping[str, float],
    *,
    crossed: Mapping[str, int] | None,
    end_ns: int,
    statement: str | None,
    details: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[Violation, ...]:
    """One `Violation` per limit of `rule` that `values` exceed, in the rule's order.

    A count or time limit is dated when it was crossed (`crossed`, metric -> ns); the others, known
    only at the end, at `end_ns`. `statement` is the most repeated one, for `db.repeated_queries`;
    `details` (metric -> library, target, call site) name the untimed call or connection behind a metric.
    """
    found = []
    crossed = crossed or {}
    details = details or {}
    for metric, limit in rule.limits.items():
        actual = values.get(metric, 0)
        if actual > limit:
            found.append(
                Violation(
                    metric=metric,
                    limit=limit,
                    actual=actual,
                    rule=rule.sources.get(metric, rule.name),
                    timestamp_ns=end_ns if metric in names.END_ONLY_METRICS else crossed.get(metric, end_ns),
                    statement=statement if metric == names.DB_REPEATED_QUERIES else None,
                    details=details.get(metric),
                )
            )
    return tuple(found)


def judge(
    *,
    kind: ScopeKind,
    name: str,
    method: str | None,
    rule: BudgetRule,
    values: Mapping[str, float],
    crossed: Mapping[str, int] | None,
    end_ns: int,
    max_statement: str | None,
    trace_id: int,
    span_id: int,
    config_error: str | None = None,
    details: Mapping[str, Mapping[str, str]] | None = None,
) -> ScopeResult:
    """The `ScopeResult` of a scope that ended at `end_ns` with `values` under `rule`."""
    statement = shorten(max_statement) if max_statement else None
    return ScopeResult(
        kind=kind,
        name=name,
        method=method,
        rule=rule.name,
        values=values,
        violations=violations(rule, values, crossed=crossed, end_ns=end_ns, statement=statement, details=details),
        trace_id=trace_id,
        span_id=span_id,
        repeated_statement=statement,
        config_error=config_error,
    )
