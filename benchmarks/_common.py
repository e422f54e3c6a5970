"""Shared pieces of the benchmarks: statistics, a null exporter, the realistic span shapes."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["DB_STATEMENTS", "NullExporter", "SERVER_ATTRIBUTES", "db_attributes", "load", "summary"]


class NullExporter(SpanExporter):
    """Accepts every batch and does nothing: the SDK's own cost without any I/O."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


# What Django's instrumentation puts on a request span (old semantic conventions, the default).
SERVER_ATTRIBUTES: dict[str, Any] = {
    "http.method": "GET",
    "http.server_name": "127.0.0.1",
    "http.scheme": "http",
    "net.host.port": 8000,
    "http.host": "127.0.0.1:8000",
    "http.url": "http://127.0.0.1:8000/products/?pg=20&mongo=5",
    "net.peer.ip": "127.0.0.1",
    "http.user_agent": "wrk",
    "http.flavor": "1.1",
}

# 20 statements as psycopg2 records them (placeholders, not values): a 1+N over products (5 stock
# look-ups, 4 review counts: at, not over, the default N+1 limit of 5 repeats) and one-offs. The
# same texts repeat, so the normalisation cache is hit, as in a warm server.
_STOCK = (
    'SELECT "store_stock"."id", "store_stock"."product_id", "store_stock"."quantity" FROM "store_stock" '
    'WHERE "store_stock"."product_id" = %s LIMIT 21'
)
_REVIEWS = 'SELECT COUNT(*) AS "__count" FROM "store_review" WHERE "store_review"."product_id" = %s'
DB_STATEMENTS: tuple[str, ...] = (
    'SELECT "django_session"."session_key", "django_session"."session_data" FROM "django_session" '
    'WHERE ("django_session"."expire_date" > %s AND "django_session"."session_key" = %s) LIMIT 21',
    'SELECT "auth_user"."id", "auth_user"."username", "auth_user"."email" FROM "auth_user" '
    'WHERE "auth_user"."id" = %s LIMIT 21',
    'SELECT "store_category"."id", "store_category"."name" FROM "store_category" ORDER BY "store_category"."name" ASC',
    'SELECT "store_product"."id", "store_product"."name", "store_product"."price", "store_product"."category_id" '
    'FROM "store_product" WHERE "store_product"."category_id" = %s ORDER BY "store_product"."id" ASC LIMIT 5',
    *[_STOCK] * 5,
    *[_REVIEWS] * 4,
    'SELECT "store_price"."id", "store_price"."amount" FROM "store_price" WHERE "store_price"."product_id" IN (%s, %s, %s, %s, %s)',
    'SELECT "store_cart"."id", "store_cart"."user_id" FROM "store_cart" WHERE "store_cart"."user_id" = %s LIMIT 21',
    'SELECT "store_cartitem"."id", "store_cartitem"."product_id", "store_cartitem"."quantity" FROM "store_cartitem" '
    'WHERE "store_cartitem"."cart_id" = %s',
    'SELECT "store_promotion"."id", "store_promotion"."code" FROM "store_promotion" WHERE "store_promotion"."active" '
    'AND "store_promotion"."starts_at" <= %s AND "store_promotion"."ends_at" > %s',
    'SELECT "store_banner"."id", "store_banner"."image" FROM "store_banner" ORDER BY "store_banner"."position" ASC LIMIT 3',
    'UPDATE "django_session" SET "session_data" = %s, "expire_date" = %s WHERE "django_session"."session_key" = %s',
    'UPDATE "store_product" SET "views" = ("store_product"."views" + %s) WHERE "store_product"."id" IN (%s, %s, %s, %s, %s)',
)
assert len(DB_STATEMENTS) == 20


def db_attributes(statement: str) -> dict[str, Any]:
    """What the dbapi/psycopg2 instrumentation sets on a query span (after starting it)."""
    return {
        "db.system": "postgresql",
        "db.statement": statement,
        "db.name": "shop",
        "db.user": "otel_budget",
        "net.peer.name": "127.0.0.1",
        "net.peer.port": 5432,
    }


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the quartiles of `values`."""
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "q1": q1,
        "q3": q3,
        "n": len(ordered),
    }


def load() -> dict[str, Any]:
    """The machine's load average and CPU count, recorded with every result."""
    one, five, fifteen = os.getloadavg()
    return {"loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)], "cpus": os.cpu_count()}
