"""The example shop's ASGI application wrapped in OpenTelemetry's ASGI middleware, as some deployments do.

    opentelemetry-instrument uvicorn django_asgi_wrapped:application

The middleware's SERVER span is the request (named by its raw path); Django's own span is an INTERNAL child
that gets `http.route` once the URL is resolved.
"""

from __future__ import annotations

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from shop.asgi import application as shop_application

application = OpenTelemetryMiddleware(shop_application)
