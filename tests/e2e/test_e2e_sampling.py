"""The example shop under `OTEL_TRACES_SAMPLER=parentbased_traceidratio` at 0.1: every N+1 request counted and kept.

Its own gunicorn and worker (a service name of their own), so the violations counter read from the
collector's Prometheus exporter (127.0.0.1:8889) is this run's alone.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from shop_e2e import SHOP_DIR, ShopClient, running

from jaeger_reader import ExportedSpan, JaegerReader
from processes import ShopProcesses

REQUESTS = 20
SRC = Path(__file__).resolve().parents[2] / "src"
PROMETHEUS_EXPORTER = "http://127.0.0.1:8889/metrics"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def sampled_shop(stack_services: None, shop_database: None) -> Iterator[tuple[ShopClient, str]]:
    service = f"shop-sampling-{os.getpid()}"
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
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/11",
            "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/12",
            "PYTHONPATH": f"{SHOP_DIR}{os.pathsep}{SRC}",
        },
    )
    with running(processes) as client:
        yield client, service


def violations(service: str, metric: str) -> float:
    """The app's own `budget.violations` for `metric`, summed over its processes, as the collector exports it."""
    with _OPENER.open(PROMETHEUS_EXPORTER, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("budget_violations_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("} ")[0]))
        if (labels.get("service_name"), labels.get("otel_scope_name"), labels.get("budget_metric")) == (
            service,
            "otel_budget",
            metric,
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def complete(spans: list[ExportedSpan]) -> bool:
    """The request's scope span with its event, and every DB query it counted."""
    scopes = [span for span in spans if span.is_scope]
    if len(scopes) != 1 or not any(name == "budget.exceeded" for name, _, _ in scopes[0].events):
        return False
    queries = [span for span in spans if span.kind == "client" and "db.system" in span.attributes]
    return len(queries) == scopes[0].attributes["budget.db.queries"]


def test_every_n_plus_one_request_counted_and_kept(sampled_shop: tuple[ShopClient, str], jaeger: JaegerReader) -> None:
    """N requests to the N+1 view at a 10 % head sample: the counter says N, Jaeger has all N traces complete."""
    client, service = sampled_shop
    trace_ids = [client.get("orders/").trace_id for _ in range(REQUESTS)]
    deadline = time.monotonic() + 30
    while (counted := violations(service, "db.repeated_queries")) < REQUESTS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert counted == REQUESTS
    for trace_id in trace_ids:
        spans = jaeger.wait_for(trace_id, complete, what="the over-budget request, complete")
        parents = {span.span_id for span in spans}
        assert all(span.parent_span_id in parents for span in spans if span.parent_span_id)
