"""The shop's Celery tasks; examples/shop/budgets.toml budgets them under [celery]."""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from store import ground_truth
from store.documents import mongo
from store.models import Order, OrderLine, Product

DIGEST_SECONDS = 1.2


@shared_task
def send_order_confirmation(order_id: int) -> dict[str, Any]:
    """Within budget: two queries and one insert into the e-mail log."""
    with ground_truth.capture() as truth:
        order = Order.objects.select_related("customer").get(pk=order_id)
        lines = list(order.lines.select_related("product"))
        mongo().email_log.insert_one(
            {
                "to": order.customer.email,
                "order": order.number,
                "lines": [line.product.sku for line in lines],
                "sent_at": timezone.now(),
            }
        )
    return {"order": order_id, "ground_truth": truth.as_dict()}


@shared_task
def reserve_stock(order_id: int) -> dict[str, Any]:
    """Within budget: one UPDATE per line, in one transaction."""
    with ground_truth.capture() as truth:
        with transaction.atomic():
            for line in OrderLine.objects.filter(order_id=order_id):
                Product.objects.filter(pk=line.product_id).update(stock=F("stock") - line.quantity)
    return {"order": order_id, "ground_truth": truth.as_dict()}


@shared_task
def rebuild_search_index() -> dict[str, Any]:
    """Over its `db.queries` budget: one MongoDB upsert per product where one bulk_write would do."""
    with ground_truth.capture() as truth:
        index = mongo().search_index
        products = Product.objects.select_related("category").order_by("pk")
        for product in products:
            index.update_one(
                {"sku": product.sku},
                {"$set": {"name": product.name, "category": product.category.slug}},
                upsert=True,
            )
    return {"indexed": len(products), "ground_truth": truth.as_dict()}


@shared_task
def generate_sales_digest() -> dict[str, Any]:
    """Over its time budget: slow on purpose (a stand-in for rendering a PDF)."""
    with ground_truth.capture() as truth:
        revenue = OrderLine.objects.aggregate(total=Sum(F("unit_price") * F("quantity")))["total"]
        time.sleep(DIGEST_SECONDS)
    return {"revenue": str(revenue), "ground_truth": truth.as_dict()}
