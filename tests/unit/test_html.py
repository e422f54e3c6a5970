"""The HTML report's renderer (`otel_budget._html`), on hand-made scopes and trace spans."""

from __future__ import annotations

import re

from otel_budget._html import COLOURS, MAX_WATERFALL_SPANS, Waterfall, pick_waterfalls, render_html, waterfalls_for
from otel_budget.names import ScopeKind
from otel_budget.report import build_report
from otel_budget.results import ScopeResult, Violation
from otel_budget.sources import TraceSpan
from tests.browser import Dom, parse_dom, select

JAEGER = "http://127.0.0.1:16686"
MS = 1_000_000
T0 = 1_700_000_000_000_000_000
ROUTE = "orders/<int:pk>/"
REPEATED = "SELECT * FROM shop_customer WHERE id = ?"


def dom(page: str) -> Dom:
    return parse_dom(page)


def orders_scope(i: int, *, route: str = ROUTE, statement: str = REPEATED) -> ScopeResult:
    """GET orders/: `i` repeats of one statement and one other query; over db.queries 8 / repeated 5 from i = 6."""
    start = T0 + i * 100 * MS
    violations = []
    if i > 5:
        violations.append(Violation("db.repeated_queries", 5, i, "http", start + (1 + 2 * 5 + 1) * MS, statement))
    if i + 1 > 8:
        violations.append(Violation("db.queries", 8, i + 1, "http", start + (1 + 2 * 7 + 1) * MS))
    return ScopeResult(
        kind=ScopeKind.HTTP, name=route, method="GET", rule="http",
        values={"db.queries": i + 1, "db.repeated_queries": i}, violations=tuple(violations),
        trace_id=1000 + i, span_id=1, repeated_statement=statement if i > 5 else None, service="shop", start_ns=start,
    )  # fmt: skip


def orders_trace(scope: ScopeResult, raw: str = "SELECT * FROM shop_customer WHERE id = 7") -> list[TraceSpan]:
    """The scope span (50 ms), its queries 1 ms each every 2 ms, and a task it enqueued (a nested scope span)."""
    assert scope.start_ns is not None
    start = scope.start_ns
    repeats = int(scope.values["db.repeated_queries"])
    spans = [TraceSpan(1, 0, f"GET {ROUTE}", "shop", start, start + 50 * MS, scope=True)]
    statements = [raw] * repeats + ["SELECT * FROM shop_order WHERE id = 3"]
    for n, statement in enumerate(statements):
        key = "SELECT * FROM shop_customer WHERE id = ?" if statement == raw else "SELECT * FROM shop_order WHERE id = ?"
        begin = start + (1 + 2 * n) * MS
        spans.append(TraceSpan(10 + n, 1, "SELECT", "shop", begin, begin + MS, statement, "postgresql", key))
    spans.append(TraceSpan(90, 1, "apply_async/shop.tasks.mail", "shop", start + 40 * MS, start + 41 * MS))
    spans.append(TraceSpan(91, 90, "run/shop.tasks.mail", "worker", start + 60 * MS, start + 900 * MS, scope=True))
    spans.append(TraceSpan(92, 91, "SELECT", "worker", start + 61 * MS, start + 62 * MS, "SELECT 1", "postgresql", "SELECT ?"))
    return spans


def page_of(scopes: list[ScopeResult], count: int = 5, traces: dict[int, list[TraceSpan] | str] | None = None) -> str:
    report = build_report(scopes, sources={"from": "test.jsonl"})
    picked = pick_waterfalls(report, scopes, count)
    if traces is None:
        traces = {s.trace_id: orders_trace(s) for s in picked}
    return render_html(report, waterfalls_for(picked, traces), jaeger_url=JAEGER)


def test_one_bar_pair_and_limit_per_offender() -> None:
    """Each route and metric with a limit is one row: a p50 bar, a p95 bar and the limit, with their values."""
    page = page_of([orders_scope(i) for i in range(1, 10)])
    rows = select(page, "div", "offender")
    assert [(r.attrs["data-label"], r.attrs["data-metric"], r.attrs["data-violations"]) for r in rows] == [
        ("GET orders/<int:pk>/", "db.repeated_queries", "4"),
        ("GET orders/<int:pk>/", "db.queries", "2"),
    ]
    assert [e.attrs["data-value"] for e in select(page, "rect", "bar", "p50")] == ["5", "6"]
    assert [e.attrs["data-value"] for e in select(page, "rect", "bar", "p95")] == ["9", "10"]
    assert [e.attrs["data-value"] for e in select(page, "rect", "limit")] == ["5", "8"]


def test_bar_lengths_share_a_scale_with_the_limit() -> None:
    """Within a row, bar widths and the limit's position are proportional to their values."""
    page = page_of([orders_scope(i) for i in range(1, 10)])
    p50, p95, limit = (select(page, "rect", *classes)[1] for classes in (("p50",), ("p95",), ("limit",)))
    # db.queries: p50 6, p95 10, limit 8 on a scale of 10 * 1.1 over 560 px
    assert (int(p50.attrs["width"]), int(p95.attrs["width"]), int(limit.attrs["x"])) == (305, 509, 407)


def test_p95_over_the_limit_has_its_own_colour() -> None:
    """A p95 above the limit is classed `over` and drawn in the `p95 over` colour; within the limit it is not."""
    over = page_of([orders_scope(9)] * 3)
    assert [(e.classes, e.attrs["fill"]) for e in select(over, "rect", "p95")] == [
        ({"bar", "p95", "over"}, COLOURS["p95 over"])
    ] * 2
    within = page_of([orders_scope(1)] * 19 + [orders_scope(9)])  # one run in 20 over: p95 is 2 queries, 1 repeat
    assert [(e.attrs["data-value"], e.classes, e.attrs["fill"]) for e in select(within, "rect", "p95")] == [
        ("2", {"bar", "p95"}, COLOURS["p95"]),  # db.queries: 2/8 of its limit, ranked first
        ("1", {"bar", "p95"}, COLOURS["p95"]),
    ]


def test_waterfall_marks_each_crossing_at_its_moment() -> None:
    """One marker per budget.exceeded event, named by its metric, where its timestamp falls on the axis."""
    page = page_of([orders_scope(9)])
    (waterfall,) = select(page, "div", "waterfall")
    assert waterfall.attrs["data-crossings"] == "2"
    crossings = select(page, "g", "crossing")
    assert [(c.attrs["data-metric"], c.attrs["data-limit"], c.attrs["data-offset-ms"]) for c in crossings] == [
        ("db.repeated_queries", "5", "12.000"),
        ("db.queries", "8", "16.000"),
    ]
    markers = [e for e in dom(page).elements if e.tag == "rect" and e.attrs.get("fill") == COLOURS["crossing"]]
    # axis: 370 px of labels, 720 px for the 50 ms of the scope span
    assert [int(m.attrs["x"]) + 1 for m in markers] == [round(370 + 12 / 50 * 720), round(370 + 16 / 50 * 720)]
    assert "db.repeated_queries &gt; 5" in page and "db.queries &gt; 8" in page


def test_waterfall_spans_and_the_repeated_statement() -> None:
    """The scope span, then its DB spans labelled with their statement; the repeats in their own colour."""
    page = page_of([orders_scope(9)])
    kinds = [(" ".join(sorted(g.classes - {"span"})) or "span", g.attrs["data-start-ms"]) for g in select(page, "g", "span")]
    assert kinds == [("scope", "0.000")] + [("repeated", f"{1 + 2 * n}.000") for n in range(9)] + [
        ("db", "19.000"),
        ("span", "40.000"),  # the producer span; the task it enqueued is a scope of its own, not drawn
    ]
    texts = dom(page).texts
    assert texts.count("  SELECT * FROM shop_customer WHERE id = ?") == 9  # normalised; the raw text in its title
    assert texts.count("SELECT * FROM shop_customer WHERE id = 7 (1.00 ms)") == 9
    assert "repeated statement: " in texts and texts.count(REPEATED) == 2  # in the bars and in the waterfall


def test_values_from_spans_are_escaped() -> None:
    """A `<script>` in a route or a statement is text on the page, never markup."""
    evil = "</code><script>alert(1)</script>"
    scopes = [orders_scope(9, route=f"{evil}/", statement=evil)]
    traces = {1009: orders_trace(scopes[0], raw=f"SELECT '{evil}'")}
    page = page_of(scopes, traces=traces)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert [e.attrs["data-label"] for e in select(page, "div", "offender")][0] == f"GET {evil}/"
    assert [t for t in dom(page).texts if "alert" in t]


def test_self_contained() -> None:
    """No script, stylesheet, image or frame, and no URL in any attribute or style: trace links are plain text."""
    page = page_of([orders_scope(i) for i in range(1, 10)])
    parsed = dom(page)
    assert not [e for e in parsed.elements if e.tag in ("script", "link", "img", "iframe", "object", "embed", "a")]
    urls = re.compile(r"https?://|//[a-z0-9]|url\(", re.I)
    assert not [(e.tag, k, v) for e in parsed.elements for k, v in e.attrs.items() if urls.search(v)]
    style = "".join(e.text[0] for e in parsed.elements if e.tag == "style")
    assert style and not urls.search(style) and "@import" not in style
    in_text = sum(len(re.findall(r"https?://", t)) for t in parsed.texts)
    assert in_text == len(re.findall(r"https?://", page)) == 3  # 2 example traces (one trace), its waterfall's trace line


def test_waterfalls_for_the_worst_offenders_once_each() -> None:
    """Offenders sharing an example trace get one waterfall; `count` caps them; within-budget rows get none."""
    scopes = [orders_scope(i) for i in range(1, 10)]
    report = build_report(scopes)
    assert [(s.trace_id, len(s.violations)) for s in pick_waterfalls(report, scopes, 5)] == [(1009, 2)]
    other = [orders_scope(7, route="customers/"), orders_scope(6, route="items/")]
    report = build_report(scopes + other)
    assert len(pick_waterfalls(report, scopes + other, 5)) == 3
    assert len(pick_waterfalls(report, scopes + other, 2)) == 2
    assert pick_waterfalls(build_report([orders_scope(1)]), [orders_scope(1)], 5) == []


def test_unreadable_trace_and_long_traces() -> None:
    """A trace that could not be read says why; a trace of more spans than the cap draws the cap and counts the rest."""
    scope = orders_scope(9)
    page = render_html(build_report([scope]), [Waterfall(scope, None, "Jaeger has no trace 3f")], jaeger_url=JAEGER)
    assert "The trace could not be read: Jaeger has no trace 3f" in page
    start = T0
    many = [TraceSpan(1, 0, "GET", "shop", start, start + 50 * MS, scope=True)] + [
        TraceSpan(10 + n, 1, "SELECT", "shop", start + n, start + n + 1, "SELECT 1", "postgresql", "SELECT ?")
        for n in range(MAX_WATERFALL_SPANS + 20)
    ]
    page = render_html(build_report([scope]), [Waterfall(scope, many)], jaeger_url=JAEGER)
    assert len(select(page, "g", "span")) == MAX_WATERFALL_SPANS
    assert "… and 21 more span(s) not drawn." in page
