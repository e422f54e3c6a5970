"""`otel-budget report --html` on an OTLP/JSON file made from real SDK spans: the page beside the report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_support import run_cli

from tests.browser import parse_dom, select


def test_page_beside_the_text_report(workload_json: Path, tmp_path: Path) -> None:
    """stdout is the same report with or without --html; the page has every row and 5 waterfalls."""
    page = tmp_path / "report.html"
    plain = run_cli("report", "--otlp-json", str(workload_json))
    with_html = run_cli("report", "--otlp-json", str(workload_json), "--html", str(page))
    assert (with_html.returncode, with_html.stdout) == (0, plain.stdout)
    assert with_html.stderr == f"reading {workload_json}\nwrote {page} (6 row(s), 5 waterfall(s))\n"
    dom = parse_dom(page.read_text())
    assert len(select(dom, "div", "offender")) == 6
    waterfalls = select(dom, "div", "waterfall")
    assert [w.attrs["data-label"] for w in waterfalls] == [
        "GET orders/<int:pk>/",  # its db.repeated_queries and db.queries rows share their worst trace
        "task shop.tasks.rebuild",
        "scope nightly-import",
        "task shop.tasks.send_email",
        "GET products/",
    ]


def test_crossings_from_the_file(workload_json: Path, tmp_path: Path) -> None:
    """The waterfalls' spans come from the same file; each marker sits where its limit was crossed."""
    page = tmp_path / "report.html"
    assert run_cli("report", "--otlp-json", str(workload_json), "--html", str(page), "-q").returncode == 0
    dom = parse_dom(page.read_text())
    crossings = [(c.attrs["data-metric"], c.attrs["data-limit"], c.attrs["data-offset-ms"]) for c in select(dom, "g", "crossing")]
    # orders x5 (i = 5): 2i repeats then one other query, 1 ms each, 2 ms apart from 1 ms in; the 6th repeat
    # ends at 12 ms, the 9th query at 18 ms. Tasks: duration_ms, known at the end. nightly-import: the 3rd of 3 inserts.
    assert crossings == [
        ("db.repeated_queries", "5", "12.000"),
        ("db.queries", "8", "18.000"),
        ("duration_ms", "250", "400.000"),
        ("db.queries", "2", "6.000"),
        ("duration_ms", "250", "300.000"),
        ("db.queries", "8", "18.000"),
    ]
    spans = select(dom, "g", "span")
    assert sum("repeated" in g.classes for g in spans) == 10
    assert sum("db" in g.classes for g in spans) == 1 + 3 + 9  # orders' other query, the inserts, products' 9


def test_waterfalls_option(workload_json: Path, tmp_path: Path) -> None:
    """--waterfalls N draws the traces of the N worst offenders only."""
    page = tmp_path / "report.html"
    result = run_cli("report", "--otlp-json", str(workload_json), "--html", str(page), "--waterfalls", "2", "-q")
    assert result.returncode == 0, result.stderr
    assert len(select(parse_dom(page.read_text()), "div", "waterfall")) == 2


def test_unwritable_page(workload_json: Path, tmp_path: Path) -> None:
    """A page that cannot be written is exit 1, after the report was printed."""
    result = run_cli("report", "--otlp-json", str(workload_json), "--html", str(tmp_path / "no" / "such.html"), "-q")
    assert result.returncode == 1
    assert result.stdout.startswith("otel-budget report: 16 scopes")
    assert result.stderr == f"error: cannot write {tmp_path / 'no' / 'such.html'}: No such file or directory\n"


def test_a_trace_jaeger_cannot_give_is_a_warning(
    workload_json: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault injected: Jaeger lists the scopes but cannot give their traces. The page is still written, each
    waterfall saying why, with a warning on stderr even with -q; the exit status is the report's."""
    from otel_budget import cli, sources

    scopes = sources.read_otlp_json(str(workload_json))
    monkeypatch.setattr(sources, "read_jaeger", lambda *a, **k: sources.JaegerRead(scopes, ["shop"], []))

    def no_trace(url: str, trace_id: str, *, timeout: float = 30.0) -> list[sources.TraceSpan]:
        raise sources.SourceError(f"Jaeger has no trace {trace_id}")

    monkeypatch.setattr(sources, "read_jaeger_trace", no_trace)
    page = tmp_path / "report.html"
    assert cli.main(["report", "--html", str(page), "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and all(re.fullmatch(r"warning: no waterfall for trace (\w{32}): Jaeger has no trace \1", e) for e in err)
    text = page.read_text()
    assert text.count("The trace could not be read: Jaeger has no trace ") == 5
    assert select(parse_dom(text), "g", "crossing") == []
