"""Record what otel-budget writes on the example shop's scope spans, in a form two runs can be diffed in.

    python tests/e2e/record_shop.py > before.json     # PostgreSQL, FerretDB, Redis of `make stack`

One process: the shop's Django project through Django, psycopg2, pymongo, requests and Celery
instrumentation into a BudgetSpanProcessor and an in-memory exporter; a fixed list of requests and
tasks (tasks run in-process with `apply`); every scope span's `budget.*` attributes and events printed
as JSON, in the order they were written. Values that depend on the machine (times, memory) are replaced by their type, and
events of timing metrics are listed by metric only, so two runs of the same code print the same text.
`test_e2e_shop_record.py` compares a run with `shop_record.json`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

SHOP_DIR = Path(__file__).resolve().parents[2] / "examples" / "shop"
RECORD_FILE = Path(__file__).resolve().parent / "shop_record.json"
# (method, path, params): every scenario of examples/shop/budgets.toml that runs in one process.
REQUESTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("GET", "products/7/", {}),
    ("GET", "orders/", {}),
    ("GET", "orders/prefetched/", {}),
    ("GET", "reports/sales/", {}),
    ("POST", "reports/sales/", {}),
    ("GET", "search/", {"q": "kettle"}),
    ("GET", "probe/queries/", {"pg": "11", "mongo": "4"}),
    ("GET", "probe/queries/", {"pg": "5", "mongo": "2", "atomic": "1"}),
    ("GET", "shipping/quote/", {"product": "3"}),
    ("POST", "orders/3/confirm/", {}),
    ("POST", "memory/hog/", {}),
    ("POST", "memory/release/", {}),
)
TASKS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("store.tasks.send_order_confirmation", (3,)),
    ("store.tasks.reserve_stock", (3,)),
    ("store.tasks.rebuild_search_index", ()),
)
_MACHINE_DEPENDENT = ("duration_ms", "cpu_ms", "growth_mb")  # metric name endings


def machine_dependent(metric: str) -> bool:
    """A metric whose value depends on the machine's speed or memory, not on the code path."""
    return metric.endswith(_MACHINE_DEPENDENT)


def canonical_scope(name: str, attributes: dict[str, Any], events: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One scope span's budget attributes and events with the machine-dependent values masked."""
    ours = {}
    for key, value in attributes.items():
        if key.startswith("budget."):
            ours[key] = f"<{type(value).__name__}>" if machine_dependent(key[len("budget.") :]) else value
    listed = []
    for event_name, event_attributes in events:
        metric = str(event_attributes.get("budget.metric", ""))
        if machine_dependent(metric):
            listed.append({"name": event_name, "budget.metric": metric})
        else:
            listed.append({"name": event_name, **event_attributes})
    return {"span": name, "attributes": ours, "events": listed}


def record() -> list[dict[str, Any]]:
    """Run the requests and tasks; return every scope span, in the order they ended."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    with _partner(), _shop(exporter) as client:
        from celery import current_app

        for method, path, params in REQUESTS:
            response = getattr(client, method.lower())(f"/{path}", params)
            assert response.status_code == 200, (path, response.status_code, response.content[:300])
        for task_name, args in TASKS:
            current_app.tasks[task_name].apply(args=args)
    scopes = [s for s in exporter.get_finished_spans() if s.kind in (SpanKind.SERVER, SpanKind.CONSUMER)]
    return [
        canonical_scope(s.name, dict(s.attributes or {}), [(e.name, dict(e.attributes or {})) for e in s.events])
        for s in scopes
    ]


@contextmanager
def _shop(exporter: Any) -> Iterator[Any]:
    """The shop's Django project in this process, instrumented into a provider exporting to `exporter`."""
    sys.path.insert(0, str(SHOP_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from otel_budget import BudgetSpanProcessor, load_config

    django.setup()
    from django.db import connections
    from django.test import Client
    from store.documents import mongo

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(
        BudgetSpanProcessor(config=load_config(str(SHOP_DIR / "budgets.toml")), record_metrics=False)
    )
    instrumentors = [
        DjangoInstrumentor(), Psycopg2Instrumentor(), PymongoInstrumentor(), RequestsInstrumentor(), CeleryInstrumentor()
    ]  # fmt: skip
    connections.close_all()
    mongo.cache_clear()
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    try:
        yield Client()
    finally:
        for instrumentor in instrumentors:
            instrumentor.uninstrument()
        connections.close_all()
        provider.shutdown()


@contextmanager
def _partner() -> Iterator[None]:
    """The fake shipping partner on a free port, in a thread; the shop's settings are pointed at it."""
    sys.path.insert(0, str(SHOP_DIR))
    from fake_partner import PartnerHandler

    class QuietPartner(PartnerHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
            pass  # stdout is the record

    server = ThreadingHTTPServer(("127.0.0.1", 0), QuietPartner)  # 8010 may be the e2e shop's partner
    os.environ["SHOP_PARTNER_URL"] = f"http://127.0.0.1:{server.server_address[1]}"  # read by shop.settings
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    print(json.dumps(record(), indent=1, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
