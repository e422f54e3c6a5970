"""Random scopes through one hot path, their results as JSON: run by test_compiled.py under both paths.

`python compiled_cases.py SEED SCOPES` builds scopes from a seeded generator (DB spans of several
systems, repeated and new statements, connection spans, HTTP calls and their outer layers, spans under
an INTERNAL span, explicit nested scopes, routes set late, spans of no scope), all with explicit start
and end times, and prints one JSON document: which hot path ran, what the generator made (the ground
truth the test checks the counts against) and every scope's result without its probe readings (memory,
CPU: they differ from process to process).
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from otel_budget import BudgetSpanProcessor, ScopeResult, names
from otel_budget.config import parse_config

PROBES = (names.MEMORY_GROWTH_MB, names.MEMORY_PEAK_GROWTH_MB, names.CPU_MS)
STATEMENTS = (
    "SELECT * FROM book WHERE id = 1", "SELECT * FROM book WHERE id = 2", "SELECT * FROM author WHERE id = 7",
    "UPDATE stock SET n = n - 1 WHERE id = 3", "SELECT 1", "INSERT INTO log VALUES ('a', 2)",
)  # fmt: skip
SYSTEMS = ("postgresql", "postgresql", "mysql", "sqlite", "mongodb", "redis")
CONFIG = {
    "http": {
        "db.queries": 6, "db.duration_ms": 2.5, "db.repeated_queries": 3, "db.repeated_duration_ms": 1.0,
        "db.postgresql.queries": 4, "external.calls": 1,
        "route": [{"match": "big/", "db.queries": 40, "db.mysql.duration_ms": 0.5}],
    },
    "scope": {"db.queries": 2},
}  # fmt: skip


class Clock:
    """Explicit span times: every span starts and ends at a time the generator chose."""

    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000_000

    def tick(self, rng: random.Random) -> int:
        self.now += rng.randrange(1_000, 400_000)
        return self.now


def db_span(tracer: Any, rng: random.Random, clock: Clock, context: Any, truth: dict[str, int]) -> None:
    system = rng.choice(SYSTEMS)
    stable = rng.random() < 0.5
    keys = ("db.system.name", "db.query.text") if stable else ("db.system", "db.statement")
    attributes: dict[str, Any] = {keys[0]: system}
    if system == "mongodb":
        attributes.update({keys[1]: "find", "db.mongodb.collection": rng.choice(("books", "authors"))})
        if rng.random() < 0.3:  # the same text under another operation: another key (the compiled cache's check)
            attributes["db.operation"] = rng.choice(("find", "aggregate"))
    elif system == "redis":
        attributes[keys[1]] = rng.choice(("GET k", "SET k v"))
    else:
        statement = rng.choice(STATEMENTS) if rng.random() < 0.85 else f"SELECT {rng.randrange(10**6)} AS fresh"
        attributes[keys[1]] = statement
    name = "connect" if rng.random() < 0.05 else "SELECT"
    span = tracer.start_span(name, context=context, kind=SpanKind.CLIENT, attributes=attributes, start_time=clock.tick(rng))
    if rng.random() < 0.1:  # another layer around the round trip (an ORM's span over the driver's)
        inner = tracer.start_span(
            name, context=trace.set_span_in_context(span), kind=SpanKind.CLIENT, attributes=attributes,
            start_time=clock.tick(rng),
        )  # fmt: skip
        inner.end(end_time=clock.tick(rng))
    span.end(end_time=clock.tick(rng))
    if name != "connect":
        truth["queries"] += 1


def http_span(tracer: Any, rng: random.Random, clock: Clock, context: Any, truth: dict[str, int]) -> None:
    attributes = {"http.request.method": "GET", "url.full": "http://127.0.0.1:9/x"}
    outer = tracer.start_span("GET", context=context, kind=SpanKind.CLIENT, attributes=attributes, start_time=clock.tick(rng))
    inner = tracer.start_span(
        "GET", context=trace.set_span_in_context(outer), kind=SpanKind.CLIENT, attributes=attributes,
        start_time=clock.tick(rng),
    )  # fmt: skip
    inner.end(end_time=clock.tick(rng))
    outer.end(end_time=clock.tick(rng))
    truth["calls"] += 1


def children(tracer: Any, rng: random.Random, clock: Clock, parent: Any, truth: dict[str, int], depth: int) -> None:
    context = trace.set_span_in_context(parent)
    for _ in range(rng.randrange(0, 30)):
        roll = rng.random()
        if roll < 0.75 or depth > 1:
            db_span(tracer, rng, clock, context, truth)
        elif roll < 0.85:
            http_span(tracer, rng, clock, context, truth)
        elif roll < 0.95:  # a span of the app or framework, with spans under it
            middle = tracer.start_span("render", context=context, start_time=clock.tick(rng))
            children(tracer, rng, clock, middle, truth, depth + 1)
            middle.end(end_time=clock.tick(rng))
        else:  # an explicit scope inside this one: its counts are added to this one's too
            nested = tracer.start_span("nested", context=context, attributes={names.SCOPE_NAME: "nested"}, start_time=clock.tick(rng))
            children(tracer, rng, clock, nested, truth, depth + 1)
            nested.end(end_time=clock.tick(rng))


def one_scope(tracer: Any, rng: random.Random, clock: Clock, truth: dict[str, int]) -> None:
    route = rng.choice(("items/", "big/", None))
    span = tracer.start_span(
        "GET", kind=SpanKind.SERVER, attributes={"http.request.method": "GET"}, start_time=clock.tick(rng)
    )
    if route is not None and rng.random() < 0.5:
        span.set_attribute("http.route", route)  # set at once, or after the first spans (like Django)
        route = None
    children(tracer, rng, clock, span, truth, 0)
    if route is not None:
        span.set_attribute("http.route", route)
    children(tracer, rng, clock, span, truth, 0)
    span.end(end_time=clock.tick(rng))


def as_json(result: ScopeResult) -> dict[str, Any]:
    return {
        "kind": str(result.kind), "name": result.name, "rule": result.rule,
        "values": {metric: value for metric, value in sorted(result.values.items()) if metric not in PROBES},
        "violations": [
            [v.metric, v.limit, v.actual, v.rule, v.timestamp_ns, v.statement] for v in result.violations
        ],
        "repeated_statement": result.repeated_statement,
    }  # fmt: skip


def main(seed: int, scopes: int) -> dict[str, Any]:
    provider = TracerProvider()
    processor = BudgetSpanProcessor(config=parse_config(CONFIG, source="budgets.toml"), record_metrics=False)
    provider.add_span_processor(processor)
    results: list[ScopeResult] = []
    processor.add_listener(results.append)
    tracer = provider.get_tracer("cases")
    rng, clock = random.Random(seed), Clock()
    truth = {"queries": 0, "calls": 0}
    for _ in range(scopes):
        one_scope(tracer, rng, clock, truth)
    db_span(tracer, rng, clock, None, {"queries": 0})  # a span of no scope: counted nowhere
    provider.shutdown()
    return {"compiled": processor.compiled, "truth": truth, "results": [as_json(result) for result in results]}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
