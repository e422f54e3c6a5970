"""Faults injected into otel-budget inside the app process (tests/reliability/test_injected_faults.py).

Each fault fires only for its own marker (a statement comment, a route, a task name), so the
rest of the app's scopes show whether otel-budget still measures exactly around a failure.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from opentelemetry import trace

import otel_budget
from otel_budget import tally as tally_module
from otel_budget.config import BudgetConfig, Override
from otel_budget.tally import ScopeTally
from otel_budget.results import ScopeResult

FAULT_MARKER = "otel-budget-fault"
LISTENER_ROUTE = "rel/hostile/listener/"
RULE_ROUTE = "rel/hostile/rule/"
RULE_TASK = "reliability_app.tasks.hostile_rule"
LISTENER_TASK = "reliability_app.tasks.hostile_listener"


class InjectedFault(RuntimeError):
    """Raised by an injected fault; its name appears in the logged traceback."""


def install_faults() -> None:
    processor = otel_budget.install()
    if processor is None:
        raise RuntimeError("otel-budget is not installed in this process: nothing to inject faults into")
    _hostile_normalisation()
    _raising_tally_method()
    processor.add_listener(_raising_listener)
    processor.config = _with_broken_rules(processor.config)


def _hostile_normalisation() -> None:
    original = tally_module.normalize_sql

    def normalize_sql(statement: str, *dialect: str) -> str:
        if FAULT_MARKER in statement:
            raise InjectedFault("injected: statement normalisation failed")
        return original(statement, *dialect)

    tally_module.normalize_sql = normalize_sql


def _raising_tally_method() -> None:
    def add(self: ScopeTally, slot: int, amount: int, at_ns: int) -> None:  # what an enqueued task calls
        raise InjectedFault("injected: ScopeTally.add failed")

    ScopeTally.add = add  # type: ignore[method-assign]


def _raising_listener(result: ScopeResult) -> None:
    if result.name in (LISTENER_ROUTE, LISTENER_TASK):
        raise InjectedFault("injected: a scope listener failed")


def _with_broken_rules(config: BudgetConfig) -> BudgetConfig:
    """The same budgets plus one route and one task rule whose limit is not a number."""
    broken: dict[str, Any] = {"db.queries": "ten"}

    def override(glob: str) -> Override:
        return Override(match=glob, method=None, limits=broken, pattern=re.compile(re.escape(glob)))

    return BudgetConfig(
        source=config.source,
        sections=config.sections,
        routes=(override(RULE_ROUTE), *config.routes),
        tasks=(override(RULE_TASK), *config.tasks),
    )


def capture_mongo_statements() -> None:
    """Instrument pymongo with `capture_statement=True`: filters with their values reach the spans.

    The app runs with OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=pymongo, so this is the only instrumentation.
    """
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

    PymongoInstrumentor().instrument(capture_statement=True)


def leave_state_for_fork() -> None:
    """In the parent (gunicorn --preload master, Celery main process): an open scope, an open
    child span and a read RSS descriptor, all inherited by the children that fork from it."""
    tracer = trace.get_tracer("reliability.fork")
    scope = tracer.start_span("parent-scope-never-ended", attributes={"budget.scope": "parent-at-fork"})
    with trace.use_span(scope, end_on_exit=False):
        tracer.start_span("child-never-ended")
    _LEFT_OPEN.append(scope)
    processor = otel_budget.install()
    open_scopes = processor.open_scopes if processor is not None else 0
    logging.getLogger("reliability").warning("state left for fork: pid=%d open_scopes=%d", os.getpid(), open_scopes)


_LEFT_OPEN: list[Any] = []
