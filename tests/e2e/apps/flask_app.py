"""Flask + SQLAlchemy 2.0 + psycopg2, served by gunicorn under `opentelemetry-instrument` (no tracing code here).

    GET /queries/<n>          n statements of n shapes          (rule http)
    GET /repeat/<n>           one statement n times             (rule http)
    GET /reports/queries/<n>  n statements of n shapes          (route override reports/*)
    GET /reports/repeat/<n>   one statement n times             (route override)

Each answers SQLAlchemy's own count (sqlalchemy_probe); every response names its trace (X-Trace-Id).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, jsonify
from flask.typing import ResponseReturnValue
from opentelemetry import trace

import sqlalchemy_probe as probe

app = Flask(__name__)
probe.open_pool()  # in each gunicorn worker, before it serves


@app.after_request
def trace_id_header(response: Response) -> Response:
    """Every answer (404s too) names its trace, so the tests find its spans in Jaeger."""
    response.headers["X-Trace-Id"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
    return response


def _answer(run: Callable[[int], None], n: int) -> ResponseReturnValue:
    seen = probe.watch()
    run(n)
    return jsonify(seen.truth())


@app.get("/healthz")
def healthz() -> ResponseReturnValue:
    return "ok"


@app.get("/queries/<int:n>")
def queries(n: int) -> ResponseReturnValue:
    return _answer(probe.distinct, n)


@app.get("/repeat/<int:n>")
def repeat(n: int) -> ResponseReturnValue:
    return _answer(probe.repeated, n)


@app.get("/reports/queries/<int:n>")
def report_queries(n: int) -> ResponseReturnValue:
    return _answer(probe.distinct, n)


@app.get("/reports/repeat/<int:n>")
def report_repeat(n: int) -> ResponseReturnValue:
    return _answer(probe.repeated, n)
