"""Read spans back from Jaeger's HTTP API (the JSON behind its UI), as plain data.

    reader = JaegerReader()
    spans = reader.wait_for(trace_id, lambda spans: any(s.is_scope for s in spans))
    scope = next(s for s in spans if s.is_scope).scope  # an otel_budget ScopeResult
    scope.values["db.queries"], [v.metric for v in scope.violations]

Standard library and otel_budget (its `spanformat` reads what it wrote); used by examples/demo.py and
tests/e2e.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from otel_budget import spanformat
from otel_budget.results import ScopeResult

JAEGER_URL = "http://127.0.0.1:16686"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy loopback


class JaegerError(RuntimeError):
    """Jaeger did not answer, or not with what was waited for."""


@dataclass(frozen=True)
class ExportedSpan:
    """A span as Jaeger stored it: tags (attributes), logs (events), service."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str
    kind: str  # "server", "client", "consumer", "producer", "internal"
    start_us: int
    duration_us: int
    attributes: Mapping[str, Any]
    events: tuple[tuple[str, Mapping[str, Any], int], ...]  # (name, attributes, timestamp µs)

    @property
    def is_scope(self) -> bool:
        """A span otel-budget finished a scope on (it carries `budget.violations`)."""
        return "budget.violations" in self.attributes

    @property
    def scope(self) -> ScopeResult:
        """What otel-budget wrote on this scope span, read back by `otel_budget.spanformat`.

        Raises:
            JaegerError: the span is not a scope span.
        """
        scope = spanformat.decode(
            self.attributes,
            [(name, attributes, timestamp_us * 1000) for name, attributes, timestamp_us in self.events],
            span_name=self.name,
            span_kind=self.kind,
            trace_id=int(self.trace_id, 16),
            span_id=int(self.span_id, 16),
            service=self.service,
            start_ns=self.start_us * 1000,
        )
        if scope is None:
            raise JaegerError(f"{self.service}:{self.name} is not a scope span (no budget.violations)")
        return scope


class JaegerReader:
    """A small client of Jaeger's query API (`/api/traces`, `/api/services`)."""

    def __init__(self, base_url: str = JAEGER_URL, *, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def link(self, trace_id: str) -> str:
        return f"{self.base_url}/trace/{trace_id}"

    def api_link(self, trace_id: str) -> str:
        return f"{self.base_url}/api/traces/{trace_id}"

    def services(self) -> list[str]:
        return list(self._get("/api/services").get("data") or [])

    def trace(self, trace_id: str) -> list[ExportedSpan]:
        """The spans of one trace stored so far ([] while Jaeger has none)."""
        try:
            body = self._get(f"/api/traces/{trace_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return [span for data in body.get("data") or [] for span in _spans(data)]

    def search(
        self, service: str, *, start_us: int | None = None, limit: int = 200, operation: str | None = None
    ) -> list[list[ExportedSpan]]:
        """Traces with spans of `service` that started after `start_us` (`/api/traces?service=...`)."""
        params: dict[str, str] = {"service": service, "limit": str(limit)}
        if start_us is not None:
            params["start"] = str(start_us)
            params["end"] = str(int(time.time() * 1e6) + 60_000_000)
        else:
            params["lookback"] = "1h"
        if operation:
            params["operation"] = operation
        body = self._get("/api/traces?" + urllib.parse.urlencode(params))
        return [_spans(data) for data in body.get("data") or []]

    def wait_for(
        self,
        trace_id: str,
        ready: Callable[[list[ExportedSpan]], bool],
        *,
        timeout_s: float = 20.0,
        what: str = "the expected spans",
    ) -> list[ExportedSpan]:
        """Poll the trace until `ready(spans)`; spans arrive after the apps' batch delay and the collector's.

        Raises:
            JaegerError: not there within `timeout_s` (the message lists what did arrive).
        """
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        spans: list[ExportedSpan] = []
        while True:
            spans = self.trace(trace_id)
            if ready(spans):
                return spans
            if time.monotonic() > deadline:
                got = ", ".join(f"{s.service}:{s.name}" for s in spans) or "no spans"
                raise JaegerError(f"trace {trace_id}: {what} not in Jaeger after {timeout_s:.0f} s (got {got})")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _get(self, path: str) -> dict[str, Any]:
        with _OPENER.open(self.base_url + path, timeout=self.timeout_s) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


def _spans(data: Mapping[str, Any]) -> list[ExportedSpan]:
    services = {pid: p.get("serviceName", "") for pid, p in (data.get("processes") or {}).items()}
    result = []
    for raw in data.get("spans") or []:
        attributes = {tag["key"]: tag.get("value") for tag in raw.get("tags") or []}
        parent = next(
            (ref["spanID"] for ref in raw.get("references") or [] if ref.get("refType") == "CHILD_OF"), None
        )
        events = []
        for log in raw.get("logs") or []:
            fields = {f["key"]: f.get("value") for f in log.get("fields") or []}
            events.append((str(fields.pop("event", "")), fields, int(log.get("timestamp", 0))))
        result.append(
            ExportedSpan(
                trace_id=raw["traceID"],
                span_id=raw["spanID"],
                parent_span_id=parent,
                name=raw.get("operationName", ""),
                service=services.get(raw.get("processID"), ""),
                kind=str(attributes.get("span.kind", "internal")),
                start_us=int(raw.get("startTime", 0)),
                duration_us=int(raw.get("duration", 0)),
                attributes=attributes,
                events=tuple(events),
            )
        )
    return result
