"""Support for tests/reliability: the example shop's processes, the stack's services, Jaeger, HTTP.

The shop runs exactly as in production (gunicorn / uvicorn / Celery under `opentelemetry-instrument`,
exporting OTLP to the stack's collector), through examples/shop/processes.py; the reliability
app (tests/reliability/apps) adds diagnostic and fault-injection views and tasks on top of it.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import processes as shop_processes  # examples/shop/processes.py
import stack

from otel_budget import spanformat
from otel_budget.results import ScopeResult

HERE = Path(__file__).resolve().parent
REPO_DIR = HERE.parent.parent
APPS_DIR = HERE / "apps"
SHOP_DIR = REPO_DIR / "examples" / "shop"
STACK_SCRIPT = REPO_DIR / "stack" / "stack.py"
BIN_DIR = Path(sys.executable).parent
HOST = "127.0.0.1"
JAEGER_API = f"http://{HOST}:16686/api"
# The reliability suite's own database, MongoDB database and Redis databases: the e2e tests
# and the demo use the shop's defaults at the same time on this machine.
DB_NAME = "shop_reliability"
BROKER_URL = f"redis://{HOST}:6379/7"
RESULT_URL = f"redis://{HOST}:6379/8"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy loopback

# What the reliability suite sets for every app run (docs/reliability.md, "Exporter settings").
EXPORTER_ENV = {
    "OTEL_BSP_MAX_QUEUE_SIZE": "2048",  # spans waiting for export; beyond it new spans are dropped
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "512",
    "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms
    "OTEL_BSP_EXPORT_TIMEOUT": "2000",  # ms; read but not used by SDK 1.45's BatchSpanProcessor
    "OTEL_EXPORTER_OTLP_TIMEOUT": "2",  # *seconds* in opentelemetry-exporter-otlp 1.45 (the spec says ms)
    "OTEL_METRIC_EXPORT_INTERVAL": "5000",
    "OTEL_METRIC_EXPORT_TIMEOUT": "2000",
}


# --------------------------------------------------------------------------- the stack


def unhealthy(services: Iterable[str]) -> list[str]:
    """Why each of `services` (stack.py names) is not healthy; empty when all are."""
    return [f"{name} ({stack.BY_NAME[name].address}): {reason}" for name in services if (reason := stack.BY_NAME[name].health())]


def stack_command(command: str, service: str, timeout: float = 120.0) -> str:
    """`stack.py down|up SERVICE`, the same code as `make stack`; returns its output."""
    done = subprocess.run(
        [sys.executable, str(STACK_SCRIPT), command, service],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, check=False,
    )  # fmt: skip
    output = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise AssertionError(f"stack.py {command} {service} failed (exit {done.returncode}):\n{output}")
    return output


def ensure_shop_database() -> None:
    """Create and seed the suite's own shop database (idempotent: `manage.py setup_shop`)."""
    import psycopg2

    connection = psycopg2.connect(host=HOST, port=5432, user="otel_budget", password="otel_budget", dbname="postgres")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        connection.close()
    env = dict(os.environ, PYTHONPATH=str(SHOP_DIR), DJANGO_SETTINGS_MODULE="shop.settings", **shop_env())
    done = subprocess.run(
        [sys.executable, "manage.py", "setup_shop"], cwd=SHOP_DIR, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"manage.py setup_shop failed:\n{done.stdout.decode(errors='replace')}")


def shop_env() -> dict[str, str]:
    return {
        "SHOP_DB_NAME": DB_NAME,
        "SHOP_MONGO_DB": DB_NAME,
        "CELERY_BROKER_URL": BROKER_URL,
        "CELERY_RESULT_BACKEND": RESULT_URL,
    }


# --------------------------------------------------------------------------- app processes


def service_name(label: str) -> str:
    """A service name no other run uses: Jaeger queries by it."""
    return f"rel-{label}-{uuid.uuid4().hex[:8]}"


def app_env(service: str, *, reliability_app: bool = True, **extra: str) -> dict[str, str]:
    """The shop's production environment (processes.py) plus the suite's database and exporter settings."""
    env = shop_processes.ShopProcesses(web_service=service).app_env(service)
    env.update(shop_env())
    env.update(EXPORTER_ENV)
    env["OTEL_SERVICE_NAME"] = service
    if reliability_app:
        env["PYTHONPATH"] = f"{APPS_DIR}{os.pathsep}{SHOP_DIR}"
        env["DJANGO_SETTINGS_MODULE"] = "reliability_settings"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def gunicorn_argv(port: int, *, workers: int = 2, threads: int = 4, preload: bool = False, wsgi: str = "shop.wsgi") -> tuple[str, ...]:
    argv = [
        str(BIN_DIR / "opentelemetry-instrument"), str(BIN_DIR / "gunicorn"), wsgi,
        "--bind", f"{HOST}:{port}", "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
        "--timeout", "30", "--graceful-timeout", "5", "--error-logfile", "-",
    ]  # fmt: skip
    if preload:
        argv.append("--preload")
    return tuple(argv)


def uvicorn_argv(port: int) -> tuple[str, ...]:
    return (
        str(BIN_DIR / "opentelemetry-instrument"), str(BIN_DIR / "uvicorn"), "shop.asgi:application",
        "--host", HOST, "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "3",
    )  # fmt: skip


def celery_argv(concurrency: int) -> tuple[str, ...]:
    return (
        str(BIN_DIR / "opentelemetry-instrument"), str(BIN_DIR / "celery"), "-A", "shop", "worker",
        "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "INFO",
        "--hostname", f"rel-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    )  # fmt: skip


@dataclass
class AppProcess:
    """One app server or worker, started through examples/shop/processes.py's `ShopProcess`."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(repr=False)
    port: int | None = None
    process: Any = field(init=False, repr=False)
    pid: int = field(init=False, default=0)
    _log_offset: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        # Names prefixed `rel-`: pid and log files of their own beside the e2e tests' shop.
        self.process = shop_processes.ShopProcess(f"rel-{self.name}", tuple(self.argv), dict(self.env), self.port)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self.process.log_path)

    def start(self, timeout: float = 60.0) -> AppProcess:
        self.process.stop()
        if self.port is not None and stack.port_open(self.port):
            raise AssertionError(f"port {self.port} for {self.name} is taken by another process")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.pid = self.process.start()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if not stack.pid_alive(self.pid):
                raise AssertionError(f"{self.name} exited during start-up; log:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready within {timeout:.0f}s; log:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        if self.port is None:  # a Celery worker says so once its pool is up
            return " ready." in self.log()
        try:
            return get(f"{self.url}/healthz/", timeout=1.0).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.stop()

    def log(self) -> str:
        """What the process wrote since this start."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def children(self) -> list[int]:
        """Pids of the processes it forked (gunicorn workers, Celery pool processes)."""
        return child_pids(self.pid)


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(found)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class SharedShop:
    """The shop plus the reliability app: gunicorn (gthread, 3 workers x 8 threads, --preload) and a
    Celery prefork worker (3 processes), with injected faults armed and MongoDB statements captured.

    Both parents hold an open scope, an open span and a read RSS descriptor when they fork.
    Started on first use and stopped as soon as the run leaves tests/reliability.
    """

    running: tuple[AppProcess, AppProcess, str] | None = None

    @classmethod
    def get(cls) -> tuple[AppProcess, AppProcess, str]:
        if cls.running is None:
            service = service_name("shop")
            env = app_env(
                service,
                RELIABILITY_FAULTS="1",
                RELIABILITY_CAPTURE_STATEMENT="1",
                OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="pymongo",  # instrumented by the app, with capture_statement
                RELIABILITY_STATE_AT_FORK="1",
                # With --preload the exporter is created in the master, before fork: gRPC does not support
                # using a channel across fork (without GRPC_ENABLE_FORK_SUPPORT); requests' HTTP does.
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{HOST}:4318",
            )
            port = free_port()
            web = AppProcess("web", gunicorn_argv(port, workers=3, threads=8, preload=True), env, port)
            worker = AppProcess("worker", celery_argv(3), env)
            try:
                web.start()
                worker.start()
            except BaseException:
                worker.stop()
                web.stop()
                raise
            cls.running = (web, worker, service)
        return cls.running

    @classmethod
    def stop(cls) -> None:
        if cls.running is not None:
            web, worker, _ = cls.running
            cls.running = None
            worker.stop()
            web.stop()


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def trace_id(self) -> str:
        return self.headers.get("X-Trace-Id", "")


def get(url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None, body: bytes | None = None, timeout: float = 30.0) -> Response:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    started = time.perf_counter()
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            data = response.read()
            return Response(response.status, dict(response.headers), data, time.perf_counter() - started)
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read(), time.perf_counter() - started)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"n={len(ms)} p50={statistics.median(ms):.1f}ms p95={percentile(ms, 95):.1f}ms "
        f"p99={percentile(ms, 99):.1f}ms max={max(ms):.1f}ms"
    )


# --------------------------------------------------------------------------- Jaeger


@dataclass(frozen=True)
class JaegerSpan:
    trace_id: str
    span_id: str
    name: str
    service: str
    kind: str
    attributes: Mapping[str, Any]
    events: tuple[tuple[str, Mapping[str, Any]], ...]

    @property
    def is_scope(self) -> bool:
        return "budget.violations" in self.attributes

    @property
    def scope(self) -> ScopeResult | None:
        """What otel-budget wrote on this span, read back by `otel_budget.spanformat` (None: not a scope span)."""
        return spanformat.decode(
            self.attributes,
            [(name, fields, 0) for name, fields in self.events],  # event times are not read here
            span_name=self.name,
            span_kind=self.kind,
            trace_id=int(self.trace_id, 16),
            span_id=int(self.span_id, 16),
            service=self.service,
        )

    def budget(self, metric: str) -> float | None:
        """The scope's value of `metric`; None when it has none (or is no scope span)."""
        scope = self.scope
        return scope.values.get(metric) if scope is not None else None


def _jaeger(path: str) -> Any:
    try:
        with _OPENER.open(f"{JAEGER_API}{path}", timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return {"data": []}
        raise


def _spans_of(traces: Iterable[Mapping[str, Any]]) -> list[JaegerSpan]:
    spans = []
    for trace in traces:
        processes = trace.get("processes", {})
        for span in trace.get("spans", []):
            tags = {tag["key"]: tag["value"] for tag in span.get("tags", [])}
            events = []
            for log in span.get("logs", []):
                fields = {f["key"]: f["value"] for f in log.get("fields", [])}
                events.append((str(fields.pop("event", "")), fields))
            spans.append(
                JaegerSpan(
                    trace_id=span["traceID"].rjust(32, "0"),
                    span_id=span["spanID"],
                    name=span["operationName"],
                    service=processes.get(span.get("processID"), {}).get("serviceName", ""),
                    kind=str(tags.get("span.kind", "")),
                    attributes=tags,
                    events=tuple(events),
                )
            )
    return spans


def trace_spans(trace_id: str) -> list[JaegerSpan]:
    return _spans_of(_jaeger(f"/traces/{trace_id}").get("data") or [])


def service_spans(service: str, limit: int = 1000) -> list[JaegerSpan]:
    return _spans_of(_jaeger(f"/traces?service={service}&limit={limit}&lookback=1h").get("data") or [])


def wait_for(fetch: Callable[[], list[JaegerSpan]], done: Callable[[list[JaegerSpan]], bool], timeout: float, what: str) -> list[JaegerSpan]:
    """Poll Jaeger until `done(spans)`; on timeout fail with what was found."""
    deadline = time.monotonic() + timeout
    spans: list[JaegerSpan] = []
    while True:
        try:
            spans = fetch()
        except OSError:
            spans = []
        if done(spans):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"Jaeger: {what} not found within {timeout:.0f}s ({len(spans)} spans found)")
        time.sleep(0.5)


def scope_spans_by_trace(trace_ids: Iterable[str], timeout: float = 30.0) -> dict[str, JaegerSpan]:
    """The scope span (the one carrying `budget.*`) of each trace, waiting until all are in Jaeger."""
    wanted = set(trace_ids)
    found: dict[str, JaegerSpan] = {}
    deadline = time.monotonic() + timeout
    while True:
        for trace_id in sorted(wanted - found.keys()):
            try:
                scopes = [s for s in trace_spans(trace_id) if s.kind == "server" and s.trace_id == trace_id]
            except OSError:
                scopes = []
            if scopes:
                found[trace_id] = scopes[0]
        if len(found) == len(wanted):
            return found
        if time.monotonic() > deadline:
            missing = sorted(wanted - found.keys())
            raise AssertionError(f"Jaeger: {len(missing)} of {len(wanted)} traces missing after {timeout:.0f}s, e.g. {missing[:3]}")
        time.sleep(0.5)


def rss_mib_self() -> float:
    return rss_mib(os.getpid())
