"""Real budget violations: the OTel SDK with `BudgetSpanProcessor`, exported over OTLP to the stack's collector.

Run directly (`PYTHONPATH=tests/unit .venv/bin/python tests/alerting/budget_traffic.py [service-name]`) to put one
wave of traffic on the collector and look at 127.0.0.1:8889/metrics by hand.
"""

from __future__ import annotations

import mmap
import sys
import uuid
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from tracing_kit import touched_mapping

from otel_budget import BudgetSpanProcessor
from otel_budget.config import parse_config

OTLP_ENDPOINT = "127.0.0.1:4317"
MIB = 1024 * 1024

# Budgets as a parsed budgets file (TOML dotted keys arrive as nested tables).
BUDGETS = {
    "http": {
        "db": {"queries": 10, "repeated_queries": 5},
        "route": [{"match": "reports/*", "memory": {"growth_mb": 4}}],
    },
    "celery": {"db": {"queries": 20}},
}

ORDERS_ROUTE = "orders/<int:pk>/"  # N+1: 12 queries, one statement 12 times
REPORTS_ROUTE = "reports/<slug:name>/"  # grows RSS by ~16 MiB per request
TASK_NAME = "shop.tasks.rebuild_index"  # 25 MongoDB queries


@dataclass
class BudgetTraffic:
    """One application's telemetry: tracer and meter providers exporting to the collector."""

    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    processor: BudgetSpanProcessor
    report: mmap.mmap | None = None  # what the last reports request left allocated

    @classmethod
    def start(cls, service_name: str | None = None, endpoint: str = OTLP_ENDPOINT) -> BudgetTraffic:
        service_name = service_name or f"otel-budget-alerting-{uuid.uuid4().hex[:8]}"
        resource = Resource.create({"service.name": service_name})
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=1000
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        processor = BudgetSpanProcessor(config=parse_config(BUDGETS, source="<alerting test>"), meter_provider=meter_provider)
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(processor)
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=200)
        )
        return cls(service_name, tracer_provider, meter_provider, processor)

    def wave(self, repeat: int = 1) -> None:
        """`repeat` times: one N+1 request, one memory-hungry request, one heavy Celery task."""
        for _ in range(repeat):
            self.orders_request()
            self.reports_request()
            self.rebuild_task()
        self.evict_one_scope()

    def orders_request(self) -> None:
        tracer = self.tracer_provider.get_tracer("budget_traffic")
        attributes = {"http.route": ORDERS_ROUTE, "http.request.method": "GET"}
        with tracer.start_as_current_span("GET orders/<int:pk>/", kind=SpanKind.SERVER, attributes=attributes):
            for item in range(12):
                statement = f"SELECT * FROM shop_item WHERE order_id = 7 AND id = {item}"
                db = {"db.system": "postgresql", "db.statement": statement}
                with tracer.start_as_current_span("SELECT shop", kind=SpanKind.CLIENT, attributes=db):
                    pass

    def reports_request(self) -> None:
        tracer = self.tracer_provider.get_tracer("budget_traffic")
        attributes = {"http.route": REPORTS_ROUTE, "http.request.method": "GET"}
        if self.report is not None:  # RSS falls back before the scope starts ...
            self.report.close()
        with tracer.start_as_current_span("GET reports/<slug:name>/", kind=SpanKind.SERVER, attributes=attributes):
            with tracer.start_as_current_span(
                "SELECT shop", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql", "db.statement": "SELECT 1"}
            ):
                pass
            self.report = touched_mapping(16 * MIB)  # ... and grows by 16 MiB until after its end

    def rebuild_task(self) -> None:
        tracer = self.tracer_provider.get_tracer("budget_traffic")
        attributes = {"celery.task_name": TASK_NAME, "celery.action": "run"}
        with tracer.start_as_current_span(f"run/{TASK_NAME}", kind=SpanKind.CONSUMER, attributes=attributes):
            for n in range(25):
                db = {"db.system": "mongodb", "db.statement": f"find products {{'_id': {n}}}"}
                with tracer.start_as_current_span("products.find", kind=SpanKind.CLIENT, attributes=db):
                    pass

    def evict_one_scope(self) -> None:
        """A scope whose span never ends, pushed out by the next one: `budget.scopes.evicted` += 1."""
        evicting = BudgetSpanProcessor(max_open_scopes=1, meter_provider=self.meter_provider)
        provider = TracerProvider(resource=self.tracer_provider.resource)
        provider.add_span_processor(evicting)
        tracer = provider.get_tracer("budget_traffic")
        tracer.start_span("GET leaked/", kind=SpanKind.SERVER)  # never ended
        tracer.start_span("GET next/", kind=SpanKind.SERVER).end()
        provider.shutdown()

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self) -> None:
        if self.report is not None:
            self.report.close()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


if __name__ == "__main__":
    traffic = BudgetTraffic.start(sys.argv[1] if len(sys.argv) > 1 else None)
    traffic.wave()
    traffic.flush()
    traffic.shutdown()
    print(traffic.service_name)
