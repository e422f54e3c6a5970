"""Helpers of the end-to-end tests: HTTP to the shop, traces read back from Jaeger."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from jaeger_reader import ExportedSpan, JaegerError, JaegerReader  # examples/shop
from processes import ShopError, ShopProcesses  # examples/shop

SHOP_DIR = Path(__file__).resolve().parents[2] / "examples" / "shop"
SRC = Path(__file__).resolve().parents[2] / "src"
BIN = Path(sys.executable).parent

# What the tests need from `make stack`.
DATABASES = (("PostgreSQL", 5432), ("FerretDB (MongoDB wire protocol)", 27017))
STACK_SERVICES = (
    *DATABASES,
    ("Redis (Celery broker)", 6379),
    ("OpenTelemetry Collector (OTLP gRPC)", 4317),
    ("Jaeger (query API)", 16686),
)
SPAN_TIMEOUT_S = 20.0


@contextmanager
def running(processes: ShopProcesses, timeout: float = 90) -> Iterator[ShopClient]:
    """The shop's processes started (the test fails, naming why, if they cannot be) and stopped after."""
    try:
        processes.start(timeout=timeout)
    except ShopError as exc:
        processes.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield ShopClient(processes.url)
    finally:
        processes.stop()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class ShopResponse:
    status: int
    body: Any
    trace_id: str
    headers: dict[str, str]

    @property
    def ground_truth(self) -> dict[str, int]:
        """Django's capture and pymongo's CommandListener counts (store/ground_truth.py)."""
        prefix = "x-ground-truth-"
        return {
            k[len(prefix) :].replace("-", "_"): int(v) for k, v in self.headers.items() if k.startswith(prefix)
        }


class ShopClient:
    """HTTP to the running shop; every call asks for the ground-truth headers."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.trust_env = False  # loopback, never a proxy

    def get(self, path: str, **params: Any) -> ShopResponse:
        return self.request("GET", path, params=params)

    def post(self, path: str) -> ShopResponse:
        return self.request("POST", path)

    def request(self, method: str, path: str, **kwargs: Any) -> ShopResponse:
        response = self.session.request(
            method, f"{self.base_url}/{path}", headers={"X-Ground-Truth": "1"}, timeout=30, **kwargs
        )
        assert response.status_code == 200, f"{method} /{path}: {response.status_code} {response.text[:500]}"
        headers = {k.lower(): v for k, v in response.headers.items()}
        return ShopResponse(response.status_code, response.json(), headers["x-trace-id"], headers)


@dataclass(frozen=True)
class ShopTrace:
    """One trace as Jaeger returns it, with its otel-budget scope spans picked out."""

    trace_id: str
    spans: list[ExportedSpan]

    @property
    def request(self) -> ExportedSpan:
        """The request's scope span: the SERVER span of the shop."""
        (span,) = [s for s in self.spans if s.is_scope and s.kind == "server"]
        return span

    def task(self, name: str) -> ExportedSpan:
        """The scope span of Celery task `name` (its `run/<name>` CONSUMER span)."""
        (span,) = [s for s in self.spans if s.is_scope and s.kind == "consumer" and s.name == f"run/{name}"]
        return span

    def by_id(self, span_id: str | None) -> ExportedSpan | None:
        return next((s for s in self.spans if s.span_id == span_id), None)


class ShopTraces:
    """Waits for a trace to reach Jaeger with the scope spans a test expects."""

    def __init__(self, jaeger: JaegerReader) -> None:
        self.jaeger = jaeger

    def wait(self, trace_id: str, *, tasks: tuple[str, ...] = ()) -> ShopTrace:
        def ready(spans: list[ExportedSpan]) -> bool:
            names = {s.name for s in spans if s.is_scope}
            servers = [s for s in spans if s.is_scope and s.kind == "server"]
            return bool(servers) and all(f"run/{task}" in names for task in tasks)

        what = "the request's scope span" + (f" and task scope spans {', '.join(tasks)}" if tasks else "")
        try:
            spans = self.jaeger.wait_for(trace_id, ready, timeout_s=SPAN_TIMEOUT_S, what=what)
        except JaegerError as exc:
            pytest.fail(f"{exc}\n(logs: /tmp/otel-budget-stack/logs/shop-*.log and collector.log)", pytrace=False)
        return ShopTrace(trace_id, spans)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """One gunicorn worker of the shop under opentelemetry-instrument, with `env` on top of the shop's."""

    def __init__(self, service: str, env: dict[str, str]) -> None:
        port = free_port()
        app_env = ShopProcesses().app_env(service)
        app_env.update(PYTHONPATH=f"{SHOP_DIR}{os.pathsep}{SRC}", OTEL_BSP_SCHEDULE_DELAY="200", **env)
        self.log = Path(tempfile.mkstemp(prefix=f"{service}-", suffix=".log")[1])
        argv = [str(BIN / "opentelemetry-instrument"), str(BIN / "gunicorn"), "shop.wsgi", "--bind",
                f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread", "--threads", "2",
                "--error-logfile", "-"]  # fmt: skip
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(argv, env=app_env, cwd=SHOP_DIR, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.client = ShopClient(f"http://127.0.0.1:{port}")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client.session.get(f"{self.client.base_url}/healthz/", timeout=1).status_code == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the shop did not start (exit {self.process.poll()}):\n{self.text()[-3000:]}",
                            pytrace=False)
            time.sleep(0.2)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.unlink(missing_ok=True)


@contextmanager
def gunicorns(*envs: dict[str, str], service: str = "") -> Iterator[list[Gunicorn]]:
    """One `Gunicorn` per environment (service name `service`, default bad-input-<pid>), started side by side, stopped after."""
    servers: list[Gunicorn] = []
    try:
        for env in envs:
            servers.append(Gunicorn(service or f"bad-input-{os.getpid()}", env))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.terminate()  # all at once: each flushes its spans on the way out
        for server in servers:
            server.stop()
