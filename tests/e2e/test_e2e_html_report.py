"""`otel-budget report --html` on the example shop's real traffic, looked at in headless Chromium.

The shop (gunicorn + Celery under `opentelemetry-instrument`) serves its over-budget views; the spans
go through the collector to Jaeger; `otel-budget report --html` reads them back and writes the page;
Chromium builds its DOM and takes a screenshot. Ground truth: Django's query capture and pymongo's
CommandListener (the shop's X-Ground-Truth headers), and the raw traces from Jaeger's API.

Starts servers on fixed ports: run under `flock /tmp/otel-budget-servers.lock`.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import run_cli
from processes import ShopProcesses
from shop_e2e import SHOP_DIR, ShopResponse, ShopTraces, running

from otel_budget._html import COLOURS
from tests.browser import Dom, Element, Image, dump_dom, screenshot, select

JAEGER = "http://127.0.0.1:16686"
SERVICE = f"shop-html-{os.getpid()}"
REINDEX_TASK = "store.tasks.rebuild_search_index"
# (method, path, tasks it enqueues): the N+1 list, a report over [http] as POST, a page within budget,
# and a task over its db.queries budget.
TRAFFIC = (
    *[("GET", "orders/", ())] * 3,
    *[("POST", "reports/sales/", ())] * 2,
    *[("GET", "products/3/", ())] * 2,
    ("POST", "catalog/reindex/", (REINDEX_TASK,)),
)


@dataclass(frozen=True)
class Rendered:
    sent: list[tuple[str, ShopResponse]]  # (label, response)
    report: dict[str, Any]  # the --format json output printed beside the page
    stderr: str
    page: Path
    dom: Dom  # Chromium's DOM of the page
    image: Image  # Chromium's screenshot


@pytest.fixture(scope="module")
def rendered(
    stack_services: None, shop_database: None, traces: ShopTraces, tmp_path_factory: pytest.TempPathFactory
) -> Rendered:
    processes = ShopProcesses(  # beside the e2e session's shop: its own ports, pid files, broker and service names
        port=8006,
        partner_port=8016,
        instance="html",
        bsp_delay_ms=200,
        web_service=SERVICE,
        worker_service=f"{SERVICE}-worker",
        extra_env={"CELERY_BROKER_URL": "redis://127.0.0.1:6379/14", "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/15"},
    )
    sent = []
    with running(processes) as shop:
        for method, path, tasks in TRAFFIC:
            response = shop.request(method, path)
            sent.append((f"{method} {path}", response, tasks))
        for _, response, tasks in sent:
            traces.wait(response.trace_id, tasks=tasks)
    out = tmp_path_factory.mktemp("html")
    page = out / "report.html"
    result = run_cli(
        "report", "--service", SERVICE, "--service", f"{SERVICE}-worker", "--lookback", "1h",
        "--budgets", str(SHOP_DIR / "budgets.toml"), "--format", "json", "--html", str(page),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Rendered(
        sent=[(label, response) for label, response, _ in sent],
        report=json.loads(result.stdout),
        stderr=result.stderr,
        page=page,
        dom=dump_dom(page),
        image=screenshot(page, out / "report.png", width=1200, height=3000),
    )


def jaeger_trace(trace_id: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{JAEGER}/api/traces/{trace_id}", timeout=10) as response:
        (trace,) = json.load(response)["data"]
    return trace["spans"]  # type: ignore[no-any-return]


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span["tags"]}


def under_scope(spans: list[dict[str, Any]], scope_id: str) -> list[dict[str, Any]]:
    """The spans below the scope span, not below a nested scope span (a task it enqueued)."""
    children: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        for ref in span.get("references") or []:
            if ref["refType"] == "CHILD_OF":
                children.setdefault(ref["spanID"], []).append(span)
    found, todo = [], list(children.get(scope_id, []))
    while todo:
        span = todo.pop()
        if "budget.violations" in tags(span):
            continue
        found.append(span)
        todo.extend(children.get(span["spanID"], []))
    return found


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def number(text: str) -> float:
    return float(text)


def test_bars_are_the_reports_rows(rendered: Rendered) -> None:
    """One bar pair per row the report printed, with its p50, p95 and limit; Chromium's DOM has them all."""
    rows = select(rendered.dom, "div", "offender")
    offenders = rendered.report["offenders"]
    assert len(rows) == len(offenders) >= 8
    assert [(r.attrs["data-label"], r.attrs["data-metric"]) for r in rows] == [(o["label"], o["metric"]) for o in offenders]
    p50 = [number(e.attrs["data-value"]) for e in select(rendered.dom, "rect", "bar", "p50")]
    p95 = [number(e.attrs["data-value"]) for e in select(rendered.dom, "rect", "bar", "p95")]
    limits = [number(e.attrs["data-value"]) for e in select(rendered.dom, "rect", "limit")]
    assert (p50, p95, limits) == (
        [o["p50"] for o in offenders], [o["p95"] for o in offenders], [o["limit"] for o in offenders]
    )  # fmt: skip
    over = [e for e in select(rendered.dom, "rect", "bar", "p95") if "over" in e.classes]
    assert len(over) == sum(o["p95"] > o["limit"] for o in offenders) >= 3


def test_the_real_page_is_self_contained(rendered: Rendered) -> None:
    """Nothing on the page Chromium loaded points anywhere: no script, stylesheet, image, frame or link."""
    elements = rendered.dom.elements
    assert not [e.tag for e in elements if e.tag in ("script", "link", "img", "iframe", "object", "embed", "a", "base")]
    assert not [(e.tag, k, v) for e in elements for k, v in e.attrs.items() if re.search(r"https?:|//|url\(", v)]
    text = rendered.page.read_text()
    assert text.count("http://") == sum(t.count("http://") for t in rendered.dom.texts) > 0  # only as text


def test_bars_hold_djangos_counts(rendered: Rendered) -> None:
    """The PostgreSQL bars of each route are the p50/p95 of what Django's query capture counted."""
    rows = {(r.attrs["data-label"], r.attrs["data-metric"]): r for r in select(rendered.dom, "div", "offender")}
    bars = select(rendered.dom, "rect", "bar")
    by_row = {key: bars[2 * i : 2 * i + 2] for i, key in enumerate(rows)}
    for label in ("GET orders/", "POST reports/sales/"):
        truth = [r.ground_truth["pg_statements"] for lbl, r in rendered.sent if lbl == label]
        assert truth, label
        p50, p95 = by_row[(label, "db.postgresql.queries")]
        assert (number(p50.attrs["data-value"]), number(p95.attrs["data-value"])) == (
            nearest_rank(truth, 50),
            nearest_rank(truth, 95),
        ), label


def test_waterfalls_show_the_traces_as_jaeger_has_them(rendered: Rendered) -> None:
    """Each waterfall: its DB spans (as many as Django and pymongo saw), a marker at every budget.exceeded
    event's moment, named by its metric, and the repeated statement."""
    waterfalls = select(rendered.dom, "div", "waterfall")
    assert 3 <= len(waterfalls) <= 5
    truth = {r.trace_id: r.ground_truth for _, r in rendered.sent}
    groups = _waterfall_groups(rendered.dom)
    labels = set()
    for waterfall, (crossings, spans) in zip(waterfalls, groups):
        raw = jaeger_trace(waterfall.attrs["data-trace"])
        (scope,) = [s for s in raw if s["spanID"] == waterfall.attrs["data-span"]]
        logs = sorted(
            ({f["key"]: f["value"] for f in log["fields"]} | {"at": log["timestamp"]} for log in scope["logs"]),
            key=lambda fields: fields["at"],
        )
        exceeded = [log for log in logs if log.get("event") == "budget.exceeded"]
        assert [(c.attrs["data-metric"], number(c.attrs["data-limit"])) for c in crossings] == [
            (log["budget.metric"], log["budget.limit"]) for log in exceeded
        ]
        assert [number(c.attrs["data-offset-ms"]) for c in crossings] == [
            round((log["at"] - scope["startTime"]) / 1000, 3) for log in exceeded
        ]
        db = [s for s in under_scope(raw, scope["spanID"]) if "db.system" in tags(s) or "db.system.name" in tags(s)]
        drawn_db = [g for g in spans if g.classes & {"db", "repeated"}]
        assert len(drawn_db) == len(db)
        label = waterfall.attrs["data-label"]
        labels.add(label)
        if label.startswith(("GET ", "POST ")):
            counted = truth[waterfall.attrs["data-trace"]]
            assert len(drawn_db) == counted["pg_statements"] + counted["mongo_commands"], label
        statement = next((log.get("budget.statement") for log in exceeded if log.get("budget.statement")), None)
        repeated = [g for g in spans if "repeated" in g.classes]
        if statement:
            raw_statements = Counter(tags(s).get("db.statement") or tags(s).get("db.query.text") for s in db)
            assert len(repeated) == raw_statements.most_common(1)[0][1] > 5
            assert statement in "".join(waterfall.text) or statement in _texts_after(rendered.dom, waterfall)
        else:
            assert repeated == []
    assert "GET orders/" in labels and f"task {REINDEX_TASK}" in labels


def _waterfall_groups(dom: Dom) -> list[tuple[list[Element], list[Element]]]:
    """Per waterfall, in order: its crossing markers and its drawn spans."""
    groups: list[tuple[list[Element], list[Element]]] = []
    for element in dom.elements:
        if element.tag == "div" and "waterfall" in element.classes:
            groups.append(([], []))
        elif groups and element.tag == "g" and "crossing" in element.classes:
            groups[-1][0].append(element)
        elif groups and element.tag == "g" and "span" in element.classes:
            groups[-1][1].append(element)
    return groups


def _texts_after(dom: Dom, start: Element) -> str:
    """The text of the elements from `start` up to the next waterfall."""
    index = dom.elements.index(start)
    text = []
    for element in dom.elements[index + 1 :]:
        if element.tag == "div" and "waterfall" in element.classes:
            break
        text.extend(element.text)
    return "".join(text)


def test_screenshot_shows_the_bars(rendered: Rendered) -> None:
    """In Chromium's pixels: one p50 and one p95 bar per row, as long as the DOM says, p50 above p95."""
    image = rendered.image
    p50s = select(rendered.dom, "rect", "bar", "p50")
    p95s = select(rendered.dom, "rect", "bar", "p95")
    # 14 px bars; the legend's squares are 10 px
    p50_bands = [b for b in _bands(image.where(COLOURS["p50"])) if b[1] - b[0] + 1 == 14]
    p95_bands = [
        b for b in _bands(image.where(COLOURS["p95"]) + image.where(COLOURS["p95 over"])) if b[1] - b[0] + 1 == 14
    ]
    assert len(p95_bands) == len(p95s) >= 8  # every row is on the screenshot
    assert [width for _, _, width in p50_bands] == [int(e.attrs["width"]) for e in p50s if int(e.attrs["width"])]
    assert [width for _, _, width in p95_bands] == [int(e.attrs["width"]) for e in p95s if int(e.attrs["width"])]
    tops = {top for top, _, _ in p95_bands}
    assert all(bottom + 3 in tops for _, bottom, _ in p50_bands)  # each p50 bar right above a p95 bar
    over = image.where(COLOURS["p95 over"])
    assert len(_bands(over)) >= 3


def test_screenshot_shows_the_crossings(rendered: Rendered) -> None:
    """In Chromium's pixels: the marker of each limit crossing crosses its scope's bar where the DOM puts it."""
    groups = _waterfall_groups(rendered.dom)
    charts = select(rendered.dom, "svg", "waterfall-chart")
    image = rendered.image
    scope_bands = [b for b in _bands(image.where(COLOURS["scope"])) if b[1] - b[0] >= 8]
    marker = bytes.fromhex(COLOURS["crossing"][1:])
    checked = 0
    for (crossings, _), chart, (top, bottom, _) in zip(groups, charts, scope_bands):
        left = min(x for x, y in image.where(COLOURS["scope"]) if top <= y <= bottom)
        window = number(chart.attrs["data-window-ms"])
        width = number(chart.attrs["data-axis-width"])
        middle = (top + bottom) // 2
        row = image.rows[middle]
        columns = sorted({x for x in range(image.width) if row[3 * x : 3 * x + 3] == marker})
        found = [sum(run) / len(run) - left for run in _runs(columns)]  # a marker is 3 px wide, centred on its moment
        expected = sorted({round(number(c.attrs["data-offset-ms"]) / window * width) for c in crossings})
        merged = [e for i, e in enumerate(expected) if i == 0 or e - expected[i - 1] > 3]  # markers that touch: one
        assert found == pytest.approx(merged, abs=1.0)
        checked += len(found)
    assert checked >= 3


def _bands(pixels: list[tuple[int, int]]) -> list[tuple[int, int, float]]:
    """Horizontal bands of consecutive rows holding the colour: (first row, last row, widest extent in px)."""
    by_row: dict[int, list[int]] = {}
    for x, y in pixels:
        by_row.setdefault(y, []).append(x)
    bands: list[tuple[int, int, float]] = []
    for y in sorted(by_row):
        widest = max(by_row[y]) - min(by_row[y]) + 1  # a limit line drawn across a bar does not cut it
        if bands and bands[-1][1] == y - 1:
            first, _, width = bands[-1]
            bands[-1] = (first, y, max(width, widest))
        else:
            bands.append((y, y, widest))
    return bands


def _runs(columns: list[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for x in columns:
        if run and x != run[-1] + 1:
            yield run
            run = []
        run.append(x)
    if run:
        yield run
