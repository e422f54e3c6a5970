"""Where `otel-budget report` reads scope spans from: Jaeger's HTTP API or an OTLP/JSON file.

Both are read into `ScopeResult` by `spanformat.decode`: what the processor wrote on one scope span.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otel_budget import names, spanformat
from otel_budget.normalize import shorten
from otel_budget.results import ScopeResult
from otel_budget.tally import statement_key

__all__ = [
    "JaegerRead",
    "SourceError",
    "TraceSpan",
    "UnknownServiceError",
    "parse_lookback",
    "read_jaeger",
    "read_jaeger_trace",
    "read_otlp_json",
    "scope_spans_from_jaeger",
    "scope_spans_from_otlp",
    "trace_spans_from_jaeger",
    "trace_spans_from_otlp",
]

_LOOKBACK = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_OTLP_KINDS = {2: "server", 5: "consumer", "SPAN_KIND_SERVER": "server", "SPAN_KIND_CONSUMER": "consumer"}

Progress = Callable[[str], None]


class SourceError(Exception):
    """Spans could not be read: the backend is unreachable or the file is not OTLP/JSON."""


class UnknownServiceError(SourceError):
    """A service asked for is not among those Jaeger knows."""


@dataclass(frozen=True)
class JaegerRead:
    """What `read_jaeger` read: the scope spans, the services, and those of which `limit` traces came back."""

    spans: list[ScopeResult]
    services: list[str]
    capped: list[str]  # services whose answer held `limit` traces: older ones in the lookback were not read


@dataclass(frozen=True)
class TraceSpan:
    """One span of a trace, as much of it as a waterfall shows."""

    span_id: int
    parent_id: int  # 0 for a root span
    name: str
    service: str
    start_ns: int
    end_ns: int
    statement: str | None = None  # `db.query.text` / `db.statement` of a DB client span
    db_system: str | None = None
    statement_key: str | None = None  # what the processor counts repeats on, as a budget.statement names it
    scope: bool = False  # a scope span (it carries `budget.violations`)


def _trace_span(
    attributes: Mapping[str, Any], *, span_id: int, parent_id: int, name: str, service: str, start_ns: int, end_ns: int
) -> TraceSpan:
    statement = next((attributes[key] for key in names.DB_STATEMENT if attributes.get(key) is not None), None)
    system = next((attributes[key] for key in names.DB_SYSTEM if attributes.get(key) is not None), None)
    return TraceSpan(
        span_id=span_id,
        parent_id=parent_id,
        name=name,
        service=service,
        start_ns=start_ns,
        end_ns=max(start_ns, end_ns),
        statement=str(statement) if statement is not None else None,
        db_system=str(system) if system is not None else None,
        statement_key=shorten(statement_key(str(system), attributes, name)) if system is not None else None,
        scope=names.ATTR_VIOLATIONS in attributes,
    )


def parse_lookback(text: str) -> int:
    """`30m`, `1h`, `2d`, `1w` → seconds.

    Raises:
        ValueError: not a number followed by one of s, m, h, d, w.
    """
    match = _LOOKBACK.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid lookback {text!r}: use a number and a unit s, m, h, d or w, e.g. 30m, 1h, 2d")
    return int(match.group(1)) * _SECONDS[match.group(2)]


# -- Jaeger -----------------------------------------------------------------------------------------------
def read_jaeger(
    url: str,
    *,
    services: Sequence[str] = (),
    lookback_s: int = 3600,
    limit: int = 500,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> JaegerRead:
    """Scope spans of the traces Jaeger has for `services` (default: every service it knows).

    Raises:
        UnknownServiceError: a service in `services` is not one Jaeger knows.
        SourceError: Jaeger cannot be reached or answers with an error.
    """
    base = url.rstrip("/")
    say = progress or (lambda message: None)
    if not services:
        say(f"jaeger: listing services at {base}/api/services")
    known = sorted(_get_json(f"{base}/api/services", timeout).get("data") or [])
    unknown = [service for service in services if service not in known]
    if unknown:
        raise UnknownServiceError(
            f"no such service in Jaeger: {', '.join(unknown)} (known: {', '.join(known) or 'none'}; "
            "a service appears once it has sent a trace, under its OTEL_SERVICE_NAME)"
        )
    services = list(services) or known
    capped: list[str] = []
    end_us = int(time.time() * 1e6)
    seen: set[tuple[int, int]] = set()
    spans: list[ScopeResult] = []
    for service in services:
        started = time.monotonic()
        query = urllib.parse.urlencode(
            {
                "service": service,
                "limit": limit,
                "lookback": f"{lookback_s}s",
                "start": end_us - lookback_s * 1_000_000,
                "end": end_us,
            }
        )
        traces = _get_json(f"{base}/api/traces?{query}", timeout).get("data") or []
        if len(traces) >= limit:
            capped.append(service)
        found = 0
        for scope in scope_spans_from_jaeger(traces):
            key = (scope.trace_id, scope.span_id)
            if key not in seen:
                seen.add(key)
                spans.append(scope)
                found += 1
        say(f"jaeger: {service}: {len(traces)} trace(s), {found} new scope span(s) ({time.monotonic() - started:.1f}s)")
    return JaegerRead(spans, list(services), capped)


def scope_spans_from_jaeger(traces: Iterable[Mapping[str, Any]]) -> Iterator[ScopeResult]:
    """The scope spans in Jaeger's v1 JSON traces (`/api/traces` → `data`)."""
    for trace in traces:
        processes = trace.get("processes") or {}
        for span in trace.get("spans") or []:
            attributes = {tag["key"]: tag.get("value") for tag in span.get("tags") or []}
            events = []
            for log in span.get("logs") or []:
                fields = {field["key"]: field.get("value") for field in log.get("fields") or []}
                events.append((str(fields.pop("event", "")), fields, int(log.get("timestamp", 0)) * 1000))
            process = processes.get(span.get("processID"), {})
            scope = spanformat.decode(
                attributes,
                events,
                span_name=str(span.get("operationName", "")),
                span_kind=str(attributes.get(names.SPAN_KIND, "")),
                service=str(process.get("serviceName", "")),
                trace_id=_int_id(span.get("traceID", "")),
                span_id=_int_id(span.get("spanID", "")),
                start_ns=int(span.get("startTime", 0)) * 1000,
            )
            if scope is not None:
                yield scope


def read_jaeger_trace(url: str, trace_id: str, *, timeout: float = 30.0) -> list[TraceSpan]:
    """Every span of one trace (`/api/traces/{id}`).

    Raises:
        SourceError: Jaeger cannot be reached, answers with an error, or does not have the trace.
    """
    data = _get_json(f"{url.rstrip('/')}/api/traces/{trace_id}", timeout).get("data") or []
    if not data:
        raise SourceError(f"Jaeger has no trace {trace_id}")
    return [span for trace in data for span in trace_spans_from_jaeger(trace)]


def trace_spans_from_jaeger(trace: Mapping[str, Any]) -> list[TraceSpan]:
    """The spans of one trace in Jaeger's v1 JSON (an element of `/api/traces` → `data`)."""
    processes = trace.get("processes") or {}
    spans = []
    for span in trace.get("spans") or []:
        attributes = {tag["key"]: tag.get("value") for tag in span.get("tags") or []}
        parent = next(
            (ref.get("spanID", "") for ref in span.get("references") or [] if ref.get("refType") == "CHILD_OF"), ""
        )
        start_ns = int(span.get("startTime", 0)) * 1000
        spans.append(
            _trace_span(
                attributes,
                span_id=_int_id(span.get("spanID", "")),
                parent_id=_int_id(parent),
                name=str(span.get("operationName", "")),
                service=str(processes.get(span.get("processID"), {}).get("serviceName", "")),
                start_ns=start_ns,
                end_ns=start_ns + int(span.get("duration", 0)) * 1000,
            )
        )
    return spans


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        raise SourceError(f"{url}: HTTP {exc.code} {exc.reason}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(
            f"cannot reach Jaeger at {url}: {reason} (tried Jaeger's query API, the UI's address, "
            "usually port 16686; pass another with --jaeger URL, e.g. --jaeger http://jaeger.internal:16686)"
        ) from None
    try:
        data = json.loads(body)
    except ValueError:
        raise SourceError(f"{url}: not JSON: {body[:200]!r}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{url}: unexpected answer: {body[:200]!r}")
    return data


# -- OTLP/JSON ----------------------------------------------------------------------------------------------
def read_otlp_json(path: str, traces: dict[int, list[TraceSpan]] | None = None) -> list[ScopeResult]:
    """Scope spans in an OTLP/JSON file: the collector's file exporter (one request per line),
    Jaeger's `/api/v3/traces` answer, or a single `{"resourceSpans": [...]}` document; `-` reads stdin.

    Args:
        traces: when given, every span of the file is added to it by trace id too (for waterfalls).

    Raises:
        SourceError: the file cannot be read or holds no OTLP/JSON traces.
    """
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
    documents = _json_documents(text, path)
    spans: list[ScopeResult] = []
    for document in documents:
        spans.extend(scope_spans_from_otlp(document))
        if traces is not None:
            for trace_id, members in trace_spans_from_otlp(document).items():
                traces.setdefault(trace_id, []).extend(members)
    return spans


def _json_documents(text: str, path: str) -> list[Any]:
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    else:
        return whole if isinstance(whole, list) else [whole]
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                documents.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}:{number}: not JSON ({exc.msg}); expected OTLP/JSON traces") from None
    return documents


def scope_spans_from_otlp(document: Any) -> Iterator[ScopeResult]:
    """The scope spans in one OTLP/JSON `ExportTraceServiceRequest` (or Jaeger's `{"result": ...}`)."""
    if not isinstance(document, dict):
        raise SourceError(f"expected an OTLP/JSON object with resourceSpans, got {type(document).__name__}")
    if isinstance(document.get("result"), dict):
        document = document["result"]
    if "resourceSpans" not in document:
        raise SourceError(f"not OTLP/JSON traces: no resourceSpans (keys: {', '.join(sorted(document)) or 'none'})")
    for resource_spans in document["resourceSpans"] or []:
        resource = _otlp_attributes((resource_spans.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                events = [
                    (
                        str(event.get("name", "")),
                        _otlp_attributes(event.get("attributes")),
                        int(event.get("timeUnixNano", 0)),
                    )
                    for event in span.get("events") or []
                ]
                scope = spanformat.decode(
                    _otlp_attributes(span.get("attributes")),
                    events,
                    span_name=str(span.get("name", "")),
                    span_kind=_OTLP_KINDS.get(span.get("kind", 0), ""),
                    service=service,
                    trace_id=_int_id(span.get("traceId", "")),
                    span_id=_int_id(span.get("spanId", "")),
                    start_ns=int(span.get("startTimeUnixNano", 0)),
                )
                if scope is not None:
                    yield scope


def trace_spans_from_otlp(document: Any) -> dict[int, list[TraceSpan]]:
    """Every span in one OTLP/JSON document, by trace id (for the HTML report's waterfalls)."""
    if isinstance(document, dict) and isinstance(document.get("result"), dict):
        document = document["result"]
    traces: dict[int, list[TraceSpan]] = {}
    for resource_spans in (document.get("resourceSpans") if isinstance(document, dict) else None) or []:
        resource = _otlp_attributes((resource_spans.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                traces.setdefault(_int_id(span.get("traceId", "")), []).append(
                    _trace_span(
                        _otlp_attributes(span.get("attributes")),
                        span_id=_int_id(span.get("spanId", "")),
                        parent_id=_int_id(span.get("parentSpanId", "")),
                        name=str(span.get("name", "")),
                        service=service,
                        start_ns=int(span.get("startTimeUnixNano", 0)),
                        end_ns=int(span.get("endTimeUnixNano", 0)),
                    )
                )
    return traces


def _otlp_attributes(items: Any) -> dict[str, Any]:
    return {item["key"]: _otlp_value(item.get("value") or {}) for item in items or []}


def _otlp_value(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # a string in OTLP/JSON (64-bit)
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in value["arrayValue"].get("values") or []]
    return None


def _int_id(raw: str) -> int:
    """OTLP/JSON and Jaeger ids are hex; protobuf's own JSON mapping writes base64 (padded with `=`)."""
    text = str(raw)
    if text.endswith("="):
        try:
            return int.from_bytes(base64.b64decode(text, validate=True), "big")
        except (binascii.Error, ValueError):
            pass
    try:
        return int(text, 16) if text else 0
    except ValueError:
        raise SourceError(f"not a trace or span id: {text[:40]!r}") from None
