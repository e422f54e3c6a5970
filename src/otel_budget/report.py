"""`otel-budget report`: the top offenders among exported scope spans, by route/task and metric."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from otel_budget import names
from otel_budget._table import number, render_table
from otel_budget.config import BudgetConfig
from otel_budget.results import ScopeResult

__all__ = [
    "UNKNOWN_SERVICE",
    "Offender",
    "Report",
    "WorstScope",
    "build_report",
    "percentile",
    "render_json",
    "render_text",
    "warnings",
]

_KIND_WORDS = {names.RULE_HTTP: "request", names.RULE_CELERY: "task", names.RULE_SCOPE: "scope"}
_EXAMPLES = 3
UNKNOWN_SERVICE = "-"  # spans read without a `service.name`
_GroupKey = tuple[str | None, str, str, str | None]  # service, kind, name, method


@dataclass(frozen=True)
class Offender:
    """One route/task and metric: how its actual values compare with its limit."""

    label: str  # `GET orders/`, `task shop.tasks.rebuild`, `scope nightly-import`
    service: str | None  # `service.name` of the spans; rows of two services are never merged
    kind: str
    name: str
    method: str | None
    metric: str
    runs: int  # scopes that reported the metric
    p50: float
    p95: float
    max: float
    limit: float | None  # from the budget.exceeded events, else from the budgets file
    violations: int  # budget.exceeded events for this metric
    example_traces: tuple[str, ...]  # trace ids, worst first
    statement: str | None = None  # for db.repeated_queries: the worst repeated statement

    @property
    def pressure(self) -> float:
        """p95 / limit; above 1 means most bad runs break the budget."""
        if self.limit is None:
            return 0.0
        return self.p95 / self.limit if self.limit else (math.inf if self.p95 else 0.0)


@dataclass(frozen=True)
class WorstScope:
    """The route, task or scope with the most runs over budget."""

    label: str
    service: str | None
    kind: str
    runs: int
    over: int  # runs with at least one budget.exceeded event
    violations: int  # budget.exceeded events in all its runs
    example_trace: str


@dataclass(frozen=True)
class Report:
    scopes: int
    traces: int
    scopes_by_kind: Mapping[str, int]
    offenders: tuple[Offender, ...]
    worst: tuple[WorstScope, ...]  # at most one per kind, requests first
    sources: Mapping[str, str] = field(default_factory=dict)  # what was read, for the header
    services: tuple[str, ...] = ()  # the services the scope spans came from
    config_errors: Mapping[str, str] = field(default_factory=dict)  # service -> why its budgets file is unusable
    capped: tuple[str, ...] = ()  # services of which only the newest `trace_limit` traces were read
    trace_limit: int | None = None
    violations: int = 0  # budget.exceeded events in every scope read, not only in the rows shown


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def build_report(
    spans: Iterable[ScopeResult],
    *,
    budgets: BudgetConfig | None = None,
    top: int = 20,
    sources: Mapping[str, str] | None = None,
    capped: Sequence[str] = (),
    trace_limit: int | None = None,
) -> Report:
    """Group `spans` by service, route/task/scope and metric; rank by violations, then p95 against the limit.

    A metric is listed when it has a limit: from its `budget.exceeded` events, or from `budgets`.

    Args:
        capped: the services of which only the newest `trace_limit` traces were read.
    """
    spans = list(spans)
    groups: dict[_GroupKey, list[ScopeResult]] = defaultdict(list)
    for span in spans:
        groups[(span.service, span.kind, span.name, span.method)].append(span)
    offenders = [
        offender
        for key, members in groups.items()
        for offender in _offenders(key, members, budgets)
        if offender.violations or offender.limit is not None
    ]
    offenders.sort(key=lambda o: (-o.violations, -o.pressure, o.label, o.service or "", o.metric))
    config_errors: dict[str, str] = {}
    for span in spans:
        if span.config_error:
            config_errors.setdefault(span.service or UNKNOWN_SERVICE, span.config_error)
    return Report(
        scopes=len(spans),
        traces=len({span.trace_id for span in spans}),
        scopes_by_kind=dict(Counter(span.kind for span in spans)),
        offenders=tuple(offenders[:top]),
        worst=_worst(groups),
        sources=dict(sources or {}),
        services=tuple(sorted({span.service or UNKNOWN_SERVICE for span in spans})),
        config_errors=config_errors,
        capped=tuple(capped),
        trace_limit=trace_limit,
        violations=sum(len(span.violations) for span in spans),
    )


def _offenders(key: _GroupKey, members: list[ScopeResult], budgets: BudgetConfig | None) -> list[Offender]:
    service, kind, name, method = key
    configured = budgets.rule_for(kind, name, method).limits if budgets is not None else {}
    metrics = sorted({metric for span in members for metric in span.values})
    result = []
    for metric in metrics:
        reporting = [span for span in members if metric in span.values]
        values = [span.values[metric] for span in reporting]
        events = [(span, event) for span in reporting for event in span.violations if event.metric == metric]
        events.sort(key=lambda pair: (-pair[1].actual, -(pair[0].start_ns or 0)))
        latest = max(events, key=lambda pair: pair[0].start_ns or 0)[1] if events else None
        limit = latest.limit if latest is not None else configured.get(metric)
        if events:
            examples = _unique(span.trace_id_hex for span, _ in events)
        else:
            examples = _unique(span.trace_id_hex for span in sorted(reporting, key=lambda s: -s.values[metric]))
        result.append(
            Offender(
                label=members[0].label,
                service=service,
                kind=kind,
                name=name,
                method=method,
                metric=metric,
                runs=len(values),
                p50=percentile(values, 50),
                p95=percentile(values, 95),
                max=max(values),
                limit=limit,
                violations=len(events),
                example_traces=examples[:_EXAMPLES],
                statement=next((event.statement for _, event in events if event.statement), None),
            )
        )
    return result


def _worst(groups: Mapping[_GroupKey, list[ScopeResult]]) -> tuple[WorstScope, ...]:
    best: dict[str, WorstScope] = {}
    for (service, kind, _, _), members in groups.items():
        over = [span for span in members if span.violations]
        if not over:
            continue
        candidate = WorstScope(
            label=members[0].label,
            service=service,
            kind=kind,
            runs=len(members),
            over=len(over),
            violations=sum(len(span.violations) for span in members),
            example_trace=max(over, key=lambda span: len(span.violations)).trace_id_hex,
        )
        current = best.get(kind)
        if current is None or (candidate.over, candidate.violations) > (current.over, current.violations):
            best[kind] = candidate
    return tuple(best[kind] for kind in _KIND_WORDS if kind in best)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# -- output -------------------------------------------------------------------------------------------------
def trace_url(jaeger_url: str, trace_id: str) -> str:
    return f"{jaeger_url.rstrip('/')}/trace/{trace_id}"


def render_text(report: Report, *, jaeger_url: str) -> str:
    """A header, warnings, the worst request/task/scope, and the offenders table."""
    kinds = ", ".join(
        f"{report.scopes_by_kind[kind]} {_KIND_WORDS[kind]}{'s' if report.scopes_by_kind[kind] != 1 else ''}"
        for kind in _KIND_WORDS
        if report.scopes_by_kind.get(kind)
    )
    where = "; ".join(f"{key} {value}" for key, value in report.sources.items())
    lines = [f"otel-budget report: {report.scopes} scopes ({kinds or 'none'}) in {report.traces} traces; {where}"]
    lines += warnings(report)
    if not report.scopes:
        lines.append("No scope spans found (spans with budget.* attributes): is otel-budget installed in the service?")
        return "\n".join(lines) + "\n"
    several = len(report.services) > 1
    for worst in report.worst:
        label = f"{worst.label} ({worst.service or UNKNOWN_SERVICE})" if several else worst.label
        lines.append(
            f"worst {_KIND_WORDS[worst.kind]}: {label}: {worst.over} of {worst.runs} over budget, "
            f"{worst.violations} budget.exceeded event(s), e.g. {trace_url(jaeger_url, worst.example_trace)}"
        )
    if not report.worst:
        lines.append("No budget.exceeded events.")
    lines.append("")
    if not report.offenders:
        lines.append("No limits to compare with: pass --budgets FILE to list metrics within budget too.")
        return "\n".join(lines) + "\n"
    return "\n".join(lines + _table(report.offenders, jaeger_url)) + "\n"


def warnings(report: Report) -> list[str]:
    """What the reader must know to trust the numbers: capped reads, services on an unusable budgets file."""
    lines = []
    if report.capped:
        lines.append(
            f"warning: only the newest {report.trace_limit} traces were read of {', '.join(report.capped)} "
            "(--limit): older traces in the lookback are not counted; raise --limit or shorten --lookback"
        )
    for service, error in sorted(report.config_errors.items()):
        lines.append(
            f"warning: service {service} runs on a budgets file it cannot use, so on the built-in defaults: "
            + error.replace("\n", "; ")
        )
    return lines


def _table(offenders: Sequence[Offender], jaeger_url: str) -> list[str]:
    header = ("service", "scope", "metric", "runs", "p50", "p95", "limit", "over", "example trace")
    rows = []
    for o in offenders:
        limit = number(o.limit) if o.limit is not None else "-"
        example = trace_url(jaeger_url, o.example_traces[0]) if o.example_traces else "-"
        rows.append(
            (o.service or UNKNOWN_SERVICE, o.label, o.metric, str(o.runs), number(o.p50), number(o.p95), limit,
             str(o.violations), example)
        )  # fmt: skip
    header_line, *row_lines = render_table(header, rows, left_aligned={0, 1, 2, 8})
    lines = [header_line]
    for line, offender in zip(row_lines, offenders):
        lines.append(line)
        if offender.statement:
            lines.append(f"    statement: {offender.statement}")
    return lines


def render_json(report: Report, *, jaeger_url: str) -> str:
    data = asdict(report)
    for offender in data["offenders"]:
        offender["example_traces"] = [trace_url(jaeger_url, t) for t in offender["example_traces"]]
    for worst in data["worst"]:
        worst["example_trace"] = trace_url(jaeger_url, worst["example_trace"])
    data["warnings"] = warnings(report)
    return json.dumps(data, indent=2) + "\n"
