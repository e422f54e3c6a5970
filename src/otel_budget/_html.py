"""`otel-budget report --html FILE`: one self-contained page of bars and trace waterfalls.

Inline CSS and inline SVG only: no script, no stylesheet or image to fetch, no link out (trace URLs
are plain text), so the page opens the same offline, in a mail attachment or a CI artifact.
Every value that came from a span goes through `html.escape`.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from otel_budget._table import number
from otel_budget.report import _KIND_WORDS, UNKNOWN_SERVICE, Offender, Report, trace_url, warnings
from otel_budget.results import ScopeResult, Violation
from otel_budget.sources import TraceSpan

__all__ = ["COLOURS", "MAX_WATERFALL_SPANS", "Waterfall", "pick_waterfalls", "render_html", "waterfalls_for"]

# Fill colours, exact in the rendered page (the tests look for them in a screenshot).
COLOURS = {
    "p50": "#4c78a8",
    "p95": "#f58518",
    "p95 over": "#e45756",
    "limit": "#000000",
    "scope": "#54a24b",
    "db": "#72b7b2",
    "repeated": "#b279a2",
    "span": "#9d9d9d",
    "crossing": "#d6266e",
}
MAX_WATERFALL_SPANS = 300  # rows per waterfall; the rest are counted, not drawn

_BAR_W = 560  # px of the bars' scale
_LABEL_W = 360  # px of a waterfall's span names
_AXIS_W = 720  # px of a waterfall's time axis
_ROW_H = 16
_MARKER_H = 14  # px per crossing label above the axis


@dataclass(frozen=True)
class Waterfall:
    """One offending scope and its trace's spans (or why they could not be read)."""

    scope: ScopeResult
    spans: Sequence[TraceSpan] | None
    error: str | None = None


def pick_waterfalls(report: Report, scopes: Iterable[ScopeResult], count: int) -> list[ScopeResult]:
    """The scopes behind the `count` worst offenders: each offender's worst example over budget, once each."""
    by_trace: dict[str, list[ScopeResult]] = defaultdict(list)
    for scope in scopes:
        if scope.violations:
            by_trace[scope.trace_id_hex].append(scope)
    picked: dict[tuple[int, int], ScopeResult] = {}
    for offender in report.offenders:
        if len(picked) >= count:
            break
        if not offender.violations:
            continue
        for trace_id in offender.example_traces:
            match = next((s for s in by_trace.get(trace_id, ()) if _belongs(s, offender)), None)
            if match is not None:
                picked.setdefault((match.trace_id, match.span_id), match)
                break
    return list(picked.values())


def _belongs(scope: ScopeResult, offender: Offender) -> bool:
    return (scope.service, scope.kind, scope.name, scope.method) == (
        offender.service, offender.kind, offender.name, offender.method
    ) and any(v.metric == offender.metric for v in scope.violations)  # fmt: skip


def render_html(report: Report, waterfalls: Sequence[Waterfall], *, jaeger_url: str) -> str:
    """The whole page."""
    parts = [_HEAD, "<h1>otel-budget report</h1>", _summary(report)]
    parts.append('<section id="bars"><h2>p50 and p95 against the limit, per route/task and metric</h2>')
    if report.offenders:
        parts.append(_legend())
        parts.extend(_offender_row(o, i, jaeger_url) for i, o in enumerate(report.offenders))
    else:
        parts.append('<p class="empty">No limits to compare with: pass --budgets FILE to list metrics within budget too.</p>')
    parts.append("</section>")
    parts.append('<section id="waterfalls"><h2>Worst offenders: their traces</h2>')
    if not waterfalls:
        parts.append('<p class="empty">No scope over budget: no waterfall to show.</p>')
    parts.extend(_waterfall(w, i, jaeger_url) for i, w in enumerate(waterfalls))
    parts.append("</section></body></html>\n")
    return "\n".join(parts)


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>otel-budget report</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 8px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.warning { color: #a00; } .empty { color: #666; }
.offender { display: flex; gap: 12px; align-items: flex-start; margin: 4px 0 8px; }
.offender .bars { flex: none; } .offender .about { min-width: 0; } .offender .name { font-weight: 600; }
.offender .numbers, .trace, .statement { color: #444; font-size: 12px; }
.statement code, .trace code { background: #f3f3f3; padding: 1px 3px; word-break: break-all; }
svg text { font: 11px system-ui, sans-serif; fill: #222; }
svg text.crossing-label { fill: """ + COLOURS["crossing"] + """; font-weight: 600; }
.waterfall { margin: 8px 0 28px; border-top: 1px solid #ddd; padding-top: 8px; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; vertical-align: -1px; }
</style></head><body>"""


def _summary(report: Report) -> str:
    kinds = ", ".join(
        f"{report.scopes_by_kind[kind]} {_KIND_WORDS[kind]}{'s' if report.scopes_by_kind[kind] != 1 else ''}"
        for kind in _KIND_WORDS
        if report.scopes_by_kind.get(kind)
    )
    where = "; ".join(f"{key} {value}" for key, value in report.sources.items())
    lines = [
        f'<p id="summary">{report.scopes} scopes ({_e(kinds or "none")}) in {report.traces} traces, '
        f"{report.violations} budget.exceeded event(s); {_e(where)}</p>"
    ]
    lines += [f'<p class="warning">{_e(line)}</p>' for line in warnings(report)]
    return "\n".join(lines)


def _legend() -> str:
    items = (("p50", "p50"), ("p95", "p95"), ("p95 over", "p95 over the limit"), ("limit", "limit"))
    return '<p class="legend">' + "".join(f'<span style="background:{COLOURS[k]}"></span>{t}' for k, t in items) + "</p>"


def _offender_row(o: Offender, index: int, jaeger_url: str) -> str:
    scale = max(o.p95, o.max, o.limit or 0.0) * 1.1 or 1.0

    def x(value: float) -> int:
        return round(value / scale * _BAR_W)

    over = o.limit is not None and o.p95 > o.limit
    p95_class, p95_colour = ("bar p95 over", COLOURS["p95 over"]) if over else ("bar p95", COLOURS["p95"])
    svg = [f'<svg class="bars" width="{_BAR_W + 2}" height="34" viewBox="0 0 {_BAR_W + 2} 34">']
    svg.append(f'<rect class="bar p50" data-value="{_exact(o.p50)}" x="0" y="2" width="{x(o.p50)}" height="14" fill="{COLOURS["p50"]}"/>')
    svg.append(f'<rect class="{p95_class}" data-value="{_exact(o.p95)}" x="0" y="18" width="{x(o.p95)}" height="14" fill="{p95_colour}"/>')
    if o.limit is not None:
        svg.append(f'<rect class="limit" data-value="{_exact(o.limit)}" x="{x(o.limit)}" y="0" width="2" height="34" fill="{COLOURS["limit"]}"/>')
    svg.append("</svg>")
    service = f" ({_e(o.service or UNKNOWN_SERVICE)})" if o.service else ""
    limit = number(o.limit) if o.limit is not None else "-"
    numbers = (
        f"p50 {number(o.p50)} · p95 {number(o.p95)} · max {number(o.max)} · limit {limit} · "
        f"{o.violations} budget.exceeded in {o.runs} run(s)"
    )
    example = f'<div class="trace">e.g. <code>{_e(trace_url(jaeger_url, o.example_traces[0]))}</code></div>' if o.example_traces else ""
    statement = f'<div class="statement">repeated statement: <code>{_e(o.statement)}</code></div>' if o.statement else ""
    return (
        f'<div class="offender" id="offender-{index}" data-label="{_e(o.label)}" data-metric="{_e(o.metric)}" '
        f'data-service="{_e(o.service or UNKNOWN_SERVICE)}" data-violations="{o.violations}">'
        f'{"".join(svg)}<div class="about"><div class="name">{_e(o.label)}{service} — {_e(o.metric)}</div>'
        f'<div class="numbers">{numbers}</div>{statement}{example}</div></div>'
    )


def _waterfall(w: Waterfall, index: int, jaeger_url: str) -> str:
    scope = w.scope
    crossings = sorted(scope.violations, key=lambda v: v.timestamp_ns)
    head = (
        f'<div class="waterfall" id="waterfall-{index}" data-trace="{scope.trace_id_hex}" '
        f'data-span="{scope.span_id_hex}" data-label="{_e(scope.label)}" '
        f'data-crossings="{len(crossings)}"><h3>{_e(scope.label)}'
        f'{f" ({_e(scope.service)})" if scope.service else ""}: {len(crossings)} budget(s) exceeded</h3>'
        f'<div class="trace">trace <code>{_e(trace_url(jaeger_url, scope.trace_id_hex))}</code></div>'
        + "".join(f'<div class="exceeded">{_e(v.describe().splitlines()[0])}</div>' for v in crossings)
        + "".join(
            f'<div class="statement">repeated statement: <code>{_e(v.statement)}</code></div>' for v in crossings if v.statement
        )
    )
    if w.spans is None:
        return head + f'<p class="empty">The trace could not be read: {_e(w.error or "unknown error")}</p></div>'
    rows = _rows(scope, w.spans)
    if not rows:
        return head + '<p class="empty">The scope span is not in the trace read.</p></div>'
    return head + _waterfall_svg(rows, crossings) + "</div>"


@dataclass(frozen=True)
class _Row:
    span: TraceSpan
    depth: int


def _rows(scope: ScopeResult, spans: Sequence[TraceSpan]) -> list[_Row]:
    """The scope span and its descendants, depth first by start time; a nested scope (a task it ran) is left out."""
    root = next((s for s in spans if s.span_id == scope.span_id), None)
    if root is None:
        return []
    children: dict[int, list[TraceSpan]] = defaultdict(list)
    for span in spans:
        if span.span_id != root.span_id:
            children[span.parent_id].append(span)
    rows: list[_Row] = []
    stack = [(root, 0)]
    seen = set()
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        rows.append(_Row(span, depth))
        kids = sorted((c for c in children.get(span.span_id, ()) if not c.scope), key=lambda c: c.start_ns)
        stack.extend((c, depth + 1) for c in reversed(kids))
    return rows


def _waterfall_svg(rows: list[_Row], crossings: Sequence[Violation]) -> str:
    root = rows[0].span
    start, end = root.start_ns, max(root.end_ns, *(r.span.end_ns for r in rows))
    span_ns = max(end - start, 1)
    shown, hidden = rows[:MAX_WATERFALL_SPANS], len(rows) - MAX_WATERFALL_SPANS
    repeated = {v.statement for v in crossings if v.statement}
    left = _LABEL_W + 10
    top = 18 + _MARKER_H * len(crossings)  # the axis labels, then one line per crossing label
    height = top + _ROW_H * len(shown) + 6

    def x(ns: int) -> float:
        return left + min(max(ns - start, 0), span_ns) / span_ns * _AXIS_W

    out = [
        f'<svg class="waterfall-chart" width="{left + _AXIS_W + 60}" height="{height}" data-axis-left="{left}" '
        f'data-axis-width="{_AXIS_W}" data-window-ms="{span_ns / 1e6:.3f}">'
    ]
    for i in range(5):
        tick = left + _AXIS_W * i / 4
        out.append(f'<text x="{tick:.1f}" y="12" text-anchor="middle">{number(round(span_ns * i / 4 / 1e6, 1))} ms</text>')
        out.append(f'<rect x="{tick:.1f}" y="{top - 2}" width="1" height="{height - top}" fill="#e4e4e4"/>')
    for i, row in enumerate(shown):
        span, y = row.span, top + i * _ROW_H
        kind = "scope" if span is root else ("repeated" if span.statement_key in repeated else "db") if span.db_system else "span"
        text = span.statement or span.name
        # the normalised statement: `SELECT … FROM t WHERE …` tells the loop apart where the raw column list would not
        name = (span.statement_key or span.statement) if span.statement else span.name
        label = _clip("  " * row.depth + name, 58)
        width = max(x(span.end_ns) - x(span.start_ns), 1.0)
        out.append(
            f'<g class="span {kind}" data-name="{_e(span.name)}" data-start-ms="{(span.start_ns - start) / 1e6:.3f}">'
            f"<title>{_e(text)} ({(span.end_ns - span.start_ns) / 1e6:.2f} ms)</title>"
            f'<text x="0" y="{y + 11}" xml:space="preserve">{_e(label)}</text>'
            f'<rect x="{x(span.start_ns):.1f}" y="{y + 2}" width="{width:.1f}" height="{_ROW_H - 4}" fill="{COLOURS[kind]}"/></g>'
        )
    for i, v in enumerate(crossings):
        cx = round(x(v.timestamp_ns))  # whole pixels: a crisp 3 px line centred on the moment
        label_y = 28 + _MARKER_H * i
        anchor = "end" if cx > left + _AXIS_W * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(
            f'<g class="crossing" data-metric="{_e(v.metric)}" data-limit="{_exact(v.limit)}" data-actual="{_exact(v.actual)}" '
            f'data-offset-ms="{(v.timestamp_ns - start) / 1e6:.3f}">'
            f'<rect x="{cx - 1}" y="{label_y - 10}" width="3" height="{height - label_y + 10}" fill="{COLOURS["crossing"]}"/>'
            f'<text class="crossing-label" x="{cx + dx}" y="{label_y}" text-anchor="{anchor}">'
            f"{_e(v.metric)} &gt; {number(v.limit)}</text></g>"
        )
    out.append("</svg>")
    if hidden > 0:
        out.append(f'<p class="empty">… and {hidden} more span(s) not drawn.</p>')
    return "".join(out)


def _exact(value: float) -> str:
    """The value for a data attribute: every digit (the text shows `number`'s rounding)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def waterfalls_for(
    picked: Sequence[ScopeResult], traces: Mapping[int, Sequence[TraceSpan] | str]
) -> list[Waterfall]:
    """`Waterfall`s of `picked` from `traces` (trace id -> its spans, or why they could not be read)."""
    result = []
    for scope in picked:
        found = traces.get(scope.trace_id, "trace not read")
        if isinstance(found, str):
            result.append(Waterfall(scope, None, found))
        else:
            result.append(Waterfall(scope, found))
    return result
