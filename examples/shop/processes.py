#!/usr/bin/env python3
"""Start and stop the example shop: the fake partner API, gunicorn and a Celery worker.

    .venv/bin/python examples/shop/processes.py start   # (re)start all three, wait until healthy
    .venv/bin/python examples/shop/processes.py stop
    .venv/bin/python examples/shop/processes.py status

gunicorn and the worker run under `opentelemetry-instrument`, export OTLP to the stack's collector
(127.0.0.1:4317) and load examples/shop/budgets.toml through OTEL_BUDGET_CONFIG. Logs and pid files
go to ${OTEL_BUDGET_STACK_DIR:-/tmp/otel-budget-stack}/logs/shop-*.log. Used by examples/demo.py
and tests/e2e; the services they need come from `make stack`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SHOP_DIR = Path(__file__).resolve().parent
REPO_DIR = SHOP_DIR.parent.parent
if str(REPO_DIR) not in sys.path:  # run as a script, or imported with only examples/shop on the path
    sys.path.append(str(REPO_DIR))

from stack.processes import pid_alive, port_open, signal_and_wait  # noqa: E402  the stack's process checks
from stack.settings import HOST  # noqa: E402
from stack.settings import LOG_DIR as STACK_LOG_DIR  # noqa: E402

BUDGETS_FILE = SHOP_DIR / "budgets.toml"
LOG_DIR = Path(STACK_LOG_DIR)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy loopback


class ShopError(RuntimeError):
    """A shop process did not start or is not healthy; the message says which and shows its log."""


@dataclass(frozen=True)
class ShopProcess:
    """One process of the shop, with its pid file and log under LOG_DIR."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    port: int | None = None

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"shop-{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return LOG_DIR / f"shop-{self.name}.pid"

    def pid(self) -> int | None:
        """The pid this runner started, if that process is still alive."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def start(self) -> int:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                self.argv, env=dict(self.env), cwd=SHOP_DIR, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.pid_path.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM to the process we started (gunicorn / Celery stop their children), then its group."""
        pid = self.pid()
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        if pid is None:
            return f"{self.name}: not running"
        how = "stopped"
        if not signal_and_wait(pid, signal.SIGTERM, timeout):
            how = "killed (did not stop in time)"
        # Its own session: whatever it forked and left behind goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _reap(pid)
        return f"{self.name}: {how} (pid {pid})"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "    (no log)"
        return "\n".join(f"    | {line}" for line in text)

    def failure(self, why: str) -> ShopError:
        return ShopError(f"shop {self.name} {why}\n  log {self.log_path}, last lines:\n{self.log_tail()}")


@dataclass
class ShopProcesses:
    """The fake partner API, gunicorn (`--workers 2`, gthread) and a Celery worker (prefork), as a unit.

    Args:
        port: gunicorn's port.
        partner_port: the fake partner API's port.
        bsp_delay_ms: OTEL_BSP_SCHEDULE_DELAY of both apps (how long spans wait before export).
        extra_env: more environment for both apps.
        instance: names this shop's pid and log files (`shop-<instance>-web.pid`), so that starting or
            stopping it leaves the default shop alone; give it other ports and a broker of its own too.
    """

    port: int = 8000
    partner_port: int = 8010
    web_workers: int = 2
    web_threads: int = 4
    worker_concurrency: int = 2
    bsp_delay_ms: int = 500
    metric_export_interval_ms: int = 5000
    web_service: str = "shop"
    worker_service: str = "shop-worker"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    instance: str = ""  # a second shop beside the default one: its own pid and log files (and ports, broker)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def partner_url(self) -> str:
        return f"http://{HOST}:{self.partner_port}"

    def app_env(self, service: str) -> dict[str, str]:
        """The environment of gunicorn and the worker: zero-code OpenTelemetry plus otel-budget."""
        bin_dir = str(Path(sys.executable).parent)
        env = dict(os.environ)
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            # this checkout's otel-budget first (a worktree's e2e runs test its own code, not the installed copy)
            PYTHONPATH=os.pathsep.join(str(p) for p in (SHOP_DIR, REPO_DIR / "src") if p.is_dir()),
            DJANGO_SETTINGS_MODULE="shop.settings",
            SHOP_PARTNER_URL=self.partner_url,
            OTEL_SERVICE_NAME=service,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_LOGS_EXPORTER="none",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{HOST}:4317",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_BSP_SCHEDULE_DELAY=str(self.bsp_delay_ms),
            OTEL_METRIC_EXPORT_INTERVAL=str(self.metric_export_interval_ms),
            OTEL_PYTHON_DJANGO_EXCLUDED_URLS="healthz",
            OTEL_BUDGET_CONFIG=str(BUDGETS_FILE),
        )
        env.update(self.extra_env)
        return env

    def processes(self) -> list[ShopProcess]:
        bin_dir = Path(sys.executable).parent
        instrument = str(bin_dir / "opentelemetry-instrument")
        partner = ShopProcess(
            self._named("partner"),
            (sys.executable, str(SHOP_DIR / "fake_partner.py"), "--port", str(self.partner_port)),
            dict(os.environ),
            self.partner_port,
        )
        web = ShopProcess(
            self._named("web"),
            (
                instrument, str(bin_dir / "gunicorn"), "shop.wsgi",
                "--bind", f"{HOST}:{self.port}",
                "--workers", str(self.web_workers), "--worker-class", "gthread", "--threads", str(self.web_threads),
                "--timeout", "30", "--graceful-timeout", "5",
                "--access-logfile", "-", "--error-logfile", "-",
            ),  # fmt: skip
            self.app_env(self.web_service),
            self.port,
        )
        worker = ShopProcess(
            self._named("worker"),
            (
                instrument, str(bin_dir / "celery"), "-A", "shop", "worker",
                "--pool", "prefork", "--concurrency", str(self.worker_concurrency),
                "--loglevel", "INFO", "--hostname", f"{self._named('shop')}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ),  # fmt: skip
            self.app_env(self.worker_service),
        )
        return [partner, web, worker]

    def _named(self, name: str) -> str:
        return f"{self.instance}-{name}" if self.instance else name

    def start(self, timeout: float = 60.0) -> None:
        """Start all three (restarting any this runner left running) and wait until they answer.

        Raises:
            ShopError: a port is taken by something else, or a process died or did not get healthy.
        """
        self.stop()
        processes = self.processes()
        for process in processes:
            if process.port is not None and port_open(process.port):
                raise ShopError(
                    f"port {process.port} (shop {process.name}) is taken by a process this runner did not start; "
                    f"stop it first (`ss -ltnp 'sport = :{process.port}'` shows which)"
                )
        offsets = {p.name: _size(p.log_path) for p in processes}
        started = {p.name: p.start() for p in processes}
        deadline = time.monotonic() + timeout
        for process in processes:
            self._wait_healthy(process, started[process.name], offsets[process.name], deadline)
        self._warm_up()

    def _warm_up(self) -> None:
        """Let every gunicorn worker open its broker and database connections before the first real request."""
        requests = self.web_workers * self.web_threads * 2
        with ThreadPoolExecutor(self.web_workers * self.web_threads) as pool:
            list(pool.map(lambda url: _http_ok(url, timeout=10.0), [f"{self.url}/healthz/?warm=1"] * requests))

    def stop(self) -> list[str]:
        """Stop what this runner started (worker first, so it does not pick up half a workload)."""
        return [process.stop() for process in reversed(self.processes())]

    def status(self) -> dict[str, int | None]:
        return {process.name: process.pid() for process in self.processes()}

    def _wait_healthy(self, process: ShopProcess, pid: int, log_offset: int, deadline: float) -> None:
        while True:
            if not pid_alive(pid):
                raise process.failure(f"exited during start-up (pid {pid})")
            if self._healthy(process, log_offset):
                return
            if time.monotonic() > deadline:
                raise process.failure(f"not healthy in time (pid {pid})")
            time.sleep(0.2)

    def _healthy(self, process: ShopProcess, log_offset: int) -> bool:
        if process.name == self._named("partner"):
            return _http_ok(f"{self.partner_url}/healthz")
        if process.name == self._named("web"):
            return _http_ok(f"{self.url}/healthz/")
        # The worker says "celery@... ready." once its pool is up.
        try:
            with open(process.log_path, "rb") as log:
                log.seek(log_offset)
                return b" ready." in log.read()
        except OSError:
            return False


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    shop = ShopProcesses()
    if args.command == "start":
        try:
            shop.start()
        except ShopError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"shop at {shop.url}, worker and partner API running; logs in {LOG_DIR}/shop-*.log")
    elif args.command == "stop":
        print("\n".join(shop.stop()))
    else:
        for name, pid in shop.status().items():
            print(f"{name:8} {'running, pid ' + str(pid) if pid else 'down'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
