"""What a finished scope cost and which budgets it broke: plain data, for listeners, tests and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from otel_budget import names
from otel_budget.names import ScopeKind

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
    # For an untimed call or connection: `library`, `target` (host:port) and `call_site` (file:line); for
    # `memory.growth_mb` in a studied run, `memory.top` (its top allocation sites).
    details: Mapping[str, str] | None = None

    def describe(self) -> str:
        text = f"{self.metric} = {_fmt(self.actual)} > limit {_fmt(self.limit)} (rule {self.rule})"
        if self.statement:
            text += f"\n      statement: {self.statement}"
        if self.details:
            text += "\n      " + ", ".join(f"{key}: {value}" for key, value in self.details.items())
        return text


@dataclass(frozen=True)
class ScopeResult:
    """The tally of one finished scope (HTTP request, Celery task or explicit scope).

    The processor makes one per scope for its listeners and metrics; `spanformat.decode` makes the same
    from an exported span (then `service` and `start_ns` are known, and `repeated_statement` only when a
    `db.repeated_queries` event carried it).
    """

    kind: ScopeKind
    name: str  # http.route (or the span name while unresolved), task name, or scope name
    method: str | None
    rule: str
    values: Mapping[str, float]
    violations: tuple[Violation, ...]
    trace_id: int
    span_id: int
    repeated_statement: str | None = None
    config_error: str | None = None  # why the budgets file could not be used (then the built-in defaults applied)
    service: str | None = None  # `service.name`, when read back from a backend
    start_ns: int | None = None  # the scope span's start, when read back from a backend
    killed: bool = False  # a Celery task whose pool process died (hard time limit, SIGKILL): `budget.killed`
    memory_top: str | None = None  # a studied run's top allocation sites (`budget.memory.top`, _memory_study.py)

    @property
    def span_id_hex(self) -> str:
        return f"{self.span_id:016x}"

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def label(self) -> str:
        """`GET orders/<int:pk>/`, `task shop.tasks.rebuild`, `scope nightly-import`."""
        if self.kind == ScopeKind.HTTP:
            if self.name == names.unmatched_scope_name(self.method):  # `GET unmatched` names its method already
                return self.name
            return f"{self.method or ''} {self.name}".strip()
        return f"{'task' if self.kind == ScopeKind.CELERY else 'scope'} {self.name}"

    def describe(self) -> str:
        lines = [f"{self.label}: {len(self.violations)} budget(s) exceeded (trace {self.trace_id_hex})"]
        lines += [f"  - {violation.describe()}" for violation in self.violations]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


_set = object.__setattr__


def finished(
    kind: ScopeKind,
    name: str,
    method: str | None,
    rule: str,
    values: Mapping[str, float],
    violations: tuple[Violation, ...],
    trace_id: int,
    span_id: int,
    repeated_statement: str | None,
    config_error: str | None,
) -> ScopeResult:
    """`ScopeResult(...)` as the processor makes one at every scope's end: the same object, its fields set in
    one step, where the frozen dataclass's `__init__` sets each of its 14 fields with `object.__setattr__`
    (a tenth of the Python a scope's end runs)."""
    result: ScopeResult = ScopeResult.__new__(ScopeResult)
    _set(
        result,
        "__dict__",
        {
            "kind": kind, "name": name, "method": method, "rule": rule, "values": values, "violations": violations,
            "trace_id": trace_id, "span_id": span_id, "repeated_statement": repeated_statement,
            "config_error": config_error, "service": None, "start_ns": None, "killed": False, "memory_top": None,
        },
    )  # fmt: skip
    return result
