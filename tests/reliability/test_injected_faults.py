"""Our own failures stay ours: an exception inside otel-budget never reaches the request or the task.

Faults are injected into the real app processes (tests/reliability/apps/reliability_app/faults.py):
statement normalisation raising on a marked statement, `ScopeTally.add` (an enqueued task) raising, a scope
listener raising, and a budget rule whose limit is not a number (for one route and one task).
Hostile requests and tasks are interleaved with ordinary ones whose counts must stay exact.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from celery import Celery

import reliability_kit as kit

ROUNDS = 6  # hostile requests per fault: more than the 3 gunicorn workers, so some worker sees a fault twice
LOG_LINE = re.compile(r"pid=(\d+) ERROR otel_budget[\w.]*: (otel-budget: [^\n(]*)")
HOSTILE_ROUTES = ("sql", "listener", "enqueue", "rule")
HOSTILE_TASKS = ("hostile_sql", "hostile_listener", "hostile_rule")


def our_errors(log: str) -> Counter[tuple[int, str]]:
    """How often each otel-budget ERROR message was logged, per process."""
    return Counter((int(pid), message.strip()) for pid, message in LOG_LINE.findall(log))


def test_faults_inside_otel_budget_never_reach_requests_or_tasks(
    reliability_shop: tuple[kit.AppProcess, kit.AppProcess, str], figure: Callable[[str, str], None]
) -> None:
    """Hostile requests and tasks succeed; each error is logged once per process; other scopes stay exact."""
    web, worker, service = reliability_shop
    client = Celery("reliability-client", broker=kit.BROKER_URL, backend=kit.RESULT_URL)
    ordinary: list[tuple[kit.Response, int, int]] = []
    hostile: dict[str, list[tuple[kit.Response, int]]] = {route: [] for route in HOSTILE_ROUTES}
    ordinary_tasks: dict[str, tuple[int, int]] = {}
    hostile_tasks = []
    for round_ in range(ROUNDS):
        for route in HOSTILE_ROUTES:
            pg = 2 + round_
            hostile[route].append((kit.get(f"{web.url}/rel/hostile/{route}/?pg={pg}&task_pg={10 + round_}"), pg))
            pg, mongo = 3 + round_ + len(ordinary), round_ % 3
            ordinary.append((kit.get(f"{web.url}/rel/probe/?pg={pg}&mongo={mongo}"), pg, mongo))
        for name in HOSTILE_TASKS:
            hostile_tasks.append(client.send_task(f"reliability_app.tasks.{name}", args=[2 + round_]))
            result = client.send_task("reliability_app.tasks.probe", args=[4 + round_, round_ % 2])
            ordinary_tasks[result.id] = (4 + round_, round_ % 2)

    responses = [r for r, *_ in ordinary] + [r for pairs in hostile.values() for r, _ in pairs]
    assert [r.status for r in responses] == [200] * len(responses), [r.body[:200] for r in responses if r.status != 200]
    for result in hostile_tasks:
        result.get(timeout=60, propagate=False)
    task_states = Counter(result.state for result in hostile_tasks)
    assert task_states == {"SUCCESS": len(hostile_tasks)}, task_states
    enqueued_ids = {r.json()["task_id"]: 10 + n for n, (r, _) in enumerate(hostile["enqueue"])}
    for task_id in enqueued_ids:
        assert client.AsyncResult(task_id).get(timeout=60)["pid"]

    # Ordinary requests around the faults: exact counts.
    scopes = kit.scope_spans_by_trace([r.trace_id for r in responses], timeout=45)
    wrong = []
    for response, pg, mongo in ordinary:
        span = scopes[response.trace_id]
        got = (span.budget("db.postgresql.queries"), span.budget("db.mongodb.queries") or 0)
        if got != (pg, mongo):
            wrong.append(f"{response.trace_id}: asked ({pg}, {mongo}), span has {got}")
    # Hostile requests: measured except the failing piece (sql, enqueue), fully measured (listener).
    hostile_counts = {
        route: [(scopes[r.trace_id].budget("db.queries"), pg) for r, pg in pairs] for route, pairs in hostile.items()
    }
    enqueued = [scopes[r.trace_id].budget("tasks.enqueued") for r, _ in hostile["enqueue"]]

    # Tasks: the ordinary ones and those the hostile requests enqueued, exact.
    want = {**ordinary_tasks, **{task_id: (pg, 0) for task_id, pg in enqueued_ids.items()}}
    task_spans = kit.wait_for(
        lambda: [s for s in kit.service_spans(service) if s.is_scope and s.name == "run/reliability_app.tasks.probe"],
        lambda found: {s.attributes.get("messaging.message.id") for s in found} >= want.keys(),
        timeout=45,
        what="task scopes",
    )
    for span in task_spans:
        task_id = span.attributes.get("messaging.message.id")
        if task_id in want:
            got = (span.budget("db.postgresql.queries"), span.budget("db.mongodb.queries") or 0)
            if got != want[task_id]:
                wrong.append(f"task {task_id}: asked {want[task_id]}, span has {got}")

    web_errors = our_errors(web.log())
    worker_errors = our_errors(worker.log())
    def logged(errors: Counter[tuple[int, str]]) -> str:
        per_message = Counter(message.removeprefix("otel-budget: ") for _, message in errors)
        return f"{dict(per_message)} (processes logging it), at most {max(errors.values(), default=0)} line per process"

    figure(
        "injected faults",
        f"{len(responses)} requests ({ROUNDS * len(HOSTILE_ROUTES)} hostile) all 200, {len(hostile_tasks)} hostile "
        f"tasks all SUCCESS; {len(ordinary) + len(want) - len(wrong)} of {len(ordinary) + len(want)} ordinary "
        f"scopes exact; hostile requests' db.queries (measured, made) {hostile_counts}; tasks.enqueued "
        f"where ScopeTally.add raised {enqueued}; web logged {logged(web_errors)}; worker logged {logged(worker_errors)}",
    )
    assert wrong == []
    assert all(got == pg for got, pg in hostile_counts["listener"]), "a failing listener costs nothing else"
    assert all(got == pg for got, pg in hostile_counts["sql"]), "only the statement that failed goes uncounted"
    assert all(got == pg for got, pg in hostile_counts["enqueue"])
    # Logged, once per process and message, however often it happened.
    for errors, what in ((web_errors, "web"), (worker_errors, "worker")):
        assert errors, f"{what}: the injected faults were not logged"
        assert set(errors.values()) == {1}, f"{what}: logged more than once per process: {errors}"
    assert "InjectedFault" in web.log() and "InjectedFault" in worker.log(), "the traceback is logged"
    messages = {message for _, message in web_errors}
    assert any("listener" in m for m in messages) and any("on_end failed" in m for m in messages)
    assert any("could not finish a scope" in m for m in messages), "the broken rule's scope"
