"""Per-request and per-task budgets on OpenTelemetry spans."""

from __future__ import annotations

from otel_budget.activation import install
from otel_budget.config import BudgetConfig, BudgetRule, ConfigError, load_config
from otel_budget.processor import BudgetSpanProcessor
from otel_budget.results import ScopeResult, Violation
from otel_budget.scope import budget, budget_scope, set_budget

__all__ = [
    "BudgetConfig",
    "BudgetRule",
    "BudgetSpanProcessor",
    "ConfigError",
    "ScopeResult",
    "Violation",
    "budget",
    "budget_scope",
    "install",
    "load_config",
    "set_budget",
]
__version__ = "0.1.0"
