"""`otel-budget report` against the stack's Jaeger, after real spans went through the collector."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from cli_support import emit_workload, make_provider, run_cli
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.trace import SpanKind

from otel_budget.results import ScopeResult

from tests.browser import parse_dom, select
from tests.stack_services import require_reachable

JAEGER = "http://127.0.0.1:16686"
SERVICES = {"collector (OTLP gRPC)": ("127.0.0.1", 4317), "Jaeger (query API)": ("127.0.0.1", 16686)}
SCOPES = 16  # emit_workload's requests, tasks and scope


def scope_spans_in_jaeger(service: str) -> int:
    query = urllib.parse.urlencode({"service": service, "limit": 100, "lookback": "1h"})
    with urllib.request.urlopen(f"{JAEGER}/api/traces?{query}", timeout=10) as response:
        traces = json.load(response)["data"] or []
    return sum(
        any(tag["key"] == "budget.violations" for tag in span["tags"]) for trace in traces for span in trace["spans"]
    )


@pytest.fixture(scope="module")
def service() -> str:
    """A fresh service name whose workload went app → collector :4317 → Jaeger, and has arrived."""
    require_reachable(SERVICES)
    name = f"otel-budget-cli-test-{uuid.uuid4().hex[:8]}"
    provider = make_provider(name, OTLPSpanExporter(endpoint="127.0.0.1:4317", insecure=True, timeout=10))
    emit_workload(provider, t0=time.time_ns() - 120 * 1_000_000_000)
    provider.shutdown()
    deadline = time.monotonic() + 30
    arrived = 0
    while time.monotonic() < deadline:
        arrived = scope_spans_in_jaeger(name)
        if arrived >= SCOPES:
            return name
        time.sleep(0.5)
    pytest.fail(f"Jaeger has {arrived} of {SCOPES} scope spans of {name} after 30 s: is the collector forwarding to it?")


def test_names_worst_route_and_task(service: str) -> None:
    """The text report names the worst route and the worst task, with trace links into Jaeger."""
    result = run_cli("report", "--service", service, "--lookback", "1h")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"otel-budget report: 16 scopes (8 requests, 7 tasks, 1 scope) in 16 traces; "
        f"Jaeger {JAEGER}; services {service}; last 1h"
    )
    assert lines[1].startswith(
        f"worst request: GET orders/<int:pk>/: 3 of 5 over budget, 5 budget.exceeded event(s), e.g. {JAEGER}/trace/"
    )
    assert lines[2].startswith(
        f"worst task: task shop.tasks.rebuild: 2 of 4 over budget, 2 budget.exceeded event(s), e.g. {JAEGER}/trace/"
    )
    assert re.fullmatch(rf"jaeger: {service}: 16 trace\(s\), 16 new scope span\(s\) \(\d+\.\ds\)\n", result.stderr)


def test_same_numbers_as_the_exporter_saw(service: str) -> None:
    """Read back from Jaeger, percentiles, limits and counts are exactly those of the spans sent."""
    result = run_cli("report", "--service", service, "--format", "json", "-q")
    data = json.loads(result.stdout)
    summary = [(r["label"], r["metric"], r["p50"], r["p95"], r["limit"], r["violations"]) for r in data["offenders"]]
    assert summary == [
        ("GET orders/<int:pk>/", "db.repeated_queries", 6, 10, 5, 3),
        ("task shop.tasks.rebuild", "duration_ms", 200, 400, 250, 2),
        ("GET orders/<int:pk>/", "db.queries", 7, 11, 8, 2),
        ("scope nightly-import", "db.queries", 3, 3, 2, 1),
        ("task shop.tasks.send_email", "duration_ms", 10, 300, 250, 1),
        ("GET products/", "db.queries", 1, 9, 8, 1),
    ]
    trace_link = data["worst"][0]["example_trace"]
    with urllib.request.urlopen(trace_link.replace("/trace/", "/api/traces/"), timeout=10) as response:
        assert json.load(response)["data"][0]["traceID"] == trace_link.rsplit("/", 1)[1]


def test_every_service_by_default(service: str) -> None:
    """Without --service, every service Jaeger lists is read, ours among them."""
    result = run_cli("report", "--format", "json", "--lookback", "1h")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert service in data["sources"]["services"].split(", ")
    assert data["scopes"] >= SCOPES
    assert result.stderr.startswith(f"jaeger: listing services at {JAEGER}/api/services\n")


def test_trace_cap_is_a_warning(service: str) -> None:
    """A service that hit --limit is named in a warning: the report did not see the whole lookback."""
    result = run_cli("report", "--service", service, "--limit", "5", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        f"warning: only the newest 5 traces were read of {service} (--limit): older traces in the lookback "
        "are not counted; raise --limit or shorten --lookback"
    )
    data = json.loads(run_cli("report", "--service", service, "--format", "json", "-q").stdout)
    assert (data["capped"], data["warnings"]) == ([], [])


def test_no_such_service(service: str) -> None:
    """A service Jaeger does not know: exit 2 and the services it does know."""
    result = run_cli("report", "--service", "nosuch", "-q")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: no such service in Jaeger: nosuch (known: ")
    assert service in result.stderr


def test_fail_on_violation_from_jaeger(service: str) -> None:
    """--fail-on-violation gates on what Jaeger holds: the workload has budget.exceeded events."""
    result = run_cli("report", "--service", service, "--fail-on-violation", "-q")
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("otel-budget report: 16 scopes")


def test_html_page_from_jaeger(service: str, tmp_path: Path) -> None:
    """--html reads each waterfall's trace from Jaeger (/api/traces/<id>): the markers where the limits
    were crossed, the spans as the exporter sent them."""
    page = tmp_path / "report.html"
    result = run_cli("report", "--service", service, "--html", str(page))
    assert result.returncode == 0, result.stderr
    assert result.stdout == run_cli("report", "--service", service, "-q").stdout
    fetched = re.findall(r"^jaeger: reading trace ([0-9a-f]{32}) for its waterfall$", result.stderr, re.M)
    assert len(fetched) == 5 and result.stderr.endswith(f"wrote {page} (6 row(s), 5 waterfall(s))\n")
    dom = parse_dom(page.read_text())
    assert [w.attrs["data-trace"] for w in select(dom, "div", "waterfall")] == fetched
    crossings = [(c.attrs["data-metric"], c.attrs["data-offset-ms"]) for c in select(dom, "g", "crossing")]
    assert crossings == [
        ("db.repeated_queries", "12.000"),
        ("db.queries", "18.000"),
        ("duration_ms", "400.000"),
        ("db.queries", "6.000"),
        ("duration_ms", "300.000"),
        ("db.queries", "18.000"),
    ]
    spans = select(dom, "g", "span")
    assert (sum("repeated" in g.classes for g in spans), sum("db" in g.classes for g in spans)) == (10, 13)


def test_requests_without_route_are_reported_as_the_processor_named_them() -> None:
    """Route-less ASGI requests (span names are raw paths) are `<method> unmatched` in the report, as in the processor."""
    require_reachable(SERVICES)
    name = f"otel-budget-cli-unmatched-{uuid.uuid4().hex[:8]}"
    published: list[ScopeResult] = []
    provider = make_provider(name, OTLPSpanExporter(endpoint="127.0.0.1:4317", insecure=True, timeout=10), published.append)
    tracer = provider.get_tracer("asgi")
    for method, path, queries in (("GET", "/aorm/20/", 9), ("GET", "/aorm/21/", 10), ("POST", "/aorm/22/", 12)):
        attributes = {"http.request.method": method, "url.path": path, "url.scheme": "http"}
        with tracer.start_as_current_span(f"{method} {path}", kind=SpanKind.SERVER, attributes=attributes):
            for number in range(queries):
                tracer.start_span("SELECT", kind=SpanKind.CLIENT, attributes={
                    "db.system": "postgresql", "db.statement": f"SELECT * FROM shop_order WHERE id = {number}",
                }).end()  # fmt: skip
    provider.shutdown()
    assert [(r.name, r.values["db.queries"]) for r in published] == [("GET unmatched", 9), ("GET unmatched", 10), ("POST unmatched", 12)]
    deadline = time.monotonic() + 30
    while scope_spans_in_jaeger(name) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    result = run_cli("report", "--service", name, "--format", "json", "-q", "--lookback", "1h")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["scopes"] == 3
    offenders = [(r["label"], r["metric"], r["p50"], r["limit"], r["violations"]) for r in data["offenders"]]
    assert sorted(offenders) == [
        ("GET unmatched", "db.queries", 9, 8, 2),
        ("GET unmatched", "db.repeated_queries", 9, 5, 2),
        ("POST unmatched", "db.queries", 12, 8, 1),
        ("POST unmatched", "db.repeated_queries", 12, 5, 1),
    ]
    assert [row["label"] for row in data["worst"]] == ["GET unmatched"]
    assert "/aorm/" not in result.stdout
