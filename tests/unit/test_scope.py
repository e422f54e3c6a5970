from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import SpanKind

from otel_budget import ConfigError, budget, budget_scope, set_budget
from tracing_kit import Tracing, make_tracing


def test_decorator_overrides_file_for_a_view() -> None:
    """@budget on a view wins over the route rule; events say rule 'code'."""
    tracing = make_tracing({"http": {"db.queries": 100}})

    @budget(db_queries=1)
    def view() -> None:
        tracing.db("SELECT 1")
        tracing.db("SELECT 2")

    with tracing.request():
        view()
    event = tracing.events("GET items/")["db.queries"]
    assert (event["budget.rule"], event["budget.limit"], event["budget.actual"]) == ("code", 1, 2)
    assert tracing.span("GET items/").attributes["budget.rule"] == "code"


def test_decorator_keeps_crossing_time() -> None:
    """An in-code limit crossed during the view keeps the time of the crossing span."""
    tracing = make_tracing()

    @budget(db_queries=1)
    def view() -> None:
        tracing.db("SELECT 1")
        tracing.db("SELECT 2")
        tracing.db("SELECT 3")

    with tracing.request():
        view()
    second = [s for s in tracing.spans() if s.name == "db"][1]
    (event,) = tracing.span("GET items/").events
    assert event.timestamp == second.end_time


def test_async_view_decorator() -> None:
    """@budget works on async views."""
    tracing = make_tracing()

    @budget({"db.queries": 0})
    async def view() -> str:
        tracing.db("SELECT 1")
        return "ok"

    with tracing.request():
        assert asyncio.run(view()) == "ok"
    assert set(tracing.events("GET items/")) == {"db.queries"}
    assert "budget.cpu_ms" in tracing.span("GET items/").attributes  # sync scope around it


def test_decorator_inherits_unnamed_limits_from_file() -> None:
    """In-code limits replace only the metrics they name."""
    tracing = make_tracing({"http": {"external.calls": 0}})

    @budget(db_queries=10)
    def view() -> None:
        with tracing.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"http.method": "GET"}):
            pass

    with tracing.request():
        view()
    assert tracing.events("GET items/")["external.calls"]["budget.rule"] == "http"


def test_task_decorator() -> None:
    """@budget under a Celery task's run span sets the task's limits."""
    tracing = make_tracing()

    @budget(duration_ms=0)
    def task_body() -> int:
        return 3

    with tracing.tracer.start_as_current_span("run/shop.tasks.t", kind=SpanKind.CONSUMER):
        assert task_body() == 3
    assert tracing.events("run/shop.tasks.t")["duration_ms"]["celery.task_name"] == "shop.tasks.t"


def test_bad_decorator_limits_fail_at_import() -> None:
    """A misspelt metric in @budget raises at decoration time, naming it."""
    with pytest.raises(ConfigError, match=r"@budget: db_querys: unknown metric; did you mean 'db_queries'\?"):
        budget(db_querys=1)


def test_set_budget_outside_scope_is_a_no_op(tracing: Tracing) -> None:
    """set_budget with no open scope returns False and raises nothing."""
    assert set_budget(db_queries=1) is False


def test_budget_scope_measures_a_script(tracing: Tracing) -> None:
    """An explicit scope is a scope of kind 'scope' with its own limits."""
    with budget_scope("nightly-import", db_queries=1, tracer_provider=tracing.provider):
        tracing.db("SELECT 1")
        tracing.db("SELECT 2")
    events = tracing.events("nightly-import")
    assert events["db.queries"]["budget.scope"] == "nightly-import"
    assert events["db.queries"]["budget.rule"] == "code"
    assert tracing.results[0].label == "scope nightly-import"


def test_nested_budget_scope_adds_to_outer(tracing: Tracing) -> None:
    """Counts of a nested scope are part of the request around it too."""
    with tracing.request():
        tracing.db("SELECT 1")
        with budget_scope("chunk", tracer_provider=tracing.provider):
            tracing.db("SELECT 2")
            tracing.db("SELECT 3")
    assert tracing.span("chunk").attributes["budget.db.queries"] == 2
    assert tracing.span("GET items/").attributes["budget.db.queries"] == 3


def test_budget_above_a_celery_task_is_refused_at_decoration() -> None:
    """@budget above @app.task or @shared_task raises a TypeError that names the fix."""
    from celery import Celery, shared_task

    app = Celery("budget-order", broker="memory://", set_as_current=False)

    def body() -> int:
        return 3

    for task in (app.task(name="t.eager")(body), shared_task(name="t.shared")(body)):
        with pytest.raises(TypeError, match=r"put @budget below @shared_task / @app.task, directly on the function"):
            budget(db_queries=3)(task)


def test_budget_below_a_celery_task_keeps_the_task() -> None:
    """@budget below @app.task: the task keeps its name, `apply` and result, and the limit applies."""
    from celery import Celery

    app = Celery("budget-order", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task
    @budget(db_queries=0)
    def reprice(x: int) -> int:
        return x + 1

    assert reprice.name == f"{__name__}.reprice"
    assert reprice.apply(args=(2,)).get() == 3
    tracing = make_tracing()
    with tracing.tracer.start_as_current_span("run/t", kind=SpanKind.CONSUMER):
        reprice.apply(args=(1,))
        tracing.db("SELECT 1")
    assert tracing.events("run/t")["db.queries"]["budget.rule"] == "code"
