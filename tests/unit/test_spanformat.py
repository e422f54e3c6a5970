"""spanformat: a ScopeResult written on its span by the processor reads back as the same ScopeResult."""

from __future__ import annotations

import dataclasses

from otel_budget import ScopeResult, Violation, spanformat
from otel_budget.config import parse_config
from otel_budget.names import ScopeKind
from otel_budget.scope import budget_scope


def _read_back(tracing, name: str) -> ScopeResult | None:  # type: ignore[no-untyped-def]
    return spanformat.decode_span(tracing.span(name))


def test_request_round_trip(tracing) -> None:  # type: ignore[no-untyped-def]
    """Counts, rule, violations with their crossing times and the repeated statement survive encode + decode."""
    tracing.processor.config = parse_config({"http": {"db.queries": 3, "db.repeated_queries": 2}}, source="t.toml")
    with tracing.request("orders/"):
        for _ in range(4):
            tracing.db("SELECT * FROM orders WHERE id = 7")
        tracing.db("SELECT 1", system="mongodb")
    (sent,) = tracing.results
    read = _read_back(tracing, "GET orders/")
    assert read is not None
    assert sorted(v.metric for v in sent.violations) == ["db.queries", "db.repeated_queries"]
    assert read.service == "unknown_service:python" and read.start_ns == tracing.span("GET orders/").start_time
    assert read == dataclasses.replace(sent, service=read.service, start_ns=read.start_ns)


def test_scope_without_violation_has_no_statement_after_decoding(tracing) -> None:  # type: ignore[no-untyped-def]
    """Only a `db.repeated_queries` event exports the statement; within budget it stays in the process."""
    with budget_scope("nightly", tracer_provider=tracing.provider):
        tracing.db("SELECT 1")
    (sent,) = tracing.results
    read = _read_back(tracing, "nightly")
    assert sent.repeated_statement == "SELECT ?"
    assert read == dataclasses.replace(
        sent, repeated_statement=None, service=read.service, start_ns=read.start_ns  # type: ignore[union-attr]
    )
    assert read is not None and (read.kind, read.label) == (ScopeKind.SCOPE, "scope nightly")


def test_encode_is_what_the_processor_wrote(tracing) -> None:  # type: ignore[no-untyped-def]
    """The span's budget.* attributes and events are exactly `encode(result)`."""
    tracing.processor.config = parse_config({"http": {"db.queries": 1}}, source="t.toml")
    with tracing.request("items/"):
        tracing.db("SELECT 1")
        tracing.db("SELECT 2")
    (sent,) = tracing.results
    span = tracing.span("GET items/")
    summary, events = spanformat.encode(sent)
    ours = {key: value for key, value in span.attributes.items() if key.startswith("budget.")}
    assert ours == summary
    assert [(e.name, dict(e.attributes), e.timestamp) for e in span.events] == events


def test_decode_skips_spans_that_are_not_scope_spans() -> None:
    """A span without `budget.violations` is not a scope span."""
    assert spanformat.decode({"http.route": "x"}, [], span_name="x", span_kind="server", trace_id=1, span_id=2) is None


def test_decode_names_each_kind() -> None:
    """Request by route and method, task by celery.task_name or span name, scope by budget.scope."""
    common = {"budget.violations": 0, "budget.rule": "http"}

    def decoded(attributes: dict[str, object], span_name: str, kind: str) -> tuple[str, str, str | None]:
        result = spanformat.decode({**common, **attributes}, [], span_name=span_name, span_kind=kind, trace_id=1, span_id=2)
        assert result is not None
        return result.kind, result.name, result.method

    assert decoded({"http.route": "a/", "http.method": "PUT"}, "PUT a/", "server") == ("http", "a/", "PUT")
    assert decoded({}, "run/shop.rebuild", "consumer") == ("celery", "shop.rebuild", None)
    assert decoded({"celery.task_name": "t.x"}, "run/other", "consumer") == ("celery", "t.x", None)
    assert decoded({"budget.scope": "cron"}, "cron", "") == ("scope", "cron", None)


def test_decode_names_a_request_without_route_unmatched() -> None:
    """A request span with no `http.route` reads back as `<method> unmatched`, never its span name (a raw path)."""
    summary = {"budget.violations": 0, "budget.rule": "http", "http.request.method": "GET"}
    result = spanformat.decode(summary, [], span_name="GET /no/such/4a6f", span_kind="server", trace_id=1, span_id=2)
    assert result is not None
    assert (result.kind, result.name, result.method) == ("http", "GET unmatched", "GET")


def test_decode_names_a_request_without_route_as_the_processor_does() -> None:
    """A route-less request is `<method> unmatched`, never its span's name (a raw path under ASGI)."""
    common = {"budget.violations": 0, "budget.rule": "http"}
    for attributes, span_name, expected in [
        ({"http.method": "GET", "http.target": "/aorm/20/"}, "GET /aorm/20/", "GET unmatched"),
        ({"http.request.method": "POST", "url.path": "/aorm/21/"}, "POST /aorm/21/", "POST unmatched"),
        ({}, "/aorm/22/", "HTTP unmatched"),
    ]:
        result = spanformat.decode({**common, **attributes}, [], span_name=span_name, span_kind="server", trace_id=1, span_id=2)
        assert result is not None
        assert (result.kind, result.name) == ("http", expected)


def test_decode_span_agrees_with_the_processor_on_unrouted_requests() -> None:
    """An ASGI request that matched no route: the processor's result and `decode_span` of its span have one name."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from otel_budget import BudgetSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    processor = BudgetSpanProcessor()
    published: list[ScopeResult] = []
    processor.add_listener(published.append)
    provider.add_span_processor(processor)
    attributes = {"http.request.method": "GET", "url.path": "/aorm/20/", "http.scheme": "http"}
    with provider.get_tracer("asgi").start_as_current_span("GET /aorm/20/", kind=SpanKind.SERVER, attributes=attributes):
        pass
    provider.shutdown()
    (span,) = exporter.get_finished_spans()
    decoded = spanformat.decode_span(span)
    assert decoded is not None and [result.name for result in published] == [decoded.name] == ["GET unmatched"]


def test_event_identity_per_kind() -> None:
    """Events name the route and method, the task or the scope."""
    base = ScopeResult(
        kind=ScopeKind.CELERY, name="t.x", method=None, rule="celery", values={"db.queries": 2},
        violations=(Violation("db.queries", 1, 2, "celery", 5),), trace_id=1, span_id=2,
    )  # fmt: skip
    ((name, attributes, timestamp),) = spanformat.encode_events(base)
    assert (name, timestamp) == ("budget.exceeded", 5)
    assert attributes == {
        "budget.metric": "db.queries", "budget.limit": 1, "budget.actual": 2, "budget.rule": "celery",
        "celery.task_name": "t.x",
    }  # fmt: skip


def test_untimed_call_details_round_trip() -> None:
    """An untimed call's library, target and call site go out as `budget.*` event attributes and come back."""
    details = {"library": "requests", "target": "127.0.0.1:8080", "call_site": "shop/views.py:42"}
    sent = ScopeResult(
        kind=ScopeKind.HTTP, name="quote/", method="GET", rule="http", values={"external.untimed_calls": 1},
        violations=(Violation("external.untimed_calls", 0, 1, "http", 9, details=details),), trace_id=1, span_id=2,
    )  # fmt: skip
    summary, events = spanformat.encode(sent)
    ((_, attributes, _),) = events
    assert {key: attributes[key] for key in ("budget.library", "budget.target", "budget.call_site")} == {
        "budget.library": "requests", "budget.target": "127.0.0.1:8080", "budget.call_site": "shop/views.py:42",
    }  # fmt: skip
    read = spanformat.decode(summary, events, span_name="GET quote/", span_kind="server", trace_id=1, span_id=2)
    assert read is not None
    assert read.violations == sent.violations
    assert read.values == {"external.untimed_calls": 1.0}


def test_violation_without_details_has_no_detail_attributes() -> None:
    """Other violations carry no library, target or call site."""
    base = ScopeResult(
        kind=ScopeKind.SCOPE, name="cron", method=None, rule="scope", values={"db.queries": 2},
        violations=(Violation("db.queries", 1, 2, "scope", 5),), trace_id=1, span_id=2,
    )  # fmt: skip
    ((_, attributes, _),) = spanformat.encode_events(base)
    assert not any(key in attributes for key in ("budget.library", "budget.target", "budget.call_site"))
    read = spanformat.decode({"budget.violations": 1, "budget.rule": "scope", "budget.scope": "cron"}, [
        ("budget.exceeded", attributes, 5)], span_name="cron", span_kind="", trace_id=1, span_id=2)
    assert read is not None and read.violations[0].details is None


def test_a_result_made_in_one_step_is_the_dataclass_one() -> None:
    """`results.finished` (the processor's, at every scope's end) sets every field `ScopeResult` has, as its
    `__init__` does: a field added to the dataclass and not there fails here."""
    import pytest

    from otel_budget.results import finished

    violation = Violation(metric="db.queries", limit=1, actual=2, rule="http", timestamp_ns=5)
    fields = dict(
        kind=ScopeKind.HTTP, name="r/", method="GET", rule="http", values={"db.queries": 2},
        violations=(violation,), trace_id=7, span_id=9, repeated_statement="SELECT ?", config_error=None,
    )  # fmt: skip
    made = finished(**fields)  # type: ignore[arg-type]
    assert made == ScopeResult(**fields)  # type: ignore[arg-type]
    assert list(vars(made)) == [field.name for field in dataclasses.fields(ScopeResult)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.name = "other"  # type: ignore[misc]
