"""The example shop under `OTEL_TRACES_SAMPLER=parentbased_traceidratio` at 0.1 and at 0.01.

Every request is tallied whatever the head sampler decides: the app's histograms count every request
and its violations counter every over-budget one, exactly, on the collector's Prometheus exporter
(127.0.0.1:8889) and in Prometheus; Jaeger holds every over-budget request's trace complete and, of
the requests within budget, exactly those whose trace id the ratio sampler keeps (its decision is a
pure function of the id, so the set is known in advance: no statistical interval to flake).

Its own gunicorn and worker per ratio (a service name of their own), so the series read are this
run's alone. Starts servers: hold the servers lock.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from shop_e2e import SHOP_DIR, ShopClient, ShopResponse, running

from jaeger_reader import ExportedSpan, JaegerReader
from processes import ShopProcesses

SRC = Path(__file__).resolve().parents[2] / "src"
PROMETHEUS_EXPORTER = "http://127.0.0.1:8889/metrics"
PROMETHEUS = "http://127.0.0.1:9090/api/v1/query"
OVER_BUDGET = "orders/"  # N+1: db.repeated_queries over its limit of 5
WITHIN_BUDGET = "probe/queries/"  # one PostgreSQL statement, never flagged (budgets.toml, probe/*)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Run:
    """One ratio's shop and the requests sent to it."""

    ratio: float
    service: str
    over: list[ShopResponse]
    within: list[ShopResponse]


# (ratio, over-budget requests, within-budget requests): about 30 and 15 within-budget traces kept.
RATIOS = [(0.1, 20, 300), (0.01, 20, 1500)]


def head_sampled(trace_ids: set[int], ratio: float) -> set[int]:
    """The trace ids whose root span the SDK's TraceIdRatioBased keeps (what the shop's sampler asks)."""
    sampler = TraceIdRatioBased(ratio)
    return {trace_id for trace_id in trace_ids
            if sampler.should_sample(None, trace_id, "GET").decision is Decision.RECORD_AND_SAMPLE}  # fmt: skip


def send(base_url: str, count: int, path: str, **params: str) -> list[ShopResponse]:
    """`count` GETs of `path` from four threads (one HTTP session each)."""
    local = threading.local()

    def one(_: int) -> ShopResponse:
        if not hasattr(local, "client"):
            local.client = ShopClient(base_url)
        return local.client.get(path, **params)  # type: ignore[no-any-return]

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


@pytest.fixture(scope="module", params=RATIOS, ids=lambda r: f"ratio-{r[0]}")
def sampled(request: pytest.FixtureRequest, stack_services: None, shop_database: None) -> Iterator[Run]:
    ratio, over, within = request.param
    service = f"shop-sampling-{str(ratio).replace('.', '')}-{os.getpid()}"
    processes = ShopProcesses(  # beside the e2e session's shop: its own ports, pid files and broker
        port=8004,
        partner_port=8014,
        instance="sampling",
        bsp_delay_ms=200,
        metric_export_interval_ms=1000,
        web_service=service,
        worker_service=f"{service}-worker",
        extra_env={
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(ratio),
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/11",
            "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/12",
            "PYTHONPATH": f"{SHOP_DIR}{os.pathsep}{SRC}",
        },
    )
    with running(processes) as client:
        yield Run(ratio, service, send(client.base_url, over, OVER_BUDGET),
                  send(client.base_url, within, WITHIN_BUDGET, pg="1"))  # fmt: skip


def series(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("} ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def exporter_text() -> str:
    with _OPENER.open(PROMETHEUS_EXPORTER, timeout=5) as response:
        return str(response.read().decode())


def prometheus(query: str) -> float:
    """An instant query's single value (0 when it has none)."""
    url = PROMETHEUS + "?" + urllib.parse.urlencode({"query": query})
    with _OPENER.open(url, timeout=5) as response:
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def eventually(read: Callable[[], float], expected: float, timeout: float = 30) -> float:
    """`read()` once it equals `expected`, or its last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def scope_counts(run: Run, route: str) -> Callable[[], float]:
    return lambda: series(exporter_text(), "budget_db_queries_count", service_name=run.service, http_route=route)


def complete(spans: list[ExportedSpan]) -> bool:
    """The request's scope span with its event, and every DB query it counted."""
    scopes = [span for span in spans if span.is_scope]
    if len(scopes) != 1 or not any(name == "budget.exceeded" for name, _, _ in scopes[0].events):
        return False
    queries = [span for span in spans if span.kind == "client" and "db.system" in span.attributes]
    return len(queries) == scopes[0].attributes["budget.db.queries"]


def test_every_request_is_in_the_histograms(sampled: Run) -> None:
    """budget.db.queries counts each request once, sampled or not: per route, exactly the requests sent."""
    assert eventually(scope_counts(sampled, OVER_BUDGET), len(sampled.over)) == len(sampled.over)
    assert eventually(scope_counts(sampled, WITHIN_BUDGET), len(sampled.within)) == len(sampled.within)


def test_every_over_budget_request_is_counted(sampled: Run) -> None:
    """budget.violations for db.repeated_queries is the number of N+1 requests; the probe route has none."""
    def counted() -> float:
        return series(exporter_text(), "budget_violations_total", service_name=sampled.service,
                      otel_scope_name="otel_budget", budget_metric="db.repeated_queries")  # fmt: skip

    assert eventually(counted, len(sampled.over)) == len(sampled.over)
    assert series(exporter_text(), "budget_violations_total", service_name=sampled.service,
                  http_route=WITHIN_BUDGET) == 0  # fmt: skip


def test_prometheus_has_the_same_totals(sampled: Run) -> None:
    """Prometheus (scraping the collector every 5 s) shows the same scope and violation totals."""
    scopes = f'sum(budget_db_queries_count{{service_name="{sampled.service}"}})'
    violations = (f'sum(budget_violations_total{{service_name="{sampled.service}",otel_scope_name="otel_budget",'
                  'budget_metric="db.repeated_queries"})')
    total = len(sampled.over) + len(sampled.within)
    assert eventually(lambda: prometheus(scopes), total, timeout=40) == total
    assert eventually(lambda: prometheus(violations), len(sampled.over), timeout=40) == len(sampled.over)


def test_every_over_budget_trace_is_kept_complete(sampled: Run, jaeger: JaegerReader) -> None:
    """Jaeger has each N+1 request's trace, sampled or not: the scope span, its event, every query span."""
    for response in sampled.over:
        spans = jaeger.wait_for(response.trace_id, complete, what="the over-budget request, complete")
        parents = {span.span_id for span in spans}
        assert all(span.parent_span_id in parents for span in spans if span.parent_span_id)


def test_the_rest_is_kept_at_the_sampled_share(sampled: Run, jaeger: JaegerReader) -> None:
    """Of the requests within budget, Jaeger holds exactly those the head sampler kept, and no other."""
    sent = {int(response.trace_id, 16) for response in sampled.within}
    expected = head_sampled(sent, sampled.ratio)
    assert expected, "precondition: the ratio keeps some of the within-budget requests"
    time.sleep(3)  # the apps' 200 ms batch delay and the collector's 1 s batch, with room
    held = {int(span.trace_id, 16) for trace in jaeger.search(sampled.service, limit=5000) for span in trace}
    kept = sent & held
    print(f"ratio {sampled.ratio}: {len(kept)} of {len(sent)} within-budget traces kept, {len(expected)} head-sampled")
    assert kept == expected, (f"kept but not head-sampled: {sorted(kept - expected)[:5]}; "
                              f"head-sampled but missing: {sorted(expected - kept)[:5]}")  # fmt: skip
