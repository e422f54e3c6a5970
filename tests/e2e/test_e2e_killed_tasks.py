"""Killed Celery tasks are still scopes: real Redis, real worker processes, real collector -> Jaeger.

A worker (`opentelemetry-instrument celery worker`, tests/e2e/killed_tasks_app.py) runs tasks that its
pool kills at the hard time limit or that the test kills with SIGKILL; its main process reports each
with `budget.killed = true` and a `duration_ms` violation, in the producer's trace, and counts it in
`budget.violations` (read from the collector's Prometheus exporter). Each run has its own service
name, so the counter starts at zero.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from killed_tasks_app import BROKER, PID_KEY, app
from shop_e2e import SPAN_TIMEOUT_S

from jaeger_reader import ExportedSpan, JaegerReader
from processes import ShopProcess

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
METRICS_URL = "http://127.0.0.1:8889/metrics"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
BUDGETS = """
[celery]
duration_ms = 60000

[[celery.task]]
match = "killtest.sleep_*"
duration_ms = 1000
"""
PAST_LIMIT = "killtest.sleep_past_limit"
UNTIL_KILLED = "killtest.sleep_until_killed"
RULE = "task:killtest.sleep_*"


@dataclass(frozen=True)
class Worker:
    process: ShopProcess
    service: str
    queue: str

    def send(self, task: str, *args: object) -> tuple[str, str]:
        """Send `task` in a trace of its own, as a producer's `traceparent` header; (task id, trace id)."""
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        sent = app.send_task(task, args=args, queue=self.queue, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
        return sent.id, trace_id


def start_worker(pool: str, tmp_path: Path) -> Iterator[Worker]:
    run = secrets.token_hex(4)
    service, queue = f"killed-{pool}-{run}", f"otel-budget-i16-killed-{pool}-{run}"
    budgets = tmp_path / f"budgets-{pool}.toml"
    budgets.write_text(BUDGETS)
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(HERE)]),
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        # OTLP over HTTP: the pool forks new children after the main process has exported (the killed
        # reports, its metrics) over gRPC, and gRPC's state does not survive a fork (docs/reference.md).
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BUDGET_CONFIG": str(budgets),
    }
    argv = (
        str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "celery"), "-A", "killed_tasks_app", "worker",
        "--pool", pool, "--concurrency", "2", "--queues", queue, "--hostname", f"{service}@%h",
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
    )  # fmt: skip
    process = ShopProcess(f"killed-{pool}", argv, env)
    offset = process.log_path.stat().st_size if process.log_path.exists() else 0
    pid = process.start()
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in process.log_path.read_bytes()[offset:]:
            if process.pid() is None or time.monotonic() > deadline:
                raise AssertionError(f"{pool} worker (pid {pid}) did not get ready\n{process.log_tail()}")
            time.sleep(0.2)
        yield Worker(process, service, queue)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def prefork(stack_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    yield from start_worker("prefork", tmp_path_factory.mktemp("prefork"))


@pytest.fixture(scope="module")
def solo(stack_services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    yield from start_worker("solo", tmp_path_factory.mktemp("solo"))


def scope_span(jaeger: JaegerReader, trace_id: str, task: str) -> ExportedSpan:
    spans = jaeger.wait_for(
        trace_id,
        lambda spans: any(s.is_scope and s.name == f"run/{task}" for s in spans),
        timeout_s=SPAN_TIMEOUT_S,
        what=f"the scope span of {task}",
    )
    (span,) = [s for s in spans if s.is_scope]
    return span


def assert_killed(span: ExportedSpan, worker: Worker, trace_id: str, task: str, at_least_ms: float) -> None:
    """A killed task's report: in the producer's trace, `budget.killed`, one `duration_ms` event."""
    scope = span.scope
    assert (span.service, span.kind, span.trace_id) == (worker.service, "consumer", trace_id)
    assert span.parent_span_id is not None  # the producer's span, from the traceparent header
    assert span.attributes["budget.killed"] is True
    assert span.attributes["otel.status_code"] == "ERROR"
    assert (scope.killed, scope.name, scope.rule) == (True, task, RULE)
    assert scope.values["duration_ms"] >= at_least_ms
    assert abs(scope.values["duration_ms"] - span.duration_us / 1000) < 1
    ((metric, limit, actual, rule),) = [(v.metric, v.limit, v.actual, v.rule) for v in scope.violations]
    assert (metric, limit, rule) == ("duration_ms", 1000, RULE)
    assert actual == scope.values["duration_ms"]


def counted(metric: str, service: str, task: str, expect: float, timeout_s: float = 20.0, **labels: str) -> float:
    """The sum of the library's `metric` series for `service` and `task` (every process), from the collector."""
    pattern = re.compile(rf"^{metric}\{{(?P<labels>[^}}]*)\}} (?P<value>\S+)$", re.M)
    wanted = [f'service_name="{service}"', 'otel_scope_name="otel_budget"', f'celery_task_name="{task}"']
    wanted += [f'{key}="{value}"' for key, value in labels.items()]
    deadline = time.monotonic() + timeout_s
    while True:
        with _OPENER.open(METRICS_URL, timeout=5) as response:
            text = response.read().decode()
        found = sum(float(m["value"]) for m in pattern.finditer(text) if all(w in m["labels"] for w in wanted))
        if found == expect or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def violations_counted(service: str, task: str, expect: float) -> float:
    """`budget.violations` for the task's `duration_ms` under its rule (Prometheus: budget_violations_total)."""
    return counted("budget_violations_total", service, task, expect, budget_metric="duration_ms", budget_rule=RULE)


def test_hard_time_limit_kills_are_reported(prefork: Worker, jaeger: JaegerReader) -> None:
    """Three tasks killed at `time_limit=2`: three killed scopes in Jaeger and 3 in `budget.violations`."""
    sent = [prefork.send(PAST_LIMIT, 10) for _ in range(3)]
    for _, trace_id in sent:
        assert_killed(scope_span(jaeger, trace_id, PAST_LIMIT), prefork, trace_id, PAST_LIMIT, 2000)
    reports = [
        span
        for trace in jaeger.search(prefork.service, operation=f"run/{PAST_LIMIT}")
        for span in trace
        if span.attributes.get("budget.killed") is True
    ]
    assert len(reports) == 3
    assert violations_counted(prefork.service, PAST_LIMIT, expect=3) == 3
    assert counted("budget_duration_milliseconds_count", prefork.service, PAST_LIMIT, expect=3) == 3
    time.sleep(2.5)  # two more metric exports: pool children forked after the kills do not count them again
    assert violations_counted(prefork.service, PAST_LIMIT, expect=3) == 3


def test_the_worker_survives_and_runs_a_normal_task(prefork: Worker, jaeger: JaegerReader) -> None:
    """After its pool children were killed, the worker runs a task as usual, reported by the child."""
    task_id, trace_id = prefork.send("killtest.quick")
    pid = app.AsyncResult(task_id).get(timeout=20)
    assert pid != prefork.process.pid()
    span = scope_span(jaeger, trace_id, "killtest.quick")
    assert "budget.killed" not in span.attributes
    assert (span.scope.rule, span.scope.violations) == ("celery", ())


def test_sigkilled_pool_child_is_reported(prefork: Worker, jaeger: JaegerReader) -> None:
    """A pool child killed with SIGKILL mid-task (as the OOM killer would): the task is reported killed."""
    task_id, trace_id = prefork.send(UNTIL_KILLED, 30)
    broker = redis.Redis.from_url(BROKER)
    deadline = time.monotonic() + 20
    while (pid := broker.get(PID_KEY.format(task_id=task_id))) is None:
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.05)
    time.sleep(1.5)
    os.kill(int(pid), signal.SIGKILL)
    assert_killed(scope_span(jaeger, trace_id, UNTIL_KILLED), prefork, trace_id, UNTIL_KILLED, 1500)
    assert violations_counted(prefork.service, UNTIL_KILLED, expect=1) == 1


def test_solo_pool_does_not_enforce_the_hard_limit(solo: Worker, jaeger: JaegerReader) -> None:
    """Celery's solo pool ignores `time_limit`: the task runs to its end, an ordinary scope over its budget."""
    task_id, trace_id = solo.send(PAST_LIMIT, 2.5)
    assert app.AsyncResult(task_id).get(timeout=20) == 2.5
    span = scope_span(jaeger, trace_id, PAST_LIMIT)
    scope = span.scope
    assert "budget.killed" not in span.attributes
    assert (scope.killed, scope.rule) == (False, RULE)
    assert scope.values["duration_ms"] >= 2500
    assert [(v.metric, v.limit) for v in scope.violations] == [("duration_ms", 1000)]
