"""Each shop scenario, through gunicorn/Celery → collector → Jaeger: the exact budget events it implies.

Budgets: examples/shop/budgets.toml. Ground truth: Django's query capture and a pymongo
CommandListener, reported by the shop itself (store/ground_truth.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from shop_e2e import ShopClient, ShopResponse, ShopTrace, ShopTraces
from jaeger_reader import ExportedSpan

from otel_budget import Violation

ORDER_TO_CONFIRM = 5
SCENARIOS: dict[str, tuple[str, str, dict[str, str]]] = {
    "product": ("GET", "products/3/", {}),
    "orders_n_plus_1": ("GET", "orders/", {}),
    "orders_prefetched": ("GET", "orders/prefetched/", {}),
    "shipping_quote": ("GET", "shipping/quote/", {"product": "2"}),
    "memory_hog": ("POST", "memory/hog/", {}),
    "report_get": ("GET", "reports/sales/", {}),
    "report_post": ("POST", "reports/sales/", {}),
    "search": ("GET", "search/", {"q": "lamp"}),
    "confirm_order": ("POST", f"orders/{ORDER_TO_CONFIRM}/confirm/", {}),
    "reindex": ("POST", "catalog/reindex/", {}),
    "digest": ("POST", "reports/digest/", {}),
}


@pytest.fixture(scope="module")
def responses(shop: ShopClient) -> dict[str, ShopResponse]:
    """Every scenario requested once, one after the other, before any test waits for Jaeger."""
    done = {name: shop.request(method, path, params=params) for name, (method, path, params) in SCENARIOS.items()}
    shop.post("memory/release/")  # best effort: whichever worker answers
    return done


@pytest.fixture
def trace_of(responses: dict[str, ShopResponse], traces: ShopTraces) -> Callable[..., ShopTrace]:
    def get(name: str, tasks: tuple[str, ...] = ()) -> ShopTrace:
        return traces.wait(responses[name].trace_id, tasks=tasks)

    return get


def events(span: ExportedSpan) -> dict[str, Violation]:
    found = span.scope.violations
    by_metric = {event.metric: event for event in found}
    assert len(by_metric) == len(found), f"duplicate budget.exceeded events: {found}"
    return by_metric


def raw_event(span: ExportedSpan, metric: str) -> dict[str, object]:
    """The attributes of `span`'s `budget.exceeded` event for `metric`, as Jaeger stored them."""
    (found,) = [dict(a) for name, a, _ in span.events if name == "budget.exceeded" and a.get("budget.metric") == metric]
    return found


def limits_and_actuals(span: ExportedSpan) -> dict[str, tuple[float, float, str]]:
    return {metric: (e.limit, e.actual, e.rule) for metric, e in events(span).items()}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_request_counts_equal_django_and_pymongo(
    name: str, responses: dict[str, ShopResponse], trace_of: Callable[..., ShopTrace]
) -> None:
    """Each request's exported PostgreSQL / MongoDB counts equal Django's capture and the CommandListener."""
    truth = responses[name].ground_truth
    budget = trace_of(name).request.scope.values
    assert budget.get("db.postgresql.queries", 0) == truth["pg_statements"]
    assert budget.get("db.mongodb.queries", 0) == truth["mongo_commands"]
    assert budget["db.queries"] == truth["pg_statements"] + truth["mongo_commands"]


def test_product_detail_is_within_budget(trace_of: Callable[..., ShopTrace]) -> None:
    """Two PostgreSQL queries and one MongoDB find: a summary, no events."""
    span = trace_of("product").request
    assert span.scope.label == "GET products/<int:pk>/"
    budget = span.scope.values
    assert (budget["db.postgresql.queries"], budget["db.mongodb.queries"], budget["db.queries"]) == (2, 1, 3)
    assert (len(span.scope.violations), span.scope.rule) == (0, "http")
    assert span.scope.violations == ()
    for metric in ("duration_ms", "cpu_ms", "memory.growth_mb", "db.duration_ms", "external.calls", "tasks.enqueued"):
        assert metric in budget


def test_n_plus_1_exports_one_repeated_queries_event(trace_of: Callable[..., ShopTrace]) -> None:
    """1 + 20 queries is within db.queries = 30; the 20 repeats break db.repeated_queries = 5."""
    span = trace_of("orders_n_plus_1").request
    assert limits_and_actuals(span) == {"db.repeated_queries": (5, 20, "http")}
    event = events(span)["db.repeated_queries"]
    # normalised; the long column list gives way so that the loop's FROM/WHERE fits in 200 characters
    statement = event.statement
    assert statement == 'SELECT … FROM "store_orderline" WHERE "store_orderline"."order_id" = ?'
    raw = raw_event(span, "db.repeated_queries")
    assert raw["http.route"] == "orders/" and raw["http.request.method"] == "GET"
    assert span.start_us <= event.timestamp_ns / 1000 <= span.start_us + span.duration_us  # when the 6th repeat ended
    assert (span.scope.values["db.queries"], span.scope.values["db.repeated_queries"], len(span.scope.violations)) == (21, 20, 1)


def test_n_plus_1_time_is_the_sum_of_its_spans_in_jaeger(trace_of: Callable[..., ShopTrace]) -> None:
    """`budget.db.repeated_duration_ms` of the N+1 view is the sum of its 20 order-line spans' durations in Jaeger.

    The processor sums SDK end - start in ns and rounds the sum to the µs (±0.5 µs); Jaeger keeps each
    span's duration in whole µs (within 1 µs of the ns one), so n spans' sums differ by < n + 0.5 µs.
    """
    trace = trace_of("orders_n_plus_1")
    span = trace.request
    loop = 'FROM "store_orderline" WHERE "store_orderline"."order_id" = '
    repeated = [
        s
        for s in trace.spans
        if s.kind == "client"
        and (s.attributes.get("db.system") or s.attributes.get("db.system.name")) == "postgresql"
        and loop in str(s.attributes.get("db.statement") or s.attributes.get("db.query.text"))
    ]
    assert len(repeated) == span.scope.values["db.repeated_queries"] == 20
    jaeger_us = sum(s.duration_us for s in repeated)
    ours_us = span.attributes["budget.db.repeated_duration_ms"] * 1000
    assert jaeger_us > 0 and abs(ours_us - jaeger_us) < len(repeated) + 0.5, (ours_us, jaeger_us)
    assert ours_us < span.attributes["budget.db.duration_ms"] * 1000  # the other query's time is not in it
    assert "db.repeated_duration_ms" not in events(span)  # measured, no default limit


def test_prefetched_orders_are_within_budget(trace_of: Callable[..., ShopTrace]) -> None:
    """The same page with prefetch_related: two queries, no events."""
    span = trace_of("orders_prefetched").request
    assert (span.scope.values["db.queries"], span.scope.values["db.repeated_queries"], len(span.scope.violations)) == (2, 1, 0)
    assert span.scope.violations == ()


def test_foreground_partner_call_exports_external_calls_event(trace_of: Callable[..., ShopTrace]) -> None:
    """One requests.get to the partner API against external.calls = 0 (counted once, not again for urllib3)."""
    trace = trace_of("shipping_quote")
    span = trace.request
    assert limits_and_actuals(span) == {"external.calls": (0, 1, "http")}
    assert span.scope.values["external.calls"] == 1 and span.scope.values["external.duration_ms"] > 0
    http_clients = [s for s in trace.spans if s.kind == "client" and "db.system" not in s.attributes]
    assert len(http_clients) == 1, [s.name for s in http_clients]


def test_memory_hog_exports_memory_growth_event(trace_of: Callable[..., ShopTrace]) -> None:
    """80 MiB kept alive against memory.growth_mb = 50: one event, at the scope's end."""
    span = trace_of("memory_hog").request
    assert set(events(span)) == {"memory.growth_mb"}
    event = events(span)["memory.growth_mb"]
    assert (event.limit, event.rule) == (50, "http")
    assert 78 <= event.actual <= 90
    assert span.scope.values["memory.growth_mb"] == event.actual
    assert abs(event.timestamp_ns / 1000 - (span.start_us + span.duration_us)) <= 1000


def test_report_read_is_within_its_route_override(trace_of: Callable[..., ShopTrace]) -> None:
    """33 queries exceed [http] db.queries = 30 but not the `reports/*` GET override."""
    span = trace_of("report_get").request
    assert (span.scope.values["db.queries"], span.scope.values["db.repeated_queries"]) == (33, 8)
    assert (span.scope.rule, len(span.scope.violations)) == ("route:reports/*", 0)


def test_report_export_is_judged_by_http_defaults(trace_of: Callable[..., ShopTrace]) -> None:
    """The override names GET; the same queries under POST break three [http] limits."""
    span = trace_of("report_post").request
    assert span.scope.rule == "http"
    assert limits_and_actuals(span) == {
        "db.queries": (30, 33, "http"),
        "db.postgresql.queries": (25, 33, "http"),
        "db.repeated_queries": (5, 8, "http"),
    }
    assert all(attributes["http.request.method"] == "POST" for name, attributes, _ in span.events if name == "budget.exceeded")


def test_search_is_judged_by_its_in_code_budget(trace_of: Callable[..., ShopTrace]) -> None:
    """@budget(db_queries=3, duration_ms=500) on the view wins over the file."""
    span = trace_of("search").request
    assert span.scope.rule == "code"
    assert limits_and_actuals(span) == {"db.queries": (3, 4, "code")}
    assert (span.scope.values["db.postgresql.queries"], span.scope.values["db.mongodb.queries"]) == (3, 1)


def test_confirm_counts_its_two_tasks_which_run_in_the_same_trace(
    responses: dict[str, ShopResponse],
    trace_of: Callable[..., ShopTrace],
    task_results: Callable[[str], dict[str, Any]],
) -> None:
    """tasks.enqueued = 2 is within the `orders/*/confirm/` override; each task has its own tally."""
    names = ("store.tasks.send_order_confirmation", "store.tasks.reserve_stock")
    trace = trace_of("confirm_order", names)
    request = trace.request
    assert request.scope.values["tasks.enqueued"] == 2
    assert (request.scope.rule, len(request.scope.violations)) == ("route:orders/*/confirm/", 0)
    for name, task_id in zip(names, responses["confirm_order"].body["task_ids"]):
        task = trace.task(name)
        truth = task_results(task_id)["ground_truth"]
        assert task.service == "shop-worker" and task.attributes["celery.task_name"] == name
        assert (task.scope.rule, len(task.scope.violations)) == ("celery", 0)
        assert task.scope.values.get("db.postgresql.queries", 0) == truth["pg_statements"]
        assert task.scope.values.get("db.mongodb.queries", 0) == truth["mongo_commands"]
        _assert_enqueued_by(trace, task, request)


def test_reindex_task_over_budget_exports_its_event_in_the_requests_trace(
    responses: dict[str, ShopResponse],
    trace_of: Callable[..., ShopTrace],
    task_results: Callable[[str], dict[str, Any]],
) -> None:
    """The request enqueues one task (within budget); the task breaks its own db.queries = 10."""
    name = "store.tasks.rebuild_search_index"
    trace = trace_of("reindex", (name,))
    assert (trace.request.scope.values["tasks.enqueued"], len(trace.request.scope.violations)) == (1, 0)
    task = trace.task(name)
    truth = task_results(responses["reindex"].body["task_ids"][0])["ground_truth"]
    assert (truth["pg_statements"], truth["mongo_commands"]) == (1, 40)
    assert (task.scope.values["db.postgresql.queries"], task.scope.values["db.mongodb.queries"]) == (1, 40)
    assert task.scope.rule == "task:store.tasks.rebuild_*"
    assert limits_and_actuals(task) == {"db.queries": (10, 41, "task:store.tasks.rebuild_*")}
    assert events(task)["db.queries"].metric == "db.queries"
    assert raw_event(task, "db.queries")["celery.task_name"] == name
    _assert_enqueued_by(trace, task, trace.request)


def test_slow_task_exports_duration_event(trace_of: Callable[..., ShopTrace]) -> None:
    """The digest sleeps 1.2 s against its task override duration_ms = 1000."""
    name = "store.tasks.generate_sales_digest"
    trace = trace_of("digest", (name,))
    task = trace.task(name)
    assert set(events(task)) == {"duration_ms"}
    event = events(task)["duration_ms"]
    assert (event.limit, event.rule) == (1000, "task:store.tasks.generate_*")
    assert 1200 <= event.actual < 5000
    assert trace.request.scope.values["tasks.enqueued"] == 1


def _assert_enqueued_by(trace: ShopTrace, task: ExportedSpan, request: ExportedSpan) -> None:
    """The task's span hangs under an apply_async PRODUCER span of the request."""
    producer = trace.by_id(task.parent_span_id)
    assert producer is not None and producer.kind == "producer" and producer.service == "shop"
    span: ExportedSpan | None = producer
    while span is not None and span.span_id != request.span_id:
        span = trace.by_id(span.parent_span_id)
    assert span is request
