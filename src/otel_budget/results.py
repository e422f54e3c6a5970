"""What a finished scope cost and which budgets it broke: plain data, for listeners, tests and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ScopeResult", "Violation"]


@dataclass(frozen=True)
class Violation:
    """One exceeded budget: a `budget.exceeded` event."""

    metric: str
    limit: float
    actual: float
    rule: str
    timestamp_ns: int
    statement: str | None = None

    def describe(self) -> str:
        text = f"{self.metric} = {_fmt(self.actual)} > limit {_fmt(self.limit)} (rule {self.rule})"
        if self.statement:
            text += f"\n      statement: {self.statement}"
        return text


@dataclass(frozen=True)
class ScopeResult:
    """The tally of one finished scope (HTTP request, Celery task or explicit scope)."""

    kind: str  # "http", "celery" or "scope"
    name: str  # http.route (or the span name while unresolved), task name, or scope name
    method: str | None
    rule: str
    values: Mapping[str, float]
    violations: tuple[Violation, ...]
    trace_id: int
    span_id: int
    repeated_statement: str | None = None

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def label(self) -> str:
        """`GET orders/<int:pk>/`, `task shop.tasks.rebuild`, `scope nightly-import`."""
        if self.kind == "http":
            return f"{self.method or ''} {self.name}".strip()
        return f"{'task' if self.kind == 'celery' else 'scope'} {self.name}"

    def describe(self) -> str:
        lines = [f"{self.label}: {len(self.violations)} budget(s) exceeded (trace {self.trace_id_hex})"]
        lines += [f"  - {violation.describe()}" for violation in self.violations]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"
