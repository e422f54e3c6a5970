"""Scopes that never end, and spans that never end inside scopes, cost bounded memory and time.

In-process: an SDK TracerProvider with the real `BudgetSpanProcessor` (no exporter, so only our
own state is measured), metrics into an in-memory reader, and our logger captured.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

import reliability_kit as kit
from otel_budget import BudgetSpanProcessor, ScopeResult, _ratelimit

SCOPES = 100_000
WARM_UP = 20_000  # the table is full and evicting from here on; RSS is compared after this point
FLAT_MIB = 8.0  # RSS may move this much over 80 000 more scopes and still count as flat
QUERY = {"db.system": "postgresql", "db.statement": "SELECT name FROM store_product WHERE sku = %s"}


@dataclass
class Harness:
    provider: TracerProvider
    processor: BudgetSpanProcessor
    reader: InMemoryMetricReader
    results: list[ScopeResult] = field(default_factory=list)
    records: list[logging.LogRecord] = field(default_factory=list)

    @property
    def tracer(self) -> trace.Tracer:
        return self.provider.get_tracer("reliability.leaks")

    def evicted_metric(self) -> int:
        data = self.reader.get_metrics_data()
        points = [
            point.value
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "budget.scopes.evicted"
            for point in metric.data.data_points
        ]
        return int(sum(points))

    def logged(self, text: str) -> list[logging.LogRecord]:
        return [record for record in self.records if text in record.getMessage()]


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def harness_factory() -> Iterator[Callable[..., Harness]]:
    made: list[tuple[Harness, logging.Handler]] = []
    logger = logging.getLogger("otel_budget")

    def make(max_open_scopes: int, *, keep_results: bool = True) -> Harness:
        _ratelimit.reset()
        reader = InMemoryMetricReader()
        processor = BudgetSpanProcessor(
            max_open_scopes=max_open_scopes, meter_provider=MeterProvider(metric_readers=[reader])
        )
        provider = TracerProvider()
        provider.add_span_processor(processor)
        harness = Harness(provider, processor, reader)
        if keep_results:
            processor.add_listener(harness.results.append)
        handler = _Collect(harness.records)
        logger.addHandler(handler)
        made.append((harness, handler))
        return harness

    yield make
    for harness, handler in made:
        logger.removeHandler(handler)
        harness.provider.shutdown()
    _ratelimit.reset()


def rss_mib() -> float:
    gc.collect()
    return kit.rss_mib_self()


def _query(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=QUERY):
        pass


def _abandoned_request(tracer: trace.Tracer, open_children: int = 1) -> None:
    """A request whose span is never ended: one query done, `open_children` spans left open inside it."""
    span = tracer.start_span("GET leak/", kind=SpanKind.SERVER, attributes={"http.route": "leak/"})
    with trace.use_span(span, end_on_exit=False):
        _query(tracer)
        for _ in range(open_children):
            tracer.start_span("never-ended-child")


def _crashing_thread(tracer: trace.Tracer) -> None:
    """A worker thread that opens a scope and dies of an exception before ending it."""

    def run() -> None:
        span = tracer.start_span("run/leak.task", kind=SpanKind.CONSUMER)
        with trace.use_span(span, end_on_exit=False):
            _query(tracer)
            raise RuntimeError("worker thread crashed")

    previous = threading.excepthook
    threading.excepthook = lambda args: None  # the crash is the point; keep the log quiet
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        threading.excepthook = previous


def _good_request(tracer: trace.Tracer, queries: int) -> None:
    """A request that ends; its route names how many queries it made."""
    route = f"good/{queries}/"
    with tracer.start_as_current_span(f"GET {route}", kind=SpanKind.SERVER, attributes={"http.route": route}):
        for _ in range(queries):
            _query(tracer)


def test_never_ended_scopes_are_evicted_counted_reported_and_memory_stays_flat(
    harness_factory: Callable[..., Harness], figure: Callable[[str, str], None]
) -> None:
    """100 000 scopes that never end (abandoned requests, crashed threads): evicted, counted, logged; RSS flat."""
    cap = 1_000
    h = harness_factory(cap)
    tracer = h.tracer
    start = rss_mib()
    at_warm_up = 0.0
    started = time.perf_counter()
    for index in range(SCOPES):
        if index % 1000 == 999:
            _crashing_thread(tracer)
        else:
            _abandoned_request(tracer)
        if index % 500 == 0:  # a well-behaved request now and then, with its own count
            _good_request(tracer, 1 + index % 7)
        if index + 1 == WARM_UP:
            at_warm_up = rss_mib()
    end = rss_mib()
    seconds = time.perf_counter() - started
    figure(
        "never-ended scopes",
        f"{SCOPES} scopes (cap {cap}) in {seconds:.1f}s: RSS start {start:.1f} MiB, after {WARM_UP} "
        f"{at_warm_up:.1f} MiB, after {SCOPES} {end:.1f} MiB (growth after warm-up {end - at_warm_up:+.1f} MiB); "
        f"evicted {h.processor.evicted_scopes} (metric budget.scopes.evicted {h.evicted_metric()}), "
        f"open {h.processor.open_scopes}, eviction warnings logged {len(h.logged('evicted the oldest'))}",
    )
    assert h.processor.open_scopes == cap
    assert h.processor.evicted_scopes == SCOPES - cap
    assert h.evicted_metric() == SCOPES - cap
    warnings = h.logged("evicted the oldest")
    assert len(warnings) == 1, "the eviction warning is rate-limited to one line a minute"
    assert warnings[0].levelno == logging.WARNING
    assert end - at_warm_up <= FLAT_MIB
    goods = [r for r in h.results if r.name.startswith("good/")]
    assert [r.name for r in goods] == [f"good/{1 + i % 7}/" for i in range(0, SCOPES, 500)]
    assert [r.values["db.queries"] for r in goods] == [1 + i % 7 for i in range(0, SCOPES, 500)]


def test_scopes_that_end_with_spans_left_open_inside_leave_memory_flat(
    harness_factory: Callable[..., Harness], figure: Callable[[str, str], None]
) -> None:
    """40 000 requests that end normally but leave one child span open (a thread that died mid-query): RSS flat."""
    h = harness_factory(10_000, keep_results=False)
    counts: dict[int, int] = {}
    h.processor.add_listener(lambda r: counts.__setitem__(int(r.values["db.queries"]), counts.get(int(r.values["db.queries"]), 0) + 1))
    tracer = h.tracer
    scopes, warm_up = 40_000, 10_000
    start = rss_mib()
    at_warm_up = 0.0
    started = time.perf_counter()
    for index in range(scopes):
        with tracer.start_as_current_span("GET orders/", kind=SpanKind.SERVER, attributes={"http.route": "orders/"}):
            _query(tracer)
            tracer.start_span("SELECT (thread died)", kind=SpanKind.CLIENT, attributes=QUERY)  # never ended
        if index + 1 == warm_up:
            at_warm_up = rss_mib()
    end = rss_mib()
    seconds = time.perf_counter() - started
    figure(
        "ended scopes with a span left open",
        f"{scopes} scopes in {seconds:.1f}s: RSS start {start:.1f} MiB, after {warm_up} {at_warm_up:.1f} MiB, "
        f"after {scopes} {end:.1f} MiB (growth after warm-up {end - at_warm_up:+.1f} MiB, "
        f"{(end - at_warm_up) * 2**20 / (scopes - warm_up):.0f} bytes per scope); "
        f"open scopes {h.processor.open_scopes}, evicted {h.processor.evicted_scopes}",
    )
    assert counts == {1: scopes}
    assert end - at_warm_up <= FLAT_MIB, (
        "each finished scope stays referenced by the span-id map entry of its never-ended child "
        "(BudgetSpanProcessor._spans is only cleaned when that child ends or its scope is evicted)"
    )


def test_opening_a_scope_at_the_cap_costs_about_as_much_as_below_it(
    harness_factory: Callable[..., Harness], figure: Callable[[str, str], None]
) -> None:
    """At the default cap (10 000 open scopes), evicting the oldest must not make every new request slow."""
    cap = 10_000
    h = harness_factory(cap)
    tracer = h.tracer
    started = time.perf_counter()
    for _ in range(cap):
        _abandoned_request(tracer)
    below = (time.perf_counter() - started) / cap
    at_cap_count = 1_000
    started = time.perf_counter()
    for _ in range(at_cap_count):
        _abandoned_request(tracer)
    at_cap = (time.perf_counter() - started) / at_cap_count
    figure(
        "cost of a new scope",
        f"below the cap {below * 1e6:.0f} us, at the cap of {cap} (evicting) {at_cap * 1e6:.0f} us "
        f"({at_cap / below:.1f}x); evicted {h.processor.evicted_scopes}",
    )
    assert h.processor.evicted_scopes == at_cap_count
    # Generous: evicting one scope may cost as much as opening three, plus 50 us of noise.
    assert at_cap <= 3 * below + 50e-6, "evicting scans every open span's entry (O(open spans) per new scope)"


def test_concurrent_requests_at_the_cap_are_all_measured(
    harness_factory: Callable[..., Harness], figure: Callable[[str, str], None]
) -> None:
    """Threads opening scopes while others leak them at the cap: every well-behaved request measured, exactly."""
    h = harness_factory(500)
    tracer = h.tracer
    per_thread = 1_500
    errors: list[BaseException] = []

    def leak() -> None:
        for _ in range(per_thread):
            _abandoned_request(tracer, open_children=4)

    def good(offset: int) -> None:
        try:
            for index in range(per_thread):
                _good_request(tracer, 1 + (index + offset) % 3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    h.records.clear()
    threads = [threading.Thread(target=leak) for _ in range(3)] + [threading.Thread(target=good, args=(n,)) for n in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # switch threads often, as a busy gthread worker does
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    goods = [r for r in h.results if r.name.startswith("good/")]
    wrong = [r for r in goods if r.values["db.queries"] != int(r.name.split("/")[1])]
    failures = [r.getMessage().splitlines()[0] + f" [{r.exc_info[1]!r}]" for r in h.records if r.exc_info and r.exc_info[1]]
    figure(
        "requests at the cap, concurrently",
        f"{len(goods)} of {3 * per_thread} well-behaved requests measured, {len(wrong)} with wrong counts; "
        f"evicted {h.processor.evicted_scopes}; errors logged: {failures or 'none'}",
    )
    assert not errors
    assert failures == []
    assert len(goods) == 3 * per_thread
    assert wrong == []


def test_many_distinct_long_statements_leave_memory_flat(
    harness_factory: Callable[..., Harness], figure: Callable[[str, str], None]
) -> None:
    """Bulk inserts with inlined values (`execute_values`): every statement differs and is ~90 KB long."""
    h = harness_factory(10_000, keep_results=False)
    tracer = h.tracer
    statements, warm_up = 400, 50

    def bulk_insert(batch: int) -> None:
        rows = ", ".join(f"('Customer {batch}-{n}', 'c{batch}.{n}@example.com')" for n in range(2000))
        attributes = {"db.system": "postgresql", "db.statement": f"INSERT INTO store_customer (name, email) VALUES {rows}"}
        with tracer.start_as_current_span("POST import/", kind=SpanKind.SERVER, attributes={"http.route": "import/"}):
            with tracer.start_as_current_span("INSERT", kind=SpanKind.CLIENT, attributes=attributes):
                pass

    for batch in range(warm_up):
        bulk_insert(batch)
    at_warm_up = rss_mib()
    started = time.perf_counter()
    for batch in range(warm_up, statements):
        bulk_insert(batch)
    per_statement = (time.perf_counter() - started) / (statements - warm_up)
    end = rss_mib()
    figure(
        "distinct long statements",
        f"{statements} bulk inserts of ~94 KB: RSS after {warm_up} {at_warm_up:.1f} MiB, after {statements} "
        f"{end:.1f} MiB ({end - at_warm_up:+.1f} MiB); {per_statement * 1000:.1f} ms per statement in the ending thread",
    )
    assert end - at_warm_up <= FLAT_MIB, "the normalisation cache keeps every raw statement (4096 entries of any length)"
