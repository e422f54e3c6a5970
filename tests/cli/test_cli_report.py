"""`otel-budget report` on an OTLP/JSON file made from real SDK spans: exact percentiles and counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import emit_workload, make_provider, otlp_json, run_cli
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def report_json(*args: str) -> dict[str, Any]:
    result = run_cli("report", "--format", "json", "-q", *args)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def rows(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["label"], row["metric"]): row for row in data["offenders"]}


def test_counts_scopes_by_kind(workload_json: Path) -> None:
    """Every scope span is read: 8 requests, 7 tasks, 1 explicit scope, one trace each."""
    data = report_json("--otlp-json", str(workload_json))
    assert (data["scopes"], data["traces"], data["scopes_by_kind"]) == (16, 16, {"http": 8, "celery": 7, "scope": 1})


def test_offenders_exact(workload_json: Path) -> None:
    """Percentiles (nearest rank), limits from the events and violation counts, worst first."""
    data = report_json("--otlp-json", str(workload_json))
    summary = [
        (row["label"], row["metric"], row["runs"], row["p50"], row["p95"], row["max"], row["limit"], row["violations"])
        for row in data["offenders"]
    ]
    assert summary == [
        ("GET orders/<int:pk>/", "db.repeated_queries", 5, 6, 10, 10, 5, 3),
        ("task shop.tasks.rebuild", "duration_ms", 4, 200, 400, 400, 250, 2),
        ("GET orders/<int:pk>/", "db.queries", 5, 7, 11, 11, 8, 2),
        ("scope nightly-import", "db.queries", 1, 3, 3, 3, 2, 1),
        ("task shop.tasks.send_email", "duration_ms", 3, 10, 300, 300, 250, 1),
        ("GET products/", "db.queries", 3, 1, 9, 9, 8, 1),
    ]


def test_statement_and_example_traces(workload_json: Path) -> None:
    """The N+1 row carries the normalised statement and links to the worst traces first."""
    data = report_json("--otlp-json", str(workload_json))
    row = rows(data)[("GET orders/<int:pk>/", "db.repeated_queries")]
    assert row["statement"] == "SELECT * FROM shop_customer WHERE id = ?"
    assert len(row["example_traces"]) == 3
    assert all(link.startswith("http://127.0.0.1:16686/trace/") and len(link) == 29 + 32 for link in row["example_traces"])


def test_worst_request_task_and_scope(workload_json: Path) -> None:
    """The route, task and scope with the most runs over budget."""
    data = report_json("--otlp-json", str(workload_json))
    worst = [(w["label"], w["runs"], w["over"], w["violations"]) for w in data["worst"]]
    assert worst == [
        ("GET orders/<int:pk>/", 5, 3, 5),
        ("task shop.tasks.rebuild", 4, 2, 2),
        ("scope nightly-import", 1, 1, 1),
    ]


def test_budgets_file_adds_rows_within_budget(workload_json: Path, budgets_file: Path) -> None:
    """With --budgets, limited metrics without events are listed too (after the offenders)."""
    data = report_json("--otlp-json", str(workload_json), "--budgets", str(budgets_file), "--top", "50")
    within = rows(data)[("GET products/", "db.repeated_queries")]
    assert (within["p50"], within["p95"], within["limit"], within["violations"]) == (1, 1, 5, 0)
    # external.untimed_calls = 0 is built into every section: one more row within budget per scope.
    untimed = [r for r in data["offenders"] if r["metric"] == "external.untimed_calls"]
    assert (len(data["offenders"]) - len(untimed), len(untimed), {r["p95"] for r in untimed}) == (10, 5, {0})
    assert data["sources"]["budgets"] == str(budgets_file)


def test_top_limits_rows(workload_json: Path) -> None:
    """--top N keeps the N worst rows."""
    data = report_json("--otlp-json", str(workload_json), "--top", "2")
    assert [(r["label"], r["metric"]) for r in data["offenders"]] == [
        ("GET orders/<int:pk>/", "db.repeated_queries"),
        ("task shop.tasks.rebuild", "duration_ms"),
    ]


def test_text_output(workload_json: Path) -> None:
    """The text report: header, worst lines, a table with the statement under the N+1 row."""
    result = run_cli("report", "--otlp-json", str(workload_json), "--jaeger", "http://jaeger.example:16686")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"otel-budget report: 16 scopes (8 requests, 7 tasks, 1 scope) in 16 traces; from {workload_json}"
    )
    assert lines[1].startswith("worst request: GET orders/<int:pk>/: 3 of 5 over budget, 5 budget.exceeded event(s), "
                               "e.g. http://jaeger.example:16686/trace/")  # fmt: skip
    assert lines[2].startswith("worst task: task shop.tasks.rebuild: 2 of 4 over budget, 2 budget.exceeded event(s)")
    assert lines[5].split() == ["service", "scope", "metric", "runs", "p50", "p95", "limit", "over", "example", "trace"]
    assert lines[6].split()[:9] == ["shop", "GET", "orders/<int:pk>/", "db.repeated_queries", "5", "6", "10", "5", "3"]
    assert lines[7] == "    statement: SELECT * FROM shop_customer WHERE id = ?"
    assert result.stderr == f"reading {workload_json}\n"


def test_jaeger_v3_answer(workload_json: Path, tmp_path: Path) -> None:
    """Jaeger's /api/v3/traces answer ({"result": {...}}) reads the same as the file exporter's lines."""
    document = json.loads(workload_json.read_text())
    v3 = tmp_path / "v3.json"
    v3.write_text(json.dumps({"result": document}, indent=1))
    assert report_json("--otlp-json", str(v3))["offenders"] == report_json("--otlp-json", str(workload_json))["offenders"]


def test_not_otlp_json(tmp_path: Path) -> None:
    """A JSON file without resourceSpans: exit 1 and what was found instead."""
    path = tmp_path / "other.json"
    path.write_text('{"data": []}')
    result = run_cli("report", "--otlp-json", str(path), "-q")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "error: not OTLP/JSON traces: no resourceSpans (keys: data)\n"


def test_unreachable_jaeger() -> None:
    """A Jaeger that is not there: exit 1, the URL tried and how to pass another."""
    result = run_cli("report", "--jaeger", "http://127.0.0.1:9", "-q")
    assert result.returncode == 1
    assert result.stderr == (
        "error: cannot reach Jaeger at http://127.0.0.1:9/api/services: [Errno 111] Connection refused "
        "(tried Jaeger's query API, the UI's address, usually port 16686; pass another with --jaeger URL, "
        "e.g. --jaeger http://jaeger.internal:16686)\n"
    )


def test_jaeger_without_a_scheme_means_http() -> None:
    """`--jaeger host:port` is read as http://host:port, for the query and the trace links."""
    result = run_cli("report", "--jaeger", "127.0.0.1:9", "-q")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach Jaeger at http://127.0.0.1:9/api/services: [Errno 111]")


def test_trace_links_without_a_scheme(workload_json: Path) -> None:
    data = report_json("--otlp-json", str(workload_json), "--jaeger", "jaeger.example:16686")
    assert data["worst"][0]["example_trace"].startswith("http://jaeger.example:16686/trace/")


def test_bad_lookback() -> None:
    """--lookback takes a number and a unit."""
    result = run_cli("report", "--lookback", "an hour")
    assert result.returncode == 2
    assert result.stderr.endswith(
        "otel-budget report: error: argument --lookback: invalid lookback 'an hour': "
        "use a number and a unit s, m, h, d or w, e.g. 30m, 1h, 2d\n"
    )


def otlp_scope_span(service: str, attributes: dict[str, Any], trace_id: str = "ab" * 16) -> dict[str, Any]:
    """One OTLP/JSON request holding one HTTP scope span of `service` with `attributes`."""
    attrs = {"http.route": "books/", "http.request.method": "GET", **attributes}
    values = [
        {"key": key, "value": {"intValue": str(value)} if isinstance(value, int) else {"stringValue": value}}
        for key, value in attrs.items()
    ]
    span = {"traceId": trace_id, "spanId": "cd" * 8, "name": "GET books/", "kind": 2, "attributes": values}
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}


@pytest.fixture
def two_services(tmp_path: Path) -> Path:
    """The same workload from two services, which share every route and task."""
    lines = []
    for service in ("shop", "shop-copy"):
        exporter = InMemorySpanExporter()
        provider = make_provider(service, exporter)
        emit_workload(provider, t0=1_700_000_000_000_000_000)
        provider.shutdown()
        lines.append(json.dumps(otlp_json(exporter.get_finished_spans())))
    path = tmp_path / "two.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rows_per_service(two_services: Path) -> None:
    """Two services' rows for a shared route stay apart, each with its service and its own runs."""
    data = report_json("--otlp-json", str(two_services))
    rows = [(r["service"], r["runs"], r["violations"]) for r in data["offenders"] if r["metric"] == "db.repeated_queries"]
    assert rows == [("shop", 5, 3), ("shop-copy", 5, 3)]
    assert data["services"] == ["shop", "shop-copy"]
    assert {w["service"] for w in data["worst"]} <= {"shop", "shop-copy"}


def test_text_has_a_service_column(two_services: Path) -> None:
    result = run_cli("report", "--otlp-json", str(two_services), "-q")
    table = result.stdout.splitlines()
    rows = [line.split()[:4] for line in table if "db.repeated_queries" in line]
    assert rows == [
        ["shop", "GET", "orders/<int:pk>/", "db.repeated_queries"],
        ["shop-copy", "GET", "orders/<int:pk>/", "db.repeated_queries"],
    ]
    assert table[1].startswith("worst request: GET orders/<int:pk>/ (shop): 3 of 5 over budget")


def test_fail_on_violation(workload_json: Path, tmp_path: Path) -> None:
    """--fail-on-violation: exit 1 when a budget.exceeded event was read, 0 when none was; 0 without it."""
    assert run_cli("report", "--otlp-json", str(workload_json), "-q").returncode == 0
    assert run_cli("report", "--otlp-json", str(workload_json), "-q", "--fail-on-violation").returncode == 1
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(otlp_scope_span("shop", {"budget.violations": 0, "budget.db.queries": 1})))
    result = run_cli("report", "--otlp-json", str(clean), "-q", "--fail-on-violation")
    assert (result.returncode, result.stderr) == (0, "")


def test_service_on_a_broken_budgets_file_is_flagged(tmp_path: Path) -> None:
    """A service whose spans carry budget.config_error gets a warning in text and JSON."""
    error = "budgets.toml: http.db.querys: unknown metric; did you mean 'db.queries'?"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(otlp_scope_span("shop", {"budget.violations": 0, "budget.config_error": error})))
    warning = f"warning: service shop runs on a budgets file it cannot use, so on the built-in defaults: {error}"
    text = run_cli("report", "--otlp-json", str(path), "-q").stdout.splitlines()
    assert text[1] == warning
    data = report_json("--otlp-json", str(path))
    assert (data["config_errors"], data["warnings"]) == ({"shop": error}, [warning])
