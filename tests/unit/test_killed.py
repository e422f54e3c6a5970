"""killed.py: a Celery task killed in its pool process, reported by the worker's main process."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import TimeLimitExceeded, WorkerLostError
from tracing_kit import make_tracing
from opentelemetry.trace import SpanKind

from otel_budget import spanformat, verdict
from otel_budget.config import BudgetRule
from otel_budget.killed import KilledTaskReporter
from otel_budget.scope import budget

BUDGETS = {"celery": {"duration_ms": 60000, "task": [{"match": "jobs.*", "duration_ms": 1000}]}}
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class FakeRequest:
    """What the reporter reads of Celery's `Request`."""

    id: str = "task-1"
    name: str = "jobs.render"
    time_start: float | None = field(default_factory=lambda: time.time() - 2.5)
    worker_pid: int | None = 999_999
    request_dict: dict[str, Any] = field(default_factory=lambda: {"traceparent": PARENT})


def reported(reporter: KilledTaskReporter, request: FakeRequest, exception: BaseException, task: Any = None) -> None:
    reporter.received(request=request)
    reporter.failed(sender=task, task_id=request.id, exception=exception)


def test_time_limit_kill_is_reported_in_the_producers_trace() -> None:
    """A hard time limit: a CONSUMER span under the producer's span, killed, with its duration event."""
    tracing = make_tracing(BUDGETS)
    reporter = KilledTaskReporter(tracing.processor, tracing.provider)
    reported(reporter, FakeRequest(), TimeLimitExceeded(2))
    span = tracing.span("run/jobs.render")
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    scope = spanformat.decode_span(span)
    assert scope is not None and scope.killed
    assert (scope.name, scope.rule) == ("jobs.render", "task:jobs.*")
    assert 2400 < scope.values["duration_ms"] < 3500
    ((metric, limit, rule),) = [(v.metric, v.limit, v.rule) for v in scope.violations]
    assert (metric, limit, rule) == ("duration_ms", 1000, "task:jobs.*")
    assert [r.killed for r in tracing.results] == [True]


def test_worker_lost_is_reported_once() -> None:
    """A pool process that died (SIGKILL): one report, however many failures Celery signals for it."""
    tracing = make_tracing(BUDGETS)
    reporter = KilledTaskReporter(tracing.processor, tracing.provider)
    request = FakeRequest()
    reported(reporter, request, WorkerLostError("signal 9"))
    reporter.failed(sender=None, task_id=request.id, exception=TimeLimitExceeded(2))
    assert len(tracing.results) == 1


def test_ordinary_failures_and_own_process_are_not_reports() -> None:
    """A task's own exception, or a task that ran in this process (solo pool), ends its span itself."""
    tracing = make_tracing(BUDGETS)
    reporter = KilledTaskReporter(tracing.processor, tracing.provider)
    reported(reporter, FakeRequest(id="a"), ValueError("boom"))
    reported(reporter, FakeRequest(id="b", worker_pid=os.getpid()), WorkerLostError("signal 9"))
    reported(reporter, FakeRequest(id="c", worker_pid=None), WorkerLostError("signal 9"))
    assert tracing.spans() == [] and tracing.results == []


def test_under_budget_kill_still_breaks_duration() -> None:
    """Killed before its budget ran out: still a `duration_ms` violation against the rule's limit."""
    tracing = make_tracing(BUDGETS)
    reporter = KilledTaskReporter(tracing.processor, tracing.provider)
    reported(reporter, FakeRequest(name="other.task"), TimeLimitExceeded(2))
    ((violation,),) = [r.violations for r in tracing.results]
    assert (violation.metric, violation.limit, violation.rule) == ("duration_ms", 60000, "celery")


def test_code_budget_is_the_rule() -> None:
    """`@budget(...)` on the task's function: its limits are the killed task's rule `code`."""

    @budget(duration_ms=500)
    def render() -> None:
        pass

    @dataclass
    class Task:
        run: Any

    tracing = make_tracing(BUDGETS)
    reporter = KilledTaskReporter(tracing.processor, tracing.provider)
    reported(reporter, FakeRequest(), TimeLimitExceeded(2), Task(render))
    ((violation,),) = [r.violations for r in tracing.results]
    assert (violation.limit, violation.rule) == (500, "code")


def test_no_duration_limit_falls_back_to_the_time_limit() -> None:
    """With no `duration_ms` budget, the limit of a killed task's event is the hard time limit that killed it."""
    rule = BudgetRule(name="celery", limits={}, sources={})
    result = verdict.judge_killed(
        name="t", rule=rule, duration_ms=2001.0, time_limit_ms=2000.0, end_ns=1, trace_id=1, span_id=1
    )
    assert [(v.metric, v.limit, v.actual, v.rule) for v in result.violations] == [("duration_ms", 2000, 2001, "celery")]
    assert spanformat.encode_summary(result)["budget.killed"] is True


def test_bounded_and_forgotten_after_fork() -> None:
    """At most `max_requests` tasks remembered; a fork's child forgets them."""
    tracing = make_tracing(BUDGETS)
    reporter = KilledTaskReporter(tracing.processor, tracing.provider, max_requests=2)
    requests = [FakeRequest(id=str(n)) for n in range(3)]
    for request in requests:
        reporter.received(request=request)
    reporter.failed(task_id="2", exception=WorkerLostError())
    assert tracing.results == []
    reporter.forget()
    reporter.failed(task_id="0", exception=WorkerLostError())
    assert tracing.results == []


def test_pool_child_leaves_a_terminated_task_to_the_main_process() -> None:
    """In a pool process, a task span ended by SystemExit (the pool's SIGTERM) is exported without budgets."""
    tracing = make_tracing(BUDGETS)
    tracing.processor.leave_killed_tasks_to_main_process()
    try:
        with tracing.tracer.start_as_current_span("run/jobs.render", kind=SpanKind.CONSUMER):
            raise SystemExit(-15)
    except SystemExit:
        pass
    with tracing.tracer.start_as_current_span("run/jobs.quick", kind=SpanKind.CONSUMER):
        pass
    assert "budget.violations" not in (tracing.span("run/jobs.render").attributes or {})
    assert [r.name for r in tracing.results] == ["jobs.quick"]
    assert tracing.processor.open_scopes == 0
