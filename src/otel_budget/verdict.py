"""A finished scope's values and its rule in, its `ScopeResult` out: which budgets it broke, and when."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from otel_budget import names
from otel_budget.config import BudgetRule
from otel_budget.names import ScopeKind
from otel_budget.normalize import shorten
from otel_budget.results import ScopeResult, Violation, finished

__all__ = ["judge", "judge_killed", "violations"]


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
    only at the end, at `end_ns`. `statement` is the most repeated one, for `db.repeated_queries`
    and `db.repeated_duration_ms`;
    `details` (metric -> library, target, call site) name the untimed call or connection behind a metric.
    """
    limits = rule.limits
    over = [metric for metric, limit in limits.items() if values.get(metric, 0) > limit]
    if not over:  # the usual scope: nothing more to build
        return ()
    crossed = crossed or {}
    details = details or {}
    return tuple(
        Violation(
            metric=metric,
            limit=limits[metric],
            actual=values.get(metric, 0),
            rule=rule.sources.get(metric, rule.name),
            timestamp_ns=end_ns if metric in names.END_ONLY_METRICS else crossed.get(metric, end_ns),
            statement=statement if metric in names.STATEMENT_METRICS else None,
            details=details.get(metric),
        )
        for metric in over
    )


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
    found = violations(rule, values, crossed=crossed, end_ns=end_ns, statement=statement, details=details)
    return finished(kind, name, method, rule.name, values, found, trace_id, span_id, statement, config_error)


def judge_killed(
    *,
    name: str,
    rule: BudgetRule,
    duration_ms: float,
    time_limit_ms: float | None,
    end_ns: int,
    trace_id: int,
    span_id: int,
    config_error: str | None = None,
) -> ScopeResult:
    """The `ScopeResult` of a Celery task killed after `duration_ms` (`budget.killed`).

    Only its duration is known (what it counted died with its process), and it always breaks its
    `duration_ms` budget: against the rule's limit when it has one (even when the kill came first,
    a hard time limit below the budget), else against the hard time limit that killed it, else 0.
    """
    values = {names.DURATION_MS: duration_ms}
    result = judge(
        kind=ScopeKind.CELERY,
        name=name,
        method=None,
        rule=rule,
        values=values,
        crossed=None,
        end_ns=end_ns,
        max_statement=None,
        trace_id=trace_id,
        span_id=span_id,
        config_error=config_error,
    )
    found = result.violations
    if not any(violation.metric == names.DURATION_MS for violation in found):
        limit = rule.limits.get(names.DURATION_MS)
        killed = Violation(
            metric=names.DURATION_MS,
            limit=limit if limit is not None else time_limit_ms or 0.0,
            actual=duration_ms,
            rule=rule.sources.get(names.DURATION_MS, rule.name),
            timestamp_ns=end_ns,
        )
        found = (killed, *found)
    return dataclasses.replace(result, violations=found, killed=True)
