"""The shop's endpoints; each is one scenario of examples/shop/budgets.toml (see README.md there)."""

from __future__ import annotations

import contextlib
import os
import threading
import tracemalloc
from decimal import Decimal

import requests
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Avg, Count, F, Sum
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from otel_budget import budget
from shop.celery import app as celery_app
from store import tasks
from store.documents import mongo
from store.models import Category, Order, OrderLine, Product, Review

MIB = 1024 * 1024
HOG_MIB = 80
HOG_MAX_BLOCKS = 3  # per process; beyond it the hog starts over


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness; `?warm=1` also opens this process's broker and database connections.

    Not traced (OTEL_PYTHON_DJANGO_EXCLUDED_URLS), so the first real request of a worker does not
    pay for connecting to Redis (~0.3 s) and break its duration budget.
    """
    if request.GET.get("warm") == "1":
        with celery_app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=3)
        connection.ensure_connection()
    return JsonResponse({"ok": True, "pid": os.getpid()})


@require_GET
def product_detail(request: HttpRequest, pk: int) -> JsonResponse:
    """Within budget: two PostgreSQL queries and one MongoDB find."""
    product = get_object_or_404(Product.objects.select_related("category"), pk=pk)
    reviews = list(product.reviews.values("rating", "title")[:5])
    content = mongo().product_content.find_one({"sku": product.sku}, {"_id": 0}) or {}
    return JsonResponse(
        {
            "sku": product.sku,
            "name": product.name,
            "category": product.category.name,
            "price": str(product.price),
            "description": content.get("description", ""),
            "reviews": reviews,
        }
    )


@require_GET
def order_list(request: HttpRequest) -> JsonResponse:
    """The N+1: one query for the orders, then one per order for its lines."""
    orders = Order.objects.all()[:20]
    return JsonResponse({"orders": [_order_summary(order, list(order.lines.all())) for order in orders]})


@require_GET
def order_list_prefetched(request: HttpRequest) -> JsonResponse:
    """The same page without the N+1: two queries."""
    orders = Order.objects.prefetch_related("lines")[:20]
    return JsonResponse({"orders": [_order_summary(order, list(order.lines.all())) for order in orders]})


def _order_summary(order: Order, lines: list[OrderLine]) -> dict[str, object]:
    total = sum((line.unit_price * line.quantity for line in lines), Decimal("0"))
    return {"number": order.number, "status": order.status, "lines": len(lines), "total": str(total)}


@require_GET
def shipping_quote(request: HttpRequest) -> JsonResponse:
    """Calls the partner's API in the foreground: the budget says external calls belong in a task."""
    product = get_object_or_404(Product, pk=int(request.GET.get("product", "1")))
    response = requests.get(
        f"{settings.PARTNER_URL}/quote",
        params={"sku": product.sku, "zone": request.GET.get("zone", "EU")},
        timeout=settings.PARTNER_TIMEOUT_S,
    )
    response.raise_for_status()
    return JsonResponse({"sku": product.sku, "quote": response.json()})


# Kept alive on purpose: what a leaky module-level cache looks like.
_held: list[bytes] = []
_held_lock = threading.Lock()


@csrf_exempt
@require_POST
def memory_hog(request: HttpRequest) -> JsonResponse:
    """Keeps another ~80 MiB alive in this process (at most 3 blocks, then it starts over).

    `traced`: whether tracemalloc ran during the request (otel-budget's memory study, OTEL_BUDGET_MEMORY_STUDY).
    """
    with _held_lock:
        if len(_held) >= HOG_MAX_BLOCKS:
            _held.clear()
        _held.append(b"\xa5" * (HOG_MIB * MIB))  # written, so resident
        held = len(_held) * HOG_MIB
    return JsonResponse({"pid": os.getpid(), "held_mib": held, "traced": tracemalloc.is_tracing()})


@csrf_exempt
@require_POST
def memory_release(request: HttpRequest) -> JsonResponse:
    """Drops what `memory_hog` keeps in the process that answers."""
    with _held_lock:
        _held.clear()
    return JsonResponse({"pid": os.getpid(), "held_mib": 0})


@csrf_exempt
@require_http_methods(["GET", "POST"])
def sales_report(request: HttpRequest) -> JsonResponse:
    """Per-category figures, a few queries per category: over the [http] budget, within `reports/*` GET.

    POST (the "export" button) runs the same queries under the [http] budget: the override names GET.
    """
    rows = []
    for category in Category.objects.order_by("slug"):
        lines = OrderLine.objects.filter(product__category=category)
        revenue = lines.aggregate(total=Sum(F("unit_price") * F("quantity")))["total"] or Decimal("0")
        top = lines.values("product__sku").annotate(units=Sum("quantity")).order_by("-units", "product__sku").first()
        rating = Review.objects.filter(product__category=category).aggregate(avg=Avg("rating"))["avg"]
        rows.append(
            {
                "category": category.slug,
                "products": category.products.count(),
                "revenue": str(revenue),
                "top_sku": top["product__sku"] if top else None,
                "rating": round(rating, 2) if rating is not None else None,
            }
        )
    return JsonResponse({"categories": rows, "export": request.method == "POST"})


@require_GET
@budget(db_queries=3, duration_ms=500)
def search(request: HttpRequest) -> JsonResponse:
    """Search keeps a tight in-code budget: 3 queries. The MongoDB snippet lookup is the 4th."""
    query = request.GET.get("q", "")
    matches = Product.objects.filter(name__icontains=query).order_by("sku")
    total = matches.count()
    page = list(matches.values("sku", "name")[:10])
    facets = list(
        Category.objects.filter(products__name__icontains=query).annotate(n=Count("products")).values("slug", "n")
    )
    snippets = {
        doc["sku"]: doc.get("description", "")[:60]
        for doc in mongo().product_content.find({"sku": {"$in": [p["sku"] for p in page]}}, {"_id": 0})
    }
    return JsonResponse({"total": total, "results": page, "facets": facets, "snippets": snippets})


@csrf_exempt
@require_POST
def confirm_order(request: HttpRequest, pk: int) -> JsonResponse:
    """Confirms an order and leaves the slow parts to two tasks (`orders/*/confirm/` allows 2)."""
    updated = Order.objects.filter(pk=pk).update(status=Order.Status.CONFIRMED, confirmed_at=timezone.now())
    if not updated:
        return JsonResponse({"error": "no such order"}, status=404)
    enqueued = [tasks.send_order_confirmation.delay(pk).id, tasks.reserve_stock.delay(pk).id]
    return JsonResponse({"order": pk, "task_ids": enqueued})


@csrf_exempt
@require_POST
def reindex_catalog(request: HttpRequest) -> JsonResponse:
    """Enqueues the search-index rebuild (a task over its own budget)."""
    return JsonResponse({"task_ids": [tasks.rebuild_search_index.delay().id]})


@csrf_exempt
@require_POST
def sales_digest(request: HttpRequest) -> JsonResponse:
    """Enqueues the sales digest (a task over its time budget)."""
    return JsonResponse({"task_ids": [tasks.generate_sales_digest.delay().id]})


@require_GET
def query_probe(request: HttpRequest) -> JsonResponse:
    """Exactly `pg` PostgreSQL statements and `mongo` MongoDB commands (`atomic=1`: in a transaction)."""
    pg = int(request.GET.get("pg", "0"))
    commands = int(request.GET.get("mongo", "0"))
    in_transaction = request.GET.get("atomic") == "1"
    with transaction.atomic() if in_transaction else contextlib.nullcontext():
        for index in range(pg):
            Product.objects.filter(sku=f"SKU-{index % 40:04d}").values_list("name", flat=True).first()
    collection = mongo().product_content
    for index in range(commands):
        collection.find_one({"position": index % 40}, {"_id": 0, "sku": 1})
    return JsonResponse({"pg": pg, "mongo": commands, "atomic": in_transaction})
