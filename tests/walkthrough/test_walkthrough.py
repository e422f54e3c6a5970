"""README.md, followed on a brand-new Django 5.2 project, reaches every promised result (newcomer.py).

One test, because the steps build on each other; each step's time is printed and docs/reference.md
("The walkthrough") has the figures. Needs the stack; binds 8301/8302, so run it under the lock:
`flock /tmp/otel-budget-servers.lock python -m pytest tests/walkthrough -s`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import newcomer
from tests.browser import dump_dom, select
from newcomer import BOOKS, JAEGER, StepFailed, Walkthrough, jaeger_traces, prometheus_query, wait_for

TASK = "books.tasks.rebuild_index"


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def events(span: dict[str, Any]) -> list[dict[str, Any]]:
    return [{f["key"]: f["value"] for f in log["fields"]} for log in span.get("logs", [])]


def scope_spans(service: str, operation: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(scope span, its trace) for every finished scope span named `operation` in Jaeger."""
    found = []
    for trace in jaeger_traces(service):
        for span in trace["spans"]:
            if span["operationName"] == operation and "budget.violations" in tags(span):
                found.append((span, trace))
    return found


def statements(trace: dict[str, Any], scope: dict[str, Any]) -> Counter[str]:
    """The DB client spans under `scope` in its trace, by what they ran (the independent count)."""
    children: dict[str, list[dict[str, Any]]] = {}
    for span in trace["spans"]:
        for ref in span.get("references", []):
            if ref["refType"] == "CHILD_OF":
                children.setdefault(ref["spanID"], []).append(span)
    kinds: Counter[str] = Counter()
    todo = list(children.get(scope["spanID"], []))
    while todo:
        span = todo.pop()
        todo += children.get(span["spanID"], [])
        text = tags(span).get("db.statement") or tags(span).get("db.query.text")
        if tags(span).get("span.kind") == "client" and text:
            kinds["author by id" if 'FROM "books_author" WHERE' in text else "book list" if 'FROM "books_book"' in text
                  else "set_config('TimeZone')" if "set_config('TimeZone'" in text else text] += 1
    return kinds


# Per request (CONN_MAX_AGE 0) and per new worker connection Django sets the session's time zone
# (the server says Etc/UTC, settings say UTC): a query Django's own capture does not list.
N_PLUS_ONE = Counter({"book list": 1, "author by id": BOOKS, "set_config('TimeZone')": 1})


def test_readme_walkthrough(tmp_path: Path) -> None:
    """check-config ok, a failing N+1 test, gunicorn + Celery, the violations in Jaeger, Prometheus and the report."""
    walk = Walkthrough(tmp_path / "mysite")
    walk.root.mkdir()
    try:
        with walk.weather_api():
            run_steps(walk)
    finally:
        walk.stop()
        walk.drop_databases()
        walk.drop_queue()
        print("\n[walkthrough] timings: " + ", ".join(f"{name} {took:.1f} s" for name, took in walk.timings)
              + f"; total {sum(t for _, t in walk.timings):.1f} s")


def run_steps(walk: Walkthrough) -> None:
    with walk.step("1 project (startproject, startapp, fresh PostgreSQL database, migrate)"):
        walk.create_project()
    with walk.step("2 otel-budget check-config"):
        walk.check_config()
    with walk.step("3 pytest --budgets: the N+1 test fails"):
        walk.failing_pytest()
    with walk.step("4 gunicorn + Celery worker under opentelemetry-instrument"):
        walk.start_site()
    with walk.step("5 traffic: GET books/, POST books/reindex/, GET weather/"):
        walk.send_traffic()
        walk.get("/weather/")
    with walk.step("6 the violations in Jaeger"):
        in_jaeger(walk)
    with walk.step("7 the violations in Prometheus"):
        in_prometheus(walk)
    with walk.step("8 otel-budget report"):
        in_report(walk)
    with walk.step("9 otel-budget report --html, the page as headless Chromium builds it"):
        in_html_report(walk)


def in_jaeger(walk: Walkthrough) -> None:
    request = wait_for(lambda: scope_spans(walk.service, "GET books/"), 30, "GET books/ in Jaeger", walk.log)
    span, trace = request[0]
    exceeded = [e for e in events(span) if e.get("event") == "budget.exceeded"]
    assert [(e["budget.metric"], e["budget.actual"], e["budget.limit"], e["budget.rule"]) for e in exceeded] == [
        ("db.repeated_queries", BOOKS, 3, "http")
    ]
    assert '"books_author"' in exceeded[0]["budget.statement"]
    assert statements(trace, span) == N_PLUS_ONE
    assert tags(span)["budget.db.queries"] == N_PLUS_ONE.total()

    weather = wait_for(lambda: len(spans := scope_spans(walk.service, "GET weather/")) >= walk.api_calls and spans,
                       30, f"{walk.api_calls} GET weather/ in Jaeger", walk.log)
    counted = sorted(tags(s)["budget.external.calls"] for s, _ in weather)
    assert counted == [1] * walk.api_calls  # the API saw each call once; the first came from the health wait
    assert all(tags(s)["budget.violations"] == 0 for s, _ in weather)

    task = wait_for(lambda: scope_spans(walk.worker_service, f"run/{TASK}"), 60, "the task run in Jaeger", walk.log)
    span, trace = task[0]
    exceeded = [e for e in events(span) if e.get("event") == "budget.exceeded"]
    assert [(e["budget.metric"], e["budget.actual"], e["budget.limit"]) for e in exceeded] == [("db.repeated_queries", BOOKS, 5)]
    assert statements(trace, span) == N_PLUS_ONE
    assert tags(span)["budget.db.queries"] == N_PLUS_ONE.total()

    assert tag_search(walk.service, {"http.route": "books/", "budget.metric": "db.repeated_queries"}) == 1
    assert tag_search(walk.service, {"http.route": "weather/", "budget.metric": "db.repeated_queries"}) == 0
    assert tag_search(walk.worker_service, {"celery.task_name": TASK, "budget.violations": "1"}) == 1


def tag_search(service: str, tags: dict[str, str]) -> int:
    """Traces Jaeger's tag search finds (docs/tempo.md): tags match span tags and event fields."""
    return len(newcomer.get_json(f"{JAEGER}/api/traces", service=service, lookback="1h", tags=json.dumps(tags))["data"])


def in_prometheus(walk: Walkthrough) -> None:
    """The apps' own counter, scraped by the stack's Prometheus: one N+1 for the route, one for the task."""
    selector = f'service_name=~"{walk.service}|{walk.worker_service}", otel_scope_name="otel_budget"'
    promql = f"sum by (service_name, http_route, celery_task_name, budget_metric) (budget_violations_total{{{selector}}})"
    bound = 5 + 2 * newcomer.scrape_interval_s() + 10  # export interval + scrapes + slack

    def both() -> list[dict[str, Any]]:
        result = prometheus_query(promql)
        return result if len(result) == 2 else []

    rows = wait_for(both, bound, f"{promql} with 2 series")
    seen = {(r["metric"]["service_name"], r["metric"].get("http_route") or r["metric"].get("celery_task_name"),
             r["metric"]["budget_metric"], float(r["value"][1])) for r in rows}
    assert seen == {(walk.service, "books/", "db.repeated_queries", 1.0), (walk.worker_service, TASK, "db.repeated_queries", 1.0)}


def report_argv(walk: Walkthrough, *extra: str) -> list[str]:
    """The README's report command, for this run's two services, as a CI gate."""
    argv = newcomer.report_command()
    services = [walk.service, walk.worker_service]
    argv = [a for i, a in enumerate(argv) if a != "--service" and (i == 0 or argv[i - 1] != "--service")]
    argv += [w for s in services for w in ("--service", s)] + ["--fail-on-violation", *extra]
    return [str(newcomer.BIN / argv[0]), *argv[1:]]


def in_report(walk: Walkthrough) -> None:
    services = [walk.service, walk.worker_service]
    output = walk.run(report_argv(walk), ok=(1,))
    over = set()
    for line in output.splitlines():
        words = line.split()  # service, scope (may hold spaces), metric, runs, p50, p95, limit, over, trace
        if len(words) >= 9 and words[0] in services and words[-1].startswith(f"{JAEGER}/trace/"):
            over.add((words[0], " ".join(words[1:-7]), words[-7], words[-4], words[-3], int(words[-2])))
    wanted = {(walk.service, "GET books/", "db.repeated_queries", str(BOOKS), "3", 1),
              (walk.worker_service, f"task {TASK}", "db.repeated_queries", str(BOOKS), "5", 1)}
    if not wanted <= over:
        raise StepFailed(f"the report does not list both N+1s (p95 {BOOKS}, limits 3 and 5, 1 over):\n{output}")
    assert f"{JAEGER}/trace/" in output


def in_html_report(walk: Walkthrough) -> None:
    """`--html report.html`, as the README words it: the page lists both N+1s, and each one's waterfall
    marks the crossing of `db.repeated_queries` and names the repeated statement."""
    assert "`--html report.html`" in newcomer.readme(), "README: the --html option"
    page = walk.root / "report.html"
    walk.run(report_argv(walk, "--html", str(page)), ok=(1,))
    dom = dump_dom(page)
    offenders = {(e.attrs.get("data-label"), e.attrs.get("data-metric")) for e in select(dom, "div", "offender")}
    wanted = {("GET books/", "db.repeated_queries"), (f"task {TASK}", "db.repeated_queries")}
    if not wanted <= offenders:
        raise StepFailed(f"the HTML page does not list both N+1s: {sorted(offenders, key=str)}")
    waterfalls = {w.attrs.get("data-label"): w for w in select(dom, "div", "waterfall")}
    assert {"GET books/", f"task {TASK}"} <= set(waterfalls), sorted(waterfalls, key=str)
    crossings = [c.attrs.get("data-metric") for c in select(dom, "g", "crossing")]
    assert crossings.count("db.repeated_queries") >= 2, crossings
    statements = [e for e in dom.elements if e.tag == "code"]
    assert any("books_author" in "".join(e.text) for e in statements), [e.text for e in statements]
