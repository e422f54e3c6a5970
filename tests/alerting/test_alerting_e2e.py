"""End to end on the stack: SDK + BudgetSpanProcessor -> collector -> Prometheus -> alerts, and Jaeger.

Real violations come from `budget_traffic.BudgetTraffic` under a service name of their own, so
runs never see each other's series. The alerts are checked with a copy of dashboards/alerts.yml
whose `for:` is 5 s (written into $STACK_DIR/rules.d/, loaded with POST /-/reload, removed
afterwards); the expressions are the production ones, unchanged.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from budget_traffic import ORDERS_ROUTE, REPORTS_ROUTE, TASK_NAME, BudgetTraffic
from alerting_stack import ALERTS, DASHBOARD, PrometheusAPI

SHORT_FOR = "5s"
PIPELINE_SLACK_S = 5.0  # SDK flush + collector batch (1 s) + exporter, generously
RULES_PREFIX = "otel-budget-alerting-test-"

ALERT_RULES = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
ALERT_NAMES = [r["alert"] for r in ALERT_RULES]
DASHBOARD_JSON = json.loads(DASHBOARD.read_text())
DASHBOARD_TARGETS = [
    (f"{panel['title']} [{target['refId']}]", target["expr"])
    for panel in DASHBOARD_JSON["panels"]
    for target in panel.get("targets", [])
]
DASHBOARD_VARIABLES = [v for v in DASHBOARD_JSON["templating"]["list"] if v["type"] == "query"]


@dataclass
class LiveRun:
    """What one run put through the stack and what Prometheus made of it."""

    service: str
    bound_s: float  # the promise: `for:` + one scrape + two rule evaluations + pipeline slack
    firing_after_s: dict[str, float] = field(default_factory=dict)
    last_states: dict[str, str] = field(default_factory=dict)


def short_for_rules(service: str) -> dict[str, Any]:
    rules = []
    for rule in ALERT_RULES:
        rules.append({**rule, "for": SHORT_FOR, "labels": {**rule["labels"], "variant": "short-for"}})
    return {"groups": [{"name": f"{RULES_PREFIX}{service}", "rules": rules}]}


def our_alerts(prometheus: PrometheusAPI, service: str) -> dict[str, str]:
    """alertname -> state of the short-for variants for `service` (firing wins over pending)."""
    states: dict[str, str] = {}
    for alert in prometheus.alerts():
        labels = alert["labels"]
        if labels.get("variant") == "short-for" and labels.get("service_name") == service:
            if states.get(labels["alertname"]) != "firing":
                states[labels["alertname"]] = alert["state"]
    return states


def wait_for_series(prometheus: PrometheusAPI, service: str, timeout: float = 30.0) -> None:
    """Until every series the alerts read has its first sample (increase() counts from there)."""
    wanted = {
        f'count(budget_violations_total{{service_name="{service}"}})': 5,  # 5 metric series, one producer
        f'count(budget_scopes_evicted_total{{service_name="{service}"}})': 1,
        f'count(budget_db_queries_count{{service_name="{service}"}})': 3,
    }
    deadline = time.monotonic() + timeout
    missing = dict(wanted)
    while missing and time.monotonic() < deadline:
        for promql, count in list(missing.items()):
            result = prometheus.query(promql)
            if result and float(result[0]["value"][1]) >= count:
                del missing[promql]
        time.sleep(0.5)
    assert not missing, (
        f"within {timeout:.0f}s Prometheus did not get {sorted(missing)}: is the collector exporting to "
        "127.0.0.1:8889 and Prometheus scraping it? (python3 stack/stack.py status; "
        "curl 127.0.0.1:8889/metrics; Prometheus targets at http://127.0.0.1:9090/targets)"
    )


@pytest.fixture(scope="module")
def live(collector: None, prometheus: PrometheusAPI, jaeger: str, stack_dir: Path) -> Iterator[LiveRun]:
    rules_dir = stack_dir / "rules.d"
    for stale in rules_dir.glob(f"{RULES_PREFIX}*.yml"):  # left by an interrupted run
        stale.unlink()
    traffic = BudgetTraffic.start()
    service = traffic.service_name
    scrape = prometheus.global_interval("scrape_interval")
    evaluation = prometheus.global_interval("evaluation_interval")
    run = LiveRun(service, bound_s=5 + scrape + 2 * evaluation + PIPELINE_SLACK_S)
    rules_file = rules_dir / f"{RULES_PREFIX}{service}.yml"
    try:
        traffic.wave(repeat=2)
        traffic.flush()
        wait_for_series(prometheus, service)
        rules_file.write_text(yaml.safe_dump(short_for_rules(service), sort_keys=False))
        prometheus.reload()
        groups = {g["name"] for g in prometheus.rule_groups()}
        assert f"{RULES_PREFIX}{service}" in groups, f"Prometheus did not load {rules_file}: {sorted(groups)}"

        start = time.monotonic()
        traffic.wave(repeat=6)
        traffic.flush()
        while time.monotonic() - start < run.bound_s + 10 and len(run.firing_after_s) < len(ALERT_NAMES):
            run.last_states = our_alerts(prometheus, service)
            for name, state in run.last_states.items():
                if state == "firing":
                    run.firing_after_s.setdefault(name, round(time.monotonic() - start, 1))
            time.sleep(0.25)
        print(f"\n[alerting e2e] service {service}: firing after {run.firing_after_s} (bound {run.bound_s:.0f}s)")
        yield run
    finally:
        traffic.shutdown()
        if rules_file.exists():
            rules_file.unlink()
            prometheus.reload()
            assert f"{RULES_PREFIX}{service}" not in {g["name"] for g in prometheus.rule_groups()}


def test_violation_series_carry_metric_and_route_or_task(live: LiveRun, prometheus: PrometheusAPI) -> None:
    """The count connector's budget_exceeded_events_total has budget_metric, budget_rule and route+method or task."""
    result = prometheus.query(f'budget_exceeded_events_total{{service_name="{live.service}"}}')
    seen = {
        (m.get("budget_metric"), m.get("budget_rule"), m.get("http_route"), m.get("http_request_method"), m.get("celery_task_name"))
        for m in (r["metric"] for r in result)
    }
    assert seen == {
        ("db.queries", "http", ORDERS_ROUTE, "GET", None),
        ("db.repeated_queries", "http", ORDERS_ROUTE, "GET", None),
        ("memory.growth_mb", "route:reports/*", REPORTS_ROUTE, "GET", None),
        ("db.queries", "celery", None, None, TASK_NAME),
        ("db.repeated_queries", "celery", None, None, TASK_NAME),
    }


VIOLATIONS_SENT = 8 * 5  # 2 + 6 waves, each with 5 violations (2 orders, 1 reports, 2 task)


def total(prometheus: PrometheusAPI, promql: str) -> float:
    result = prometheus.query(promql)
    assert result, promql
    return float(result[0]["value"][1])


def test_library_counter_is_the_one_producer(live: LiveRun, prometheus: PrometheusAPI) -> None:
    """budget_violations_total has one producer, the library's own counter (otel_scope_name="otel_budget")."""
    scopes = {r["metric"].get("otel_scope_name") for r in prometheus.query(f'budget_violations_total{{service_name="{live.service}"}}')}
    assert scopes == {"otel_budget"}


def test_plain_sum_counts_each_violation_once(live: LiveRun, prometheus: PrometheusAPI) -> None:
    """A plain sum() of budget_violations_total is the number of violations sent, not twice it."""
    assert total(prometheus, f'sum(budget_violations_total{{service_name="{live.service}"}})') == VIOLATIONS_SENT


def test_count_connector_counts_every_event(live: LiveRun, prometheus: PrometheusAPI) -> None:
    """Every budget.exceeded event ends up in the count connector's budget_exceeded_events_total."""
    assert total(prometheus, f'sum(budget_exceeded_events_total{{service_name="{live.service}"}})') == VIOLATIONS_SENT


@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_alert_fires_within_its_promise(live: LiveRun, alertname: str) -> None:
    """With `for: 5s`, each alert is firing within for + scrape + 2 evaluations + pipeline slack."""
    assert alertname in live.firing_after_s, (
        f"{alertname} (for: {SHORT_FOR}) for service {live.service} not firing within {live.bound_s + 10:.0f}s; "
        f"last states: {live.last_states}"
    )
    assert live.firing_after_s[alertname] <= live.bound_s


@pytest.mark.parametrize("alertname", ALERT_NAMES)
def test_alert_expression_returns_data(live: LiveRun, prometheus: PrometheusAPI, alertname: str) -> None:
    """The production expression, as is, returns this run's series."""
    expr = next(r["expr"] for r in ALERT_RULES if r["alert"] == alertname)
    services = {r["metric"].get("service_name") for r in prometheus.query(expr)}
    assert live.service in services


def prometheus_regex(value: str) -> str:
    """`value` as Grafana puts a single value into a PromQL regex: metacharacters escaped, backslash doubled."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def substitute(expr: str, service: str) -> str:
    """Grafana's variables as it would send them: one service, All for route / task."""
    values = {"service": prometheus_regex(service), "route": ".*", "task": ".*", "__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


@pytest.mark.parametrize("expr", [e for _, e in DASHBOARD_TARGETS], ids=[t for t, _ in DASHBOARD_TARGETS])
def test_dashboard_query_returns_data(live: LiveRun, prometheus: PrometheusAPI, expr: str) -> None:
    """Each panel query, variables substituted, returns this run's data."""
    result = prometheus.query(substitute(expr, live.service))
    assert result, substitute(expr, live.service)
    assert {r["metric"].get("service_name") for r in result} == {live.service}
    assert any(r["value"][1] not in ("NaN", "0") for r in result)


@pytest.mark.parametrize("variable", DASHBOARD_VARIABLES, ids=[v["name"] for v in DASHBOARD_VARIABLES])
def test_dashboard_variable_lists_this_run(live: LiveRun, prometheus: PrometheusAPI, variable: dict[str, Any]) -> None:
    """label_values(metric{...}, label) finds this run's service, routes and task."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
    assert match, variable["definition"]
    selector, label = substitute(match.group(1), live.service), match.group(2)
    values = {r["metric"].get(label) for r in prometheus.query(f"count by ({label}) ({selector})")}
    expected = {"service": live.service, "route": ORDERS_ROUTE, "task": TASK_NAME}[variable["name"]]
    assert expected in values


def test_runbook_jaeger_search_finds_the_violating_traces(live: LiveRun, jaeger: str, http_get: Callable[[str], Any]) -> None:
    """The search the annotations give (route + budget.metric tags) finds traces with the event and statement."""
    tags = json.dumps({"http.route": ORDERS_ROUTE, "budget.metric": "db.repeated_queries"})
    query = urllib.parse.urlencode({"service": live.service, "lookback": "1h", "limit": "50", "tags": tags})
    traces = http_get(f"{jaeger}/api/traces?{query}")["data"]
    assert traces, f"Jaeger found no trace for service={live.service} tags={tags}"
    events = [
        {f["key"]: f["value"] for f in log["fields"]}
        for trace in traces
        for span in trace["spans"]
        for log in span.get("logs", [])
    ]
    repeated = [e for e in events if e.get("event") == "budget.exceeded" and e.get("budget.metric") == "db.repeated_queries"]
    assert repeated
    assert all(e["budget.statement"] == "SELECT * FROM shop_item WHERE order_id = ? AND id = ?" for e in repeated)
