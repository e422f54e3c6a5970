"""FastAPI + SQLAlchemy 2.0 + psycopg2, served by uvicorn under `opentelemetry-instrument` (no tracing code here).

    GET /sync/queries/{n}, /sync/repeat/{n}    `def` endpoints (Starlette runs them in its threadpool)
    GET /async/queries/{n}, /async/repeat/{n}  `async def` endpoints: the sync engine in the threadpool
    GET /reports/sync/queries/{n}, /reports/async/repeat/{n}   under the route override reports/*
    GET /async/cpu/{ms}                        spins the event loop's thread for ms of CPU

The async endpoints run the sync engine through `run_in_threadpool` (it copies the context, so the driver's
spans are children of the request's); the async drivers are not what this app tests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from opentelemetry import trace

import sqlalchemy_probe as probe

app = FastAPI()
probe.open_pool()


@app.middleware("http")
async def trace_id_header(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Every answer (404s too) names its trace, so the tests find its spans in Jaeger."""
    response = await call_next(request)
    response.headers["X-Trace-Id"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
    return response


def _sync(run: Callable[[int], None], n: int) -> dict[str, int]:
    seen = probe.watch()
    run(n)
    return seen.truth()


async def _async(run: Callable[[int], None], n: int) -> dict[str, int]:
    seen = probe.watch()
    await run_in_threadpool(run, n)
    return seen.truth()


@app.get("/healthz")
async def healthz() -> str:
    return "ok"


@app.get("/sync/queries/{n}")
def sync_queries(n: int) -> dict[str, int]:
    return _sync(probe.distinct, n)


@app.get("/sync/repeat/{n}")
def sync_repeat(n: int) -> dict[str, int]:
    return _sync(probe.repeated, n)


@app.get("/async/queries/{n}")
async def async_queries(n: int) -> dict[str, int]:
    return await _async(probe.distinct, n)


@app.get("/async/repeat/{n}")
async def async_repeat(n: int) -> dict[str, int]:
    return await _async(probe.repeated, n)


@app.get("/reports/sync/queries/{n}")
def report_sync_queries(n: int) -> dict[str, int]:
    return _sync(probe.distinct, n)


@app.get("/reports/async/repeat/{n}")
async def report_async_repeat(n: int) -> dict[str, int]:
    return await _async(probe.repeated, n)


@app.get("/async/cpu/{ms}")
async def async_cpu(ms: int) -> dict[str, int]:
    """Burns `ms` of this thread's CPU on the event loop (thread CPU time would be meaningless here)."""
    start = time.thread_time()
    while time.thread_time() - start < ms / 1000:
        pass
    return {"cpu_ms": round((time.thread_time() - start) * 1000)}
