"""`otel-budget report` on an OTLP/JSON file made from real SDK spans: exact percentiles and counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_support import run_cli


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
    assert lines[5].split() == ["scope", "metric", "runs", "p50", "p95", "limit", "over", "example", "trace"]
    assert lines[6].split()[:8] == ["GET", "orders/<int:pk>/", "db.repeated_queries", "5", "6", "10", "5", "3"]
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
    """A Jaeger that is not there: exit 1 and how to start it."""
    result = run_cli("report", "--jaeger", "http://127.0.0.1:9", "-q")
    assert result.returncode == 1
    assert result.stderr == (
        "error: cannot reach Jaeger at http://127.0.0.1:9/api/services: [Errno 111] Connection refused "
        "(is it running? `make stack` starts it)\n"
    )


def test_bad_lookback() -> None:
    """--lookback takes a number and a unit."""
    result = run_cli("report", "--lookback", "an hour")
    assert result.returncode == 2
    assert result.stderr.endswith(
        "otel-budget report: error: argument --lookback: invalid lookback 'an hour': "
        "use a number and a unit s, m, h, d or w, e.g. 30m, 1h, 2d\n"
    )
