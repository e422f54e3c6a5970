"""Response headers for the demo and the end-to-end tests.

Every response carries `X-Trace-Id` (the trace of the request's server span). With the request
header `X-Ground-Truth: 1` it also carries Django's and pymongo's own counts (see ground_truth.py).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from opentelemetry import trace

from store import ground_truth


def ground_truth_middleware(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        if request.headers.get("X-Ground-Truth") == "1":
            with ground_truth.capture() as truth:
                response = get_response(request)
            for name, value in truth.headers().items():
                response[name] = value
        else:
            response = get_response(request)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            response["X-Trace-Id"] = f"{context.trace_id:032x}"
        return response

    return middleware
