"""Bad sampling settings and a dead collector: the shop under `opentelemetry-instrument gunicorn` keeps answering.

Each case starts one gunicorn worker of the shop on a port the kernel picks (no fixed port, no lock)
with one bad setting, sends real requests, and checks three things: every answer is 200, the log says
what was wrong and what is used instead, and what otel-budget tallied is still exact (the scope span
in Jaeger against Django's capture). The fallbacks are the SDK's (docs/sampling.md, "Bad settings").
"""

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
from pathlib import Path

import pytest
from shop_e2e import SHOP_DIR, ShopClient, ShopTraces

from processes import ShopProcesses

SRC = Path(__file__).resolve().parents[2] / "src"
BIN = Path(sys.executable).parent


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
def gunicorns(*envs: dict[str, str]) -> Iterator[list[Gunicorn]]:
    """One `Gunicorn` per environment, started side by side, stopped after."""
    servers: list[Gunicorn] = []
    try:
        for env in envs:
            servers.append(Gunicorn(f"bad-input-{os.getpid()}", env))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.terminate()  # all at once: each flushes its spans on the way out
        for server in servers:
            server.stop()


# (case id, environment, what the log must say). Every case falls back to sampling every trace.
SAMPLERS = [
    ("unknown-sampler", {"OTEL_TRACES_SAMPLER": "banana"}, "Couldn't recognize sampler banana."),
    ("ratio-above-1", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "7"},
     "Probability must be in range [0.0, 1.0]"),
    ("ratio-below-0", {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-1"},
     "Probability must be in range [0.0, 1.0]"),
    ("ratio-not-a-number", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "abc"},
     "Could not convert TRACES_SAMPLER_ARG to float"),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_samplers(stack_services: None, shop_database: None) -> Iterator[dict[str, Gunicorn]]:
    """A shop per SAMPLERS case, all started at once."""
    with gunicorns(*(env for _, env, _ in SAMPLERS)) as servers:
        yield {case: server for (case, _, _), server in zip(SAMPLERS, servers)}


@pytest.mark.parametrize(("case", "logged"), [(c[0], c[2]) for c in SAMPLERS], ids=[c[0] for c in SAMPLERS])
def test_a_bad_sampler_setting_falls_back_to_sampling_everything(
    case: str, logged: str, bad_samplers: dict[str, Gunicorn], traces: ShopTraces
) -> None:
    """The app answers 200, the log names the bad value, and every request's scope reaches Jaeger, exact."""
    server = bad_samplers[case]
    responses = [server.client.get("probe/queries/", pg=str(n)) for n in (1, 2, 3)]
    assert logged in server.text(), server.text()[-3000:]
    for response in responses:
        values = traces.wait(response.trace_id).request.scope.values
        assert values["db.postgresql.queries"] == response.ground_truth["pg_statements"] == response.body["pg"]


def test_an_unknown_budget_sampling_mode_counts_as_all(
    stack_services: None, shop_database: None, traces: ShopTraces
) -> None:
    """OTEL_BUDGET_SAMPLING=banana under always_off: logged, and the N+1 request's trace is still exported."""
    with gunicorns({"OTEL_TRACES_SAMPLER": "always_off", "OTEL_BUDGET_SAMPLING": "banana"}) as (server,):
        over = server.client.get("orders/")
        within = server.client.get("probe/queries/", pg="1")
        text = server.text()
    assert "OTEL_BUDGET_SAMPLING" in text and "banana" in text, text[-3000:]
    scope = traces.wait(over.trace_id).request.scope
    assert [v.metric for v in scope.violations] == ["db.repeated_queries"]
    time.sleep(1)  # past the 200 ms batch delay: had it been exported, it would be there
    assert traces.jaeger.trace(within.trace_id) == []  # within budget and not sampled: not exported


def test_a_dead_collector_does_not_slow_the_app(stack_services: None, shop_database: None) -> None:
    """OTLP to a port nobody listens on: 200s, no slower than a control exporting to the collector.

    The two run side by side and take turns request by request, so a busy machine slows both alike.
    """
    dead = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    with gunicorns({}, dead) as (control, orphan):
        times: dict[str, list[float]] = {"control": [], "dead": []}
        for _ in range(41):
            for name, server in (("control", control), ("dead", orphan)):
                t0 = time.perf_counter()
                server.client.get("probe/queries/", pg="2")
                times[name].append(time.perf_counter() - t0)
        time.sleep(1.5)  # an export attempt or two (200 ms batch delay)
        text = orphan.text()
    assert "UNAVAILABLE" in text or "Failed to export" in text, text[-3000:]
    control_ms, dead_ms = (sorted(t[1:])[20] * 1e3 for t in (times["control"], times["dead"]))  # median, warm
    print(f"median request: control {control_ms:.1f} ms, collector down {dead_ms:.1f} ms")
    assert dead_ms < 1.5 * control_ms + 5, (control_ms, dead_ms)
