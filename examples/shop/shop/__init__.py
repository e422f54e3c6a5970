"""The example shop: a Django 5.2 project measured by otel-budget."""

from __future__ import annotations

from shop.celery import app as celery_app

__all__ = ["celery_app"]
