"""Tasks with exact query counts (tests/reliability)."""

from __future__ import annotations

import os
from typing import Any

from celery import shared_task
from django.db import connection

import otel_budget
from reliability_app.faults import FAULT_MARKER
from store.documents import mongo
from store.models import Product


def _queries(pg: int, mongo_commands: int) -> None:
    for index in range(pg):
        Product.objects.filter(sku=f"SKU-{index % 40:04d}").values_list("name", flat=True).first()
    collection = mongo().product_content
    for index in range(mongo_commands):
        collection.find_one({"position": index % 40}, {"_id": 0, "sku": 1})


@shared_task(name="reliability_app.tasks.probe")
def probe(pg: int, mongo_commands: int) -> dict[str, Any]:
    """Exactly `pg` PostgreSQL statements and `mongo_commands` MongoDB commands."""
    _queries(pg, mongo_commands)
    processor = otel_budget.install()
    open_scopes = processor.open_scopes if processor is not None else None
    return {"pid": os.getpid(), "pg": pg, "mongo": mongo_commands, "open_scopes": open_scopes}


@shared_task(name="reliability_app.tasks.hostile_sql")
def hostile_sql(pg: int) -> dict[str, Any]:
    """`pg` statements, then one whose (injected) normalisation raises."""
    _queries(pg, 0)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT 1 /* {FAULT_MARKER} */")
    return {"pid": os.getpid()}


@shared_task(name="reliability_app.tasks.hostile_rule")
def hostile_rule(pg: int) -> dict[str, Any]:
    """`pg` statements under a broken task rule."""
    _queries(pg, 0)
    return {"pid": os.getpid()}


@shared_task(name="reliability_app.tasks.hostile_listener")
def hostile_listener(pg: int) -> dict[str, Any]:
    """`pg` statements; the (injected) listener raises when the task's scope ends."""
    _queries(pg, 0)
    return {"pid": os.getpid()}
