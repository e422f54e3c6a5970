#!/usr/bin/env python3
"""otel-budget demo: run the example shop under real load and show what broke its budgets.

    make demo                                # = make stack venv, then this script
    .venv/bin/python examples/demo.py [--rounds 3] [--keep-running] [--html FILE]

Starts the shop (gunicorn + Celery worker under `opentelemetry-instrument`, budgets from
examples/shop/budgets.toml), sends a scripted workload to every endpoint, waits for the spans to
reach Jaeger through the collector, and prints per route and per task what exceeded which
budget, read back from Jaeger's HTTP API. Last, `otel-budget report --html` writes the same run
as one self-contained HTML page (bars against the limits, the worst traces as waterfalls) and
the demo prints its path.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

SHOP_DIR = Path(__file__).resolve().parent / "shop"
sys.path.insert(0, str(SHOP_DIR))

from jaeger_reader import ExportedSpan, JaegerError, JaegerReader  # noqa: E402
from processes import BUDGETS_FILE, LOG_DIR, ShopError, ShopProcesses  # noqa: E402

STACK = (
    ("PostgreSQL", 5432),
    ("Redis", 6379),
    ("FerretDB", 27017),
    ("OpenTelemetry Collector", 4317),
    ("Jaeger", 16686),
    ("Prometheus", 9090),
)
PROMETHEUS_EXPORTER = "http://127.0.0.1:8889/metrics"
HTML_REPORT = Path("/tmp/otel-budget-demo/report.html")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Step:
    """One request of the workload, and the Celery tasks it should lead to."""

    method: str
    path: str
    why: str
    tasks: tuple[str, ...] = ()


WORKLOAD = (
    Step("GET", "products/3/", "within budget: 2 PostgreSQL queries + 1 MongoDB find"),
    Step("GET", "orders/", "N+1: one query per order for its lines"),
    Step("GET", "orders/prefetched/", "the same page with prefetch_related"),
    Step("GET", "shipping/quote/?product=2", "calls the partner API in the foreground"),
    Step("GET", "reports/sales/", "33 queries, allowed by the reports/* GET override"),
    Step("POST", "reports/sales/", "the same queries as POST: the override names GET only"),
    Step("GET", "search/?q=lamp", "@budget(db_queries=3) on the view"),
    Step("GET", "probe/queries/?pg=7&mongo=3", "exactly 7 PostgreSQL statements + 3 MongoDB commands"),
    Step("POST", "orders/5/confirm/", "enqueues 2 tasks, allowed by the orders/*/confirm/ override",
         ("store.tasks.send_order_confirmation", "store.tasks.reserve_stock")),
    Step("POST", "catalog/reindex/", "enqueues a task that is over its db.queries budget",
         ("store.tasks.rebuild_search_index",)),
    Step("POST", "reports/digest/", "enqueues a task that is over its time budget",
         ("store.tasks.generate_sales_digest",)),
)  # fmt: skip
MEMORY_HOG = Step("POST", "memory/hog/", "keeps 80 MiB alive")


@dataclass
class Sent:
    step: Step
    trace_id: str
    truth: dict[str, int] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="times each endpoint is hit (default 3)")
    parser.add_argument("--keep-running", action="store_true", help="leave the shop and its worker running")
    parser.add_argument("--html", type=Path, default=HTML_REPORT, help=f"where the HTML report goes (default {HTML_REPORT})")
    args = parser.parse_args(argv)

    down = [f"{name} (127.0.0.1:{port})" for name, port in STACK if not _port_open(port)]
    if down:
        print(f"demo: not reachable: {', '.join(down)}. Start the stack with `make stack`.", file=sys.stderr)
        return 1
    _heading("1. database: migrate and seed (manage.py setup_shop)")
    subprocess.run([sys.executable, str(SHOP_DIR / "manage.py"), "setup_shop"], cwd=SHOP_DIR, check=True)

    _heading("2. start the shop: gunicorn :8000 (2 workers) + Celery worker, under opentelemetry-instrument")
    shop = ShopProcesses(bsp_delay_ms=500)
    try:
        shop.start(timeout=90)
    except ShopError as exc:
        print(exc, file=sys.stderr)
        shop.stop()
        return 1
    print(f"   shop {shop.url}, partner API {shop.partner_url}, logs {LOG_DIR}/shop-*.log")
    try:
        return _run(shop, args.rounds, args.html)
    finally:
        if args.keep_running:
            print(f"\nThe shop is still running ({shop.url}); stop it with: .venv/bin/python {SHOP_DIR}/processes.py stop")
        else:
            shop.stop()
            print("\nStopped the shop, its Celery worker and the partner API (--keep-running leaves them up).")


def _run(shop: ShopProcesses, rounds: int, html: Path) -> int:
    import requests

    session = requests.Session()
    session.trust_env = False
    start_us = int(time.time() * 1e6)
    _heading(f"3. workload: every endpoint x{rounds}")
    sent: list[Sent] = []
    for step in WORKLOAD + (MEMORY_HOG,):
        times = 1 if step is MEMORY_HOG else rounds
        for _ in range(times):
            response = session.request(step.method, f"{shop.url}/{step.path}", headers={"X-Ground-Truth": "1"}, timeout=30)
            response.raise_for_status()
            truth = {k[15:].lower(): int(v) for k, v in response.headers.items() if k.lower().startswith("x-ground-truth-")}
            sent.append(Sent(step, response.headers["X-Trace-Id"], truth))
        print(f"   {times} x {step.method:4} /{step.path:32} {step.why}")
    session.post(f"{shop.url}/memory/release/", timeout=10)
    workload_done = time.monotonic()

    _heading("4. waiting for the spans in Jaeger (batch export -> collector -> Jaeger)")
    jaeger = JaegerReader()
    t0 = time.monotonic()
    for item in sent:
        try:
            jaeger.wait_for(item.trace_id, _has_scopes(item.step.tasks), timeout_s=30)
        except JaegerError as exc:
            print(f"   {exc}", file=sys.stderr)
            return 1
    print(f"   all {len(sent)} traces there after {time.monotonic() - t0:.1f} s")

    scopes = [s for service in (shop.web_service, shop.worker_service)
              for trace in jaeger.search(service, start_us=start_us, limit=1000)
              for s in trace if s.is_scope and s.service == service]  # fmt: skip
    _heading(f"5. budgets, read back from Jaeger ({jaeger.base_url}/api/traces?service=...)")
    _report(scopes, jaeger)
    _check_ground_truth(sent, jaeger)
    # The apps export their metrics every few seconds: give the last round time to arrive.
    time.sleep(max(0.0, workload_done + shop.metric_export_interval_ms / 1000 + 2 - time.monotonic()))
    _where_next(scopes, jaeger, (shop.web_service, shop.worker_service))
    return _html_report(html, (shop.web_service, shop.worker_service), start_us)


def _has_scopes(tasks: tuple[str, ...]) -> Callable[[list[ExportedSpan]], bool]:
    """Ready when the trace holds the request's scope span and those of `tasks`."""
    wanted = {f"run/{task}" for task in tasks}

    def ready(spans: list[ExportedSpan]) -> bool:
        scopes = [s for s in spans if s.is_scope]
        return any(s.kind == "server" for s in scopes) and wanted <= {s.name for s in scopes}

    return ready


def _report(scopes: list[ExportedSpan], jaeger: JaegerReader) -> None:
    groups: dict[str, list[ExportedSpan]] = defaultdict(list)
    for span in scopes:
        groups[span.scope.label].append(span)
    width = max(len(label) for label in groups)
    over_total = 0
    for label in sorted(groups, key=lambda k: (k.startswith("task"), k.split(" ", 1)[-1], k)):
        spans = sorted(groups[label], key=lambda s: s.start_us)
        latest = spans[-1]
        budget = latest.scope
        over = [s for s in spans if s.scope.violations]
        over_total += len(over)
        verdict = f"OVER BUDGET in {len(over)} of {len(spans)}" if over else f"within budget ({len(spans)} run(s))"
        print(f"\n{label:{width}}  rule {budget.rule:<28} {verdict}")
        print(f"{'':{width}}  {_summary(budget.values)}")
        worst: dict[str, tuple[float, float, str, str, str | None]] = {}
        for span in over:
            for event in span.scope.violations:
                if event.metric not in worst or event.actual > worst[event.metric][1]:
                    worst[event.metric] = (event.limit, event.actual, event.rule, span.trace_id, event.statement)
        if worst:
            print(f"{'':{width}}  {'metric':<24} {'limit':>8} {'actual':>9}  {'rule':<28} trace")
        for metric, (limit, actual, rule, trace_id, statement) in sorted(worst.items()):
            print(f"{'':{width}}  {metric:<24} {_num(limit):>8} {_num(actual):>9}  {rule:<28} {trace_id}")
            print(f"{'':{width}}  {'':24} {jaeger.link(trace_id)}")
            if statement:
                print(f"{'':{width}}  {'':24} repeated statement: {statement[:110]}")
    print(f"\n{len(scopes)} scopes ({len(groups)} routes/tasks), {over_total} over budget.")


def _summary(values: Mapping[str, float]) -> str:
    parts = [f"db.queries {_num(values.get('db.queries', 0))}"]
    for system in ("postgresql", "mongodb"):
        if f"db.{system}.queries" in values:
            parts.append(f"{system} {_num(values[f'db.{system}.queries'])}")
    parts += [
        f"repeated {_num(values.get('db.repeated_queries', 0))}",
        f"external {_num(values.get('external.calls', 0))}",
        f"tasks {_num(values.get('tasks.enqueued', 0))}",
        f"memory {_num(values.get('memory.growth_mb', 0))} MiB",
        f"{_num(values.get('duration_ms', 0))} ms",
    ]
    return "latest: " + ", ".join(parts)


def _check_ground_truth(sent: list[Sent], jaeger: JaegerReader) -> None:
    """Compare each request's exported counts with Django's capture and pymongo's CommandListener."""
    agree = 0
    for item in sent:
        (span,) = [s for s in jaeger.trace(item.trace_id) if s.is_scope and s.kind == "server"]
        pg = span.scope.values.get("db.postgresql.queries", 0)
        mongo = span.scope.values.get("db.mongodb.queries", 0)
        if (pg, mongo) == (item.truth["pg-statements"], item.truth["mongo-commands"]):
            agree += 1
        else:
            print(f"   MISMATCH {item.step.method} /{item.step.path}: exported pg={pg} mongo={mongo}, "
                  f"Django/pymongo saw {item.truth}")  # fmt: skip
    print(
        f"Ground truth: for {agree} of {len(sent)} requests the exported budget.db.postgresql.queries and "
        "budget.db.mongodb.queries equal Django's query capture (minus BEGIN/COMMIT) and pymongo's CommandListener."
    )


def _where_next(scopes: list[ExportedSpan], jaeger: JaegerReader, services: tuple[str, ...]) -> None:
    _heading("6. where to look next")
    example = next((s for s in scopes if s.scope.violations), scopes[0])
    print(f"Jaeger      {jaeger.link(example.trace_id)}")
    if not _has_jaeger_ui(jaeger.link(example.trace_id)):
        print("            (this stack's Jaeger is built without its UI assets; the JSON API has the same data:)")
    print(f"            {jaeger.api_link(example.trace_id)}")
    print(f"            {jaeger.base_url}/api/traces?service=shop&lookback=1h  (the shop's recent traces)")
    print("Prometheus  http://127.0.0.1:9090/alerts (alert rules: dashboards/alerts.yml), and e.g. the query")
    print("            sum by (budget_metric, http_route, celery_task_name) (budget_violations_total)")
    print(f"Collector   {PROMETHEUS_EXPORTER} (what Prometheus scrapes), for {', '.join(services)}, every run since")
    print("            the collector started: the count connector's budget_exceeded_events_total (events received)")
    print("            / the apps' own budget_violations_total (every scope, at any sampling rate):")
    counts = _violation_counts(set(services))
    for (metric, where), (events, counter) in sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"            {events:5.0f} / {counter:<5.0f} {metric:<24} {where}")
    if not counts:
        print("            (none yet; the collector exports every few seconds)")
    elif any(events < counter for events, counter in counts.values()):
        print("            (where the first column is lower: events still in the collector's batch, or a batch the")
        print("            delta_to_cumulative processor dropped as out of order; the apps' counter is exact)")


def _html_report(path: Path, services: tuple[str, ...], start_us: int) -> int:
    """`otel-budget report --html` over this run's traces (the lookback starts with the workload)."""
    _heading("7. the HTML report (otel-budget report --html)")
    path.parent.mkdir(parents=True, exist_ok=True)
    lookback_s = int(time.time() - start_us / 1e6) + 5
    command = [str(Path(sys.executable).with_name("otel-budget")), "report", "--lookback", f"{lookback_s}s",
               "--budgets", str(BUDGETS_FILE), "--html", str(path), "--quiet"]  # fmt: skip
    for service in services:
        command += ["--service", service]
    print("   $ otel-budget " + " ".join(command[1:]))
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        print(f"   otel-budget report failed (exit {done.returncode}): {done.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"HTML report {path}")
    print(f"            open file://{path.resolve()} in a browser: one page, no network needed")
    return 0


def _has_jaeger_ui(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=5) as response:
            return b"not the Jaeger UI" not in response.read()
    except OSError:
        return False


_SAMPLE = re.compile(r"^(?P<name>budget_violations_total|budget_exceeded_events_total)\{(?P<labels>.*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _violation_counts(services: set[str], wait_s: float = 15.0) -> dict[tuple[str, str], tuple[float, float]]:
    """Violations per metric and route/task: (the count connector's events, the apps' counter)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with _OPENER.open(PROMETHEUS_EXPORTER, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            text = ""
        counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            labels = dict(_LABEL.findall(match["labels"])) if match else {}
            if not match or labels.get("service_name") not in services:
                continue
            where = labels.get("celery_task_name") or f"{labels.get('http_request_method', '')} {labels.get('http_route', '')}"
            source = 0 if match["name"] == "budget_exceeded_events_total" else 1
            counts[(labels.get("budget_metric", "?"), where.strip())][source] += float(match["value"])
        if counts or time.monotonic() > deadline:
            return {key: (events, counter) for key, (events, counter) in counts.items()}
        time.sleep(1)


def _heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
