"""dashboards/grafana/otel-budget.json is a current-Grafana dashboard that any Prometheus can feed.

Its queries are run against the real Prometheus in test_alerting_e2e.py.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import yaml
from alerting_stack import DASHBOARD, REPO

DATASOURCE_REF = "${datasource}"


def walk(node: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def test_schema_version_is_current(dashboard: dict[str, Any]) -> None:
    """schemaVersion 39+ (Grafana 10.3 / 11), a uid and a title."""
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert "__inputs" not in dashboard, "an 'export for sharing' dashboard pins ${DS_...} inputs"


def test_datasource_variable_is_prometheus(dashboard: dict[str, Any]) -> None:
    """A `datasource` template variable of type prometheus picks the data source."""
    variable = variables(dashboard)["datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"


def test_no_hard_coded_datasource_uid(dashboard: dict[str, Any]) -> None:
    """Every data source reference is `${datasource}` (the built-in Grafana annotation aside)."""
    for path, node in walk(dashboard):
        if isinstance(node, dict) and path.endswith(".datasource"):
            if node.get("type") == "grafana":
                continue
            assert node == {"type": "prometheus", "uid": DATASOURCE_REF}, path


def test_every_panel_queries_through_the_variable(dashboard: dict[str, Any]) -> None:
    """Panels with queries name the variable at panel and target level; ids are unique."""
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_REF, panel["title"]
            assert target["expr"].strip(), panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]


def test_panels_cover_the_brief(dashboard: dict[str, Any]) -> None:
    """Violations over time, top offenders, p50/p95 DB queries, DB time and memory growth from histograms."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert any("budget_violations_total" in e and "$__rate_interval" in e for e in exprs)
    assert any(e.startswith("topk(") for e in exprs)
    for histogram in ("budget_db_queries_bucket", "budget_db_duration_milliseconds_bucket", "budget_memory_growth_MiB_bucket"):
        quantiles = {q for e in exprs if histogram in e for q in re.findall(r"histogram_quantile\((0\.\d+)", e)}
        assert {"0.95"} <= quantiles, histogram
    assert {"0.5", "0.95"} <= {q for e in exprs if "budget_db_queries_bucket" in e for q in re.findall(r"histogram_quantile\((0\.\d+)", e)}


def panel_links(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        link
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for link in panel["fieldConfig"]["defaults"].get("links", [])
    ]


def test_data_links_lead_to_jaeger(dashboard: dict[str, Any]) -> None:
    """Route and task panels link to a Jaeger search by route / task through the `jaeger_url` variable."""
    assert variables(dashboard)["jaeger_url"]["type"] == "textbox"
    links = [link for link in panel_links(dashboard) if link["title"].endswith("in Jaeger")]
    assert links
    for link in links:
        assert link["url"].startswith("${jaeger_url}/search?service=")
        assert "tags=%7B" in link["url"]
    urls = " ".join(link["url"] for link in links)
    assert "%22http.route%22" in urls and "%22celery.task_name%22" in urls and "%22budget.metric%22" in urls


def test_every_jaeger_link_has_its_tempo_twin(dashboard: dict[str, Any]) -> None:
    """Each Jaeger link has a Tempo one: Explore on the `tempo` data source, TraceQL on the same fields."""
    assert variables(dashboard)["tempo"]["type"] == "datasource"
    assert variables(dashboard)["tempo"]["query"] == "tempo"
    links = panel_links(dashboard)
    jaeger = [link for link in links if link["title"].endswith("in Jaeger")]
    tempo = [link for link in links if link["title"].endswith("in Tempo")]
    assert len(links) == len(jaeger) + len(tempo) and len(jaeger) == len(tempo)
    for link in tempo:
        assert link["url"].startswith("/explore?schemaVersion=1&orgId=1&panes=")
        panes = json.loads(urllib.parse.unquote(link["url"].split("panes=", 1)[1]))
        query = panes["tr"]["queries"][0]
        assert panes["tr"]["datasource"] == query["datasource"]["uid"] == "${tempo}"
        assert query["queryType"] == "traceql"
        assert query["query"].startswith('{ resource.service.name = "${__')
        for field in re.findall(r"\$\{(__(?:field\.labels|data\.fields)\.\w+)", query["query"]):
            twin = next(j for j in jaeger if j["title"] == link["title"].replace("in Tempo", "in Jaeger"))
            assert field in twin["url"], (link["title"], field)
        if "budget_metric" in query["query"]:
            assert 'event:name = "budget.exceeded" && event.budget.metric = ' in query["query"]


def test_provisioning_points_at_the_dashboard() -> None:
    """The provisioning files are valid YAML: one Prometheus data source, one file provider."""
    root = REPO / "dashboards" / "grafana" / "provisioning"
    datasources = yaml.safe_load((root / "datasources" / "otel-budget.yaml").read_text())
    providers = yaml.safe_load((root / "dashboards" / "otel-budget.yaml").read_text())
    assert [d["type"] for d in datasources["datasources"] if d.get("isDefault")] == ["prometheus"]
    by_type = {d["type"]: d for d in datasources["datasources"]}
    assert by_type["tempo"]["url"] == "http://tempo:3200" and by_type["tempo"]["uid"] == "tempo"
    assert by_type["tempo"]["jsonData"]["tracesToMetrics"]["datasourceUid"] == by_type["prometheus"]["uid"]
    assert providers["providers"][0]["type"] == "file"
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/otel-budget"
    assert DASHBOARD.exists()
