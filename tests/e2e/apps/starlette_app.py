"""A plain Starlette app (no FastAPI) + SQLAlchemy 2.0 + psycopg2, under uvicorn and `opentelemetry-instrument`.

    GET /queries/{n:int}          n statements of n shapes (a sync endpoint: Starlette's threadpool)
    GET /repeat/{n:int}           one statement n times (async: the sync engine via run_in_threadpool)
    GET /reports/queries/{n:int}  under the route override reports/*
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import sqlalchemy_probe as probe

probe.open_pool()


async def trace_id_header(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Every answer (404s too) names its trace, so the tests find its spans in Jaeger."""
    response = await call_next(request)
    response.headers["X-Trace-Id"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
    return response


def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def queries(request: Request) -> Response:
    seen = probe.watch()
    probe.distinct(request.path_params["n"])
    return JSONResponse(seen.truth())


async def repeat(request: Request) -> Response:
    seen = probe.watch()
    await run_in_threadpool(probe.repeated, request.path_params["n"])
    return JSONResponse(seen.truth())


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/queries/{n:int}", queries),
        Route("/repeat/{n:int}", repeat),
        Route("/reports/queries/{n:int}", queries),
    ],
    middleware=[Middleware(BaseHTTPMiddleware, dispatch=trace_id_header)],
)
