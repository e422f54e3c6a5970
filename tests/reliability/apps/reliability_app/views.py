"""Diagnostic and fault-injection views (only in tests/reliability's app)."""

from __future__ import annotations

import json
import os

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import otel_budget
from reliability_app import tasks
from reliability_app.faults import FAULT_MARKER
from store import views as store_views
from store.documents import mongo
from store.models import Product


def _pg_queries(count: int) -> None:
    for index in range(count):
        Product.objects.filter(sku=f"SKU-{index % 40:04d}").values_list("name", flat=True).first()


def _count(request: HttpRequest, name: str) -> int:
    return int(request.GET.get(name, "0"))


@require_GET
def state(request: HttpRequest) -> JsonResponse:
    """This process's otel-budget state, through public API (the request itself is one open scope)."""
    processor = otel_budget.install()
    if processor is None:
        return JsonResponse({"pid": os.getpid(), "installed": False})
    return JsonResponse(
        {
            "pid": os.getpid(),
            "installed": True,
            "open_scopes": processor.open_scopes,
            "evicted_scopes": processor.evicted_scopes,
            "max_open_scopes": processor.max_open_scopes,
            "config_source": processor.config.source,
            "config_error": processor.config_error,
        }
    )


def probe(request: HttpRequest) -> JsonResponse:
    """The shop's own `probe/queries/` view, answering with the pid of the process that served it."""
    data = json.loads(store_views.query_probe(request).content)
    return JsonResponse({**data, "pid": os.getpid()})


@require_GET
def hostile_sql(request: HttpRequest) -> JsonResponse:
    """`pg` ordinary queries, then one whose statement makes (injected) normalisation raise."""
    _pg_queries(_count(request, "pg"))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 /* {FAULT_MARKER} */")
    return JsonResponse({"pid": os.getpid()})


@require_GET
def hostile_listener(request: HttpRequest) -> JsonResponse:
    """`pg` queries; the (injected) listener raises when this scope ends."""
    _pg_queries(_count(request, "pg"))
    return JsonResponse({"pid": os.getpid()})


@require_GET
def hostile_enqueue(request: HttpRequest) -> JsonResponse:
    """`pg` queries, then a real Celery task is enqueued: the (injected) ScopeTally.add raises."""
    _pg_queries(_count(request, "pg"))
    result = tasks.probe.delay(_count(request, "task_pg"), 0)
    return JsonResponse({"pid": os.getpid(), "task_id": result.id})


@require_GET
def hostile_rule(request: HttpRequest) -> JsonResponse:
    """`pg` queries under a broken rule (a limit that is not a number)."""
    _pg_queries(_count(request, "pg"))
    return JsonResponse({"pid": os.getpid()})


# Real statements with personal data inlined as literals (the way raw SQL, `mogrify` and
# `execute_values` send them). Each case is valid PostgreSQL; each is repeated into an N+1 event,
# so its normalised text is exported as `budget.statement`.
PRIVATE_STATEMENTS = {
    "plain": "SELECT id, email FROM store_customer WHERE email = 'alice.private@example.com' "
    "AND id <> 4242 AND name <> 'Customer 987654'",
    # PostgreSQL escape string with a backslash-escaped quote.
    "escaped_quote": "SELECT id FROM store_customer WHERE name <> E'O\\'Reilly carol.private@example.com'",
    # A standard string ending in a backslash (no escape in PostgreSQL outside E'...'), then another literal.
    "backslash_literal": "SELECT id FROM store_customer WHERE name <> 'C:\\' AND email <> 'gina.private@example.com'",
    # SQL comment markers inside string literals.
    "dashes_in_literal": "SELECT id FROM store_customer WHERE name <> 'dave.private@example.com -- VIP' AND id <> 5150",
    "slash_star_in_literal": "SELECT id FROM store_customer WHERE name <> 'erin.private@example.com /* VIP' AND id <> 6160",
    # Long: 120 conditions with addresses, then numbers; normalised, still far over 200 characters.
    "long": "SELECT id FROM store_customer WHERE "
    + " OR ".join(f"email = 'frank{n}.private@example.com'" for n in range(120))
    + " OR id IN (4242, 987654, 31337)",
}
PRIVATE_FILTER = {"owner": "bob.private@example.com", "position": {"$gte": 31337}, "tags": ["vip", 271828]}


@csrf_exempt
@require_POST
def privacy(request: HttpRequest) -> JsonResponse:
    """Statement `case` run `sql` times, then a MongoDB filter with personal data `mongo` times."""
    body = request.body  # read, as a view handling a form would
    statement = PRIVATE_STATEMENTS[request.GET.get("case", "plain")]
    with connection.cursor() as cursor:
        for _ in range(_count(request, "sql")):
            cursor.execute(statement)
            cursor.fetchall()
    documents = mongo().product_content
    for _ in range(_count(request, "mongo")):
        documents.find_one(PRIVATE_FILTER)
    return JsonResponse({"pid": os.getpid(), "body_bytes": len(body)})
