"""Concurrent requests and tasks, in threads, coroutines and forked children: each scope carries exactly its own counts.

Through the real app servers (gunicorn gthread with --preload, uvicorn, Celery prefork) under
`opentelemetry-instrument`, read back from Jaeger. Every request asks for a different number of
PostgreSQL statements and MongoDB commands, so a count that bled from one scope into another shows.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Celery

import reliability_kit as kit

CONCURRENT = 50


def expected(index: int) -> tuple[int, int]:
    """(PostgreSQL statements, MongoDB commands) of request `index`: every pair, and every total, differs."""
    return index + 1, (index * 7) % 13


def burst(url_for: Callable[[int], str]) -> list[kit.Response]:
    """CONCURRENT requests released at the same moment."""
    barrier = threading.Barrier(CONCURRENT)

    def one(index: int) -> kit.Response:
        barrier.wait(timeout=30)
        return kit.get(url_for(index), timeout=60)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        return list(pool.map(one, range(CONCURRENT)))


def check_counts(responses: list[kit.Response]) -> list[str]:
    """Mismatches between each request's scope span in Jaeger and what it asked for."""
    assert [r.status for r in responses] == [200] * CONCURRENT, [r.body[:300] for r in responses if r.status != 200]
    scopes = kit.scope_spans_by_trace([r.trace_id for r in responses], timeout=45)
    wrong = []
    for index, response in enumerate(responses):
        pg, mongo = expected(index)
        span = scopes[response.trace_id]
        got = (
            span.budget("db.postgresql.queries") or 0,
            span.budget("db.mongodb.queries") or 0,
            span.budget("db.queries"),
        )
        # The query string (WSGI: http.target, ASGI: http.url) says which request the span is.
        target = f"{span.attributes.get('http.target', '')} {span.attributes.get('http.url', '')}"
        if got != (pg, mongo, pg + mongo) or f"?pg={pg}&mongo={mongo}" not in target:
            wrong.append(f"request {index}: asked ({pg}, {mongo}, {pg + mongo}), span has {got}")
    return wrong


def test_gthread_preload_workers_keep_concurrent_counts_apart(
    reliability_shop: tuple[kit.AppProcess, kit.AppProcess, str], figure: Callable[[str, str], None]
) -> None:
    """50 concurrent requests on gunicorn (gthread, 3 workers forked from a --preload master): exact counts each."""
    web, _, _ = reliability_shop
    responses = burst(lambda i: f"{web.url}/rel/probe/?pg={expected(i)[0]}&mongo={expected(i)[1]}")
    wrong = check_counts(responses)
    by_pid = Counter(r.json()["pid"] for r in responses)
    figure(
        "gunicorn gthread --preload",
        f"{CONCURRENT} concurrent requests over {len(by_pid)} workers {dict(by_pid)}: "
        f"{CONCURRENT - len(wrong)} with exactly their own counts, {len(wrong)} wrong",
    )
    assert wrong == []
    assert len(by_pid) >= 2, "the burst should have reached several forked workers"


def test_forked_gunicorn_workers_start_clean_and_measure_their_own_memory(
    reliability_shop: tuple[kit.AppProcess, kit.AppProcess, str], figure: Callable[[str, str], None]
) -> None:
    """Workers forked from a master holding an open scope and an RSS descriptor: no inherited scope, own RSS."""
    web, _, _ = reliability_shop
    assert f"state left for fork: pid={web.pid} open_scopes=1" in web.log(), "the master held an open scope"
    states = {}
    for _ in range(40):  # sequential: each answer sees only its own request's scope open
        state = kit.get(f"{web.url}/rel/state/").json()
        states[state["pid"]] = state
    hog = kit.get(f"{web.url}/memory/hog/", method="POST", body=b"")
    try:
        assert hog.status == 200, hog.body[:300]
        span = kit.scope_spans_by_trace([hog.trace_id])[hog.trace_id]
    finally:
        kit.get(f"{web.url}/memory/release/", method="POST", body=b"")
    growth = span.budget("memory.growth_mb")
    figure(
        "forked gunicorn workers",
        f"open scopes seen by each worker {({pid: s['open_scopes'] for pid, s in states.items()})} "
        f"(the master had 1 open at fork); memory/hog (80 MiB kept) measured budget.memory.growth_mb={growth} "
        f"in worker {hog.json()['pid']}",
    )
    assert len(states) >= 2
    assert all(s["open_scopes"] == 1 for s in states.values()), "only the request asking is open"
    assert 60 <= growth <= 120, "the worker's own RSS (a descriptor inherited from the master would read the master's)"


@pytest.fixture(scope="module")
def asgi_shop(shop_db: None) -> Iterator[kit.AppProcess]:
    """uvicorn serving the shop's ASGI application under opentelemetry-instrument."""
    port = kit.free_port()
    service = kit.service_name("asgi")
    # A thread per request under ASGI: do not keep a connection per finished thread.
    env = kit.app_env(service, SHOP_DB_CONN_MAX_AGE="0")
    app = kit.AppProcess("asgi", kit.uvicorn_argv(port), env, port)
    try:
        yield app.start()
    finally:
        app.stop()


def test_asgi_server_keeps_concurrent_counts_apart(asgi_shop: kit.AppProcess, figure: Callable[[str, str], None]) -> None:
    """50 concurrent requests on uvicorn (Django's ASGI handler, one thread per request): exact counts each."""
    responses = burst(lambda i: f"{asgi_shop.url}/probe/queries/?pg={expected(i)[0]}&mongo={expected(i)[1]}")
    if not any(r.trace_id for r in responses):
        pytest.fail(
            "uvicorn: no request was traced (no X-Trace-Id). Django's instrumentation traces ASGI requests only "
            "when opentelemetry-instrumentation-asgi is installed; otel-budget[django] must depend on it.",
            pytrace=False,
        )
    wrong = check_counts(responses)
    figure(
        "uvicorn (ASGI)",
        f"{CONCURRENT} concurrent requests: {CONCURRENT - len(wrong)} with exactly their own counts, {len(wrong)} wrong",
    )
    assert wrong == []


def test_celery_prefork_children_keep_their_counts_exact(
    reliability_shop: tuple[kit.AppProcess, kit.AppProcess, str], figure: Callable[[str, str], None]
) -> None:
    """30 tasks with distinct counts over 3 prefork children forked from a parent holding an open scope."""
    _, worker, service = reliability_shop
    assert f"state left for fork: pid={worker.pid} open_scopes=1" in worker.log(), "the parent held an open scope"
    client = Celery("reliability-client", broker=kit.BROKER_URL, backend=kit.RESULT_URL)
    tasks = 30
    sent = [client.send_task("reliability_app.tasks.probe", args=list(expected(i))) for i in range(tasks)]
    results = [result.get(timeout=60) for result in sent]
    wanted = {result.id: expected(i) for i, result in enumerate(sent)}
    spans = kit.wait_for(
        lambda: [s for s in kit.service_spans(service) if s.is_scope and s.name == "run/reliability_app.tasks.probe"],
        lambda found: {s.attributes.get("messaging.message.id") for s in found} >= wanted.keys(),
        timeout=45,
        what=f"{tasks} task scopes",
    )
    wrong = []
    for span in spans:
        task_id = span.attributes.get("messaging.message.id")
        if task_id not in wanted:
            continue
        pg, mongo = wanted[task_id]
        got = (span.budget("db.postgresql.queries") or 0, span.budget("db.mongodb.queries") or 0, span.budget("db.queries"))
        if got != (pg, mongo, pg + mongo):
            wrong.append(f"task {task_id}: asked ({pg}, {mongo}), span has {got}")
    by_pid = Counter(r["pid"] for r in results)
    open_scopes = Counter(r["open_scopes"] for r in results)
    figure(
        "celery prefork",
        f"{tasks} tasks over {len(by_pid)} children {dict(by_pid)}: {tasks - len(wrong)} with exactly their own "
        f"counts, {len(wrong)} wrong; open scopes seen inside each task {dict(open_scopes)} "
        f"(the parent had 1 open at fork; worker pids {worker.children()})",
    )
    assert wrong == []
    assert len(by_pid) >= 2
    assert set(open_scopes) == {1}
