"""What the timeout hooks add per HTTP call and per DB statement, in instructions, for callgrind.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/untimed_cost.py MODE 200
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/untimed_cost.py MODE 400

and take the difference (start-up and imports cancel). MODE:
    http-unhooked   urllib3 calls (instrumented, one scope each) with the hooks taken off
    http-timed      the same with the hooks on, `timeout=3`
    http-untimed    the same with the hooks on and no timeout (the limit lifted: no event)
    db-unhooked     psycopg2 `SELECT 1` (instrumented, 20 per scope) with the hooks off
    db-hooked       the same with the hooks on, an untimed connection (counted once per scope)
    check-none      no network: a scope with one HTTP CLIENT span, no check (the baseline of the next two)
    check-timed     the same, the urllib3 hook's check of a timed call inside the span
    check-untimed   the same, an untimed call: counted in the scope, its details kept
    dbhook-none     no statement: 20 calls per scope of a stand-in for the dbapi cursor tracer, unwrapped
    dbhook-untimed  the same through the psycopg hook, on a real psycopg2 connection without a timeout
    dbhook-timed    the same, the connection has `connect_timeout=3`
The HTTP server is http.server on 127.0.0.1 in a thread of the same process (the same in every mode).
"""

from __future__ import annotations

import http.server
import sys
import threading
from typing import Any

MODES = (
    "http-unhooked", "http-timed", "http-untimed", "db-unhooked", "db-hooked", "check-none", "check-timed", "check-untimed",
    "dbhook-none", "dbhook-untimed", "dbhook-timed",
)
PG = "host=127.0.0.1 port=5432 dbname=shop user=otel_budget password=otel_budget"
WARM_UP = 50


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in MODES:
        print(f"usage: untimed_cost.py MODE N; MODE one of {MODES}", file=sys.stderr)
        return 2
    mode, count = argv[0], int(argv[1])
    from opentelemetry.sdk.trace import TracerProvider

    from otel_budget import BudgetSpanProcessor, _timeouts, budget_scope

    provider = TracerProvider()
    provider.add_span_processor(BudgetSpanProcessor(record_metrics=False))
    if mode.endswith("unhooked"):
        _timeouts.uninstall()
    if mode.startswith("http"):
        run = _http(provider, mode)
    elif mode.startswith("dbhook"):
        run = _db_hook(mode)
    elif mode.startswith("db"):
        run = _db(provider)
    else:
        run = _check(provider, mode)
    for index in range(WARM_UP + count):
        with budget_scope("bench", tracer_provider=provider, external_untimed_calls=1e9):
            run()
    provider.shutdown()
    return 0


def _http(provider: Any, mode: str) -> Any:
    import urllib3
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    URLLib3Instrumentor().instrument(tracer_provider=provider)
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.server_address[1], timeout=3 if mode == "http-timed" else None)
    return lambda: pool.request("GET", "/")


def _check(provider: Any, mode: str) -> Any:
    import urllib3
    from opentelemetry.trace import SpanKind

    from otel_budget._timeouts import _check_urllib3

    tracer = provider.get_tracer("bench")
    pool = urllib3.HTTPConnectionPool("127.0.0.1", 9)
    timeout = urllib3.Timeout(connect=None, read=None) if mode == "check-untimed" else urllib3.Timeout(3)
    attributes = {"http.request.method": "GET"}

    def run() -> None:
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=attributes):
            if mode != "check-none":
                _check_urllib3(pool, timeout)

    return run


def _db(provider: Any) -> Any:
    import psycopg2
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

    Psycopg2Instrumentor().instrument(tracer_provider=provider)
    cursor = psycopg2.connect(PG).cursor()

    def run() -> None:
        for _ in range(20):
            cursor.execute("SELECT 1")

    return run


def _db_hook(mode: str) -> Any:
    """The psycopg hook alone: what it adds to each statement, without the statement (20 per scope)."""
    import psycopg2

    from otel_budget._timeouts import _wrap_cursor

    cursor = psycopg2.connect(PG + (" connect_timeout=3" if mode == "dbhook-timed" else "")).cursor()

    def traced_execution(tracer: Any, cursor: Any, *args: Any, **kwargs: Any) -> Any:
        return None  # where the dbapi instrumentation would run the statement in its span

    call = traced_execution if mode == "dbhook-none" else _wrap_cursor(traced_execution)

    def run() -> None:
        for _ in range(20):
            call(None, cursor, "SELECT 1")

    return run


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
