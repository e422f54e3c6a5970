"""A web server of the framework tests, started under `opentelemetry-instrument` on a port of its own.

    with served_app("flask", argv, port=8201) as url: ...

Its log is ${OTEL_BUDGET_STACK_DIR:-/tmp/otel-budget-stack}/logs/fw-<name>.log; it exports OTLP to the
stack's collector (so to Jaeger) and reads its budgets from OTEL_BUDGET_CONFIG. The test fails, naming why
and showing the log, when the port is taken or the server does not answer; the server and whatever it forked
are stopped after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from shop_e2e import port_open

from stack.processes import pid_alive, signal_and_wait
from stack.settings import LOG_DIR

APPS_DIR = Path(__file__).resolve().parent / "apps"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def app_env(service: str, budgets: Path, **extra: str) -> dict[str, str]:
    """Zero-code OpenTelemetry plus otel-budget, exporting every 200 ms; this tree's code first on the path."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(APPS_DIR), env.get("PYTHONPATH", "")) if p),
        OTEL_SERVICE_NAME=service,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BUDGET_CONFIG=str(budgets),
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def served_app(
    name: str, argv: list[str], *, port: int, env: Mapping[str, str], cwd: Path = APPS_DIR, health: str = "/healthz"
) -> Iterator[str]:
    """`opentelemetry-instrument <argv>` serving on 127.0.0.1:`port`, until the block ends."""
    if port_open(port):
        pytest.fail(f"port {port} ({name}) is taken; `ss -ltnp 'sport = :{port}'` shows by what", pytrace=False)
    log_path = Path(LOG_DIR) / f"fw-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    with open(log_path, "ab") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [instrument, *argv], env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url + health, log_path)
        yield url
    finally:
        signal_and_wait(proc.pid, signal.SIGTERM, 15)  # gunicorn and uvicorn stop their workers
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None or not pid_alive(proc.pid):
            _fail(f"exited during start-up (exit {proc.returncode})", log_path)
        try:
            with _OPENER.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            _fail(f"did not answer {url} within {timeout_s:.0f} s", log_path)
        time.sleep(0.2)


def _fail(why: str, log_path: Path) -> None:
    tail = "\n".join(f"    | {line}" for line in log_path.read_text(errors="replace").splitlines()[-30:])
    pytest.fail(f"{log_path.stem} {why}\n  log {log_path}, last lines:\n{tail}", pytrace=False)
