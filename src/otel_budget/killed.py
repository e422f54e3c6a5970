"""Celery tasks killed in their pool process, reported by the worker's main process (`budget.killed`).

A prefork pool child killed by the hard time limit, by SIGKILL or by the OOM killer never ends its
`run/<task>` span: the span, and whatever the child counted, die with it. The main process still
knows the task: `task_received` hands it the `Request`, the pool sets its `time_start` and
`worker_pid`, and `task_failure` tells it of the kill (`TimeLimitExceeded`, `WorkerLostError`). It
then makes the task's span itself, in the producer's trace (the instrumentation's `traceparent`
message header), from the task's start to the kill, judged by `verdict.judge_killed` and written by
`sinks.write_to_span`, and counts it in the metrics like any scope (docs/design.md, "Killed tasks").
"""

from __future__ import annotations

import functools
import logging
import os
import time
import weakref
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import Span
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_budget import names, verdict
from otel_budget._ratelimit import log_exception
from otel_budget.names import ScopeKind
from otel_budget.processor import BudgetSpanProcessor
from otel_budget.results import ScopeResult
from otel_budget.sinks import write_to_span

__all__ = ["KilledTaskReporter", "watch_celery"]

logger = logging.getLogger(__name__)

class KilledTaskReporter:
    """Remembers the tasks this process handed to its pool, and reports those whose pool process died.

    Args:
        processor: whose rules, metrics and listeners a killed task goes to.
        tracer_provider: where its span is made (default: the global provider).
        max_requests: tasks remembered at once; beyond it new ones are not (and not reported if killed).
    """

    def __init__(
        self, processor: BudgetSpanProcessor, tracer_provider: trace.TracerProvider | None = None, *, max_requests: int = 10_000
    ) -> None:
        self._processor = processor
        self._tracer = trace.get_tracer(names.METER_NAME, tracer_provider=tracer_provider)
        self._max_requests = max_requests
        # task id -> Celery `Request`, held weakly: an entry goes when the worker drops the request.
        self._requests: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()

    def received(self, request: Any = None, **_: Any) -> None:
        """`task_received` (the main process, as the consumer takes a message)."""
        try:
            if request is not None and len(self._requests) < self._max_requests:
                self._requests[str(request.id)] = request
        except Exception:
            log_exception(logger, "otel-budget: could not note a received Celery task")

    def failed(self, sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any) -> None:
        """`task_failure`: a task whose pool process was killed is reported; any other failure is not ours."""
        try:
            if not isinstance(exception, _kills()):
                return
            request = self._requests.pop(str(task_id), None)
            # In its own process (solo pool, or a task raising these itself) the task's span ends normally.
            if request is None or request.worker_pid in (None, os.getpid()):
                return
            self.report(request, exception, sender, time.time_ns())
        except Exception:
            log_exception(logger, "otel-budget: could not report a killed Celery task")

    def report(self, request: Any, exception: BaseException, task: Any, end_ns: int) -> ScopeResult:
        """Make, judge and end the span of the task `request`, killed at `end_ns`."""
        name = str(request.name)
        start_ns = _start_ns(request.time_start, end_ns)
        span = self._tracer.start_span(
            f"run/{name}",
            context=propagate.extract(dict(request.request_dict or {})),
            kind=SpanKind.CONSUMER,
            start_time=start_ns,
            attributes={
                names.ATTR_KILLED: True,  # first, so that the processor does not open a scope for it
                names.CELERY_ACTION: "run",
                names.CELERY_TASK_NAME: name,
                names.CELERY_TASK_ID: str(request.id),
            },
        )
        try:
            processor = self._processor
            context = span.get_span_context()
            result = verdict.judge_killed(
                name=name,
                rule=processor.rule_for(ScopeKind.CELERY, name, None, _code_limits(task)),
                duration_ms=(end_ns - start_ns) / 1e6,
                time_limit_ms=_time_limit_ms(exception),
                end_ns=end_ns,
                trace_id=context.trace_id,
                span_id=context.span_id,
                config_error=processor.config_error,
            )
            if isinstance(span, Span) and span.is_recording():
                write_to_span(span, result)
            span.set_status(Status(StatusCode.ERROR, f"killed: {exception!r}"))
        finally:
            span.end(end_time=end_ns)
        processor.publish(result)
        return result

    def pool_process_started(self, **_: Any) -> None:
        """`worker_process_init` (a prefork pool child): its killed tasks are the main process's to report."""
        self._processor.leave_killed_tasks_to_main_process()

    def forget(self) -> None:
        """After a fork: the child's copies of the parent's requests are not its own."""
        self._requests = weakref.WeakValueDictionary()

    def disconnect(self) -> None:
        """Stop reporting (tests; a reporter that is dropped stops by itself)."""
        from celery import signals

        signals.task_received.disconnect(self.received)
        signals.task_failure.disconnect(self.failed)
        signals.worker_process_init.disconnect(self.pool_process_started)


def watch_celery(
    processor: BudgetSpanProcessor, tracer_provider: trace.TracerProvider | None = None
) -> KilledTaskReporter | None:
    """Connect a `KilledTaskReporter` to Celery's signals; None when Celery is not installed.

    The signals hold it weakly: it reports for as long as the caller keeps it.
    """
    try:
        from celery import signals
    except ImportError:
        return None
    reporter = KilledTaskReporter(processor, tracer_provider)
    signals.task_received.connect(reporter.received)
    signals.task_failure.connect(reporter.failed)
    signals.worker_process_init.connect(reporter.pool_process_started)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=functools.partial(_forget, weakref.ref(reporter)))
    return reporter


def _forget(ref: weakref.ref[KilledTaskReporter]) -> None:
    reporter = ref()
    if reporter is not None:
        reporter.forget()


def _kills() -> tuple[type[BaseException], ...]:
    from celery.exceptions import TimeLimitExceeded, WorkerLostError

    return (TimeLimitExceeded, WorkerLostError)


def _start_ns(time_start: float | None, end_ns: int) -> int:
    """The task's start in the pool as Celery noted it (wall-clock seconds in Celery 5.7, a monotonic reading
    in older versions); `end_ns` when the pool never acknowledged it."""
    if not time_start:
        return end_ns
    if time_start < 1e9:  # a monotonic reading (older Celery)
        start = end_ns - int((time.monotonic() - time_start) * 1e9)
    else:
        start = int(time_start * 1e9)
    return min(start, end_ns)


def _time_limit_ms(exception: BaseException) -> float | None:
    """The hard time limit that killed the task (`TimeLimitExceeded(seconds)`), in ms."""
    seconds = exception.args[0] if exception.args else None
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
        return float(seconds) * 1000
    return None


def _code_limits(task: Any) -> Mapping[str, float] | None:
    """The limits of `@budget(...)` on the task's function, if any."""
    limits = getattr(getattr(task, "run", None), names.CODE_LIMITS_ATTR, None)
    return limits if isinstance(limits, Mapping) else None
