"""ASGI entry point: `uvicorn shop.asgi:application` (under `opentelemetry-instrument`, Django's
instrumentation traces ASGI requests when `opentelemetry-instrumentation-asgi` is installed)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

application = get_asgi_application()
