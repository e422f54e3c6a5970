"""The telemetry backend goes away under load: the shop does not notice, and export resumes when it returns.

The shop runs as in production (examples/shop: gunicorn gthread, 2 workers x 4 threads, under
`opentelemetry-instrument`, OTLP/gRPC to the stack's collector) with the exporter settings of
reliability_kit.EXPORTER_ENV. A steady open-loop workload runs for ~20 s while the collector (or,
in the second test, Jaeger behind it) is stopped and started again through stack/stack.py, in three
interleaved cycles of 3 s healthy / 3 s down, so that drift in the load of this shared machine
falls on both sides alike.

Latency tolerance: the pooled p99 while down may exceed the pooled healthy p99 by 5 % plus the
noise this very test measured between its three identical healthy windows (the spread of their
p99s). On a 2-core machine shared with other builds that spread is tens of ms (Jaeger being down,
which the app cannot even see, moved p99 by as much); a request path that waited for the exporter
would add at least OTEL_EXPORTER_OTLP_TIMEOUT (2 s), far beyond it. CPU time per request (the
workers' utime + stime, which other processes' load moves less) may grow 15 %; between identical
windows it varies by about 10 %. A latency or CPU failure must show again in a second, independent
run before the test fails.

The noise allowance is never below NOISE_FLOOR_S (25 ms): three p99s of ~120 requests each
understate the spread, and on 2 cores the collector itself (retrying against a stopped Jaeger,
logging) competes with the shop for the CPU. 25 ms is still 80 times less than the 2 s that a
request waiting for the exporter would add, so that regression cannot pass.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

import reliability_kit as kit

RATE = 40.0  # requests per second, open loop
CLIENTS = 4
CYCLES = 3
WINDOW_S = 3.0
WORKLOAD = "/probe/queries/?pg=5&mongo=1"  # 5 PostgreSQL statements, 1 MongoDB command: 7 spans
MEMORY_BOUND_MIB = 32.0
EXPORT_TIMEOUT_S = float(kit.EXPORTER_ENV["OTEL_EXPORTER_OTLP_TIMEOUT"])  # seconds in exporter-otlp 1.45
CPU_TOLERANCE = 1.15
P99_TOLERANCE = 1.05
NOISE_FLOOR_S = 0.025  # see the module docstring


@pytest.fixture(scope="module")
def shop(shop_db: None) -> Iterator[kit.AppProcess]:
    """The shop itself (shop.settings, shop.wsgi), no reliability app."""
    port = kit.free_port()
    env = kit.app_env(kit.service_name("outage"), reliability_app=False)
    app = kit.AppProcess("outage-web", kit.gunicorn_argv(port, workers=2, threads=4), env, port)
    try:
        yield app.start()
    finally:
        app.stop()


@dataclass
class Window:
    kind: str  # "healthy" or "down"
    start: float
    end: float = 0.0
    cpu_s: float = 0.0


@dataclass
class Workload:
    """Open-loop requests from CLIENTS threads at RATE in total, plus an RSS sampler."""

    url: str
    pids: list[int]
    samples: list[tuple[float, float, object]] = field(default_factory=list)  # (sent at, seconds, status)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (at, MiB summed over the workers)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Workload:
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self._memory))
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _client(self, number: int) -> None:
        period = CLIENTS / RATE
        start = time.monotonic() + number / RATE
        for sent in range(10**9):
            delay = start + sent * period - time.monotonic()
            if delay > 0 and self.stop.wait(delay) or self.stop.is_set():
                return
            at = time.monotonic()
            try:
                response = kit.get(self.url + WORKLOAD, timeout=10)
                self.samples.append((at, response.seconds, response.status))
            except Exception as exc:  # recorded: "nothing raises" is asserted on these
                self.samples.append((at, 10.0, repr(exc)))

    def _memory(self) -> None:
        while not self.stop.wait(0.25):
            self.rss.append((time.monotonic(), sum(kit.rss_mib(pid) for pid in self.pids)))

    def cpu_s(self) -> float:
        ticks = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def latencies(self, windows: list[Window]) -> list[float]:
        return [s for at, s, _ in self.samples if any(w.start <= at < w.end for w in windows)]


def run_outage(shop: kit.AppProcess, service: str) -> tuple[Workload, list[Window]]:
    """CYCLES x (WINDOW_S healthy, stop `service`, WINDOW_S down, start it) under the workload."""
    windows: list[Window] = []
    workload = Workload(shop.url, shop.children())
    try:
        with workload:
            time.sleep(1.0)  # connections and caches warm
            for _ in range(CYCLES):
                for kind in ("healthy", "down"):
                    if kind == "down":
                        kit.stack_command("down", service)
                    window = Window(kind, time.monotonic())
                    cpu = workload.cpu_s()
                    time.sleep(WINDOW_S)
                    window.end, window.cpu_s = time.monotonic(), workload.cpu_s() - cpu
                    windows.append(window)
                    if kind == "down":
                        kit.stack_command("up", service)
    finally:
        kit.stack_command("up", service)  # whatever happened, the stack is whole again
    return workload, windows


@dataclass
class Measurement:
    """One run of CYCLES outages, reduced to the figures the test compares."""

    requests: int
    statuses: set[object]
    slowest_s: float
    healthy: list[float]
    down: list[float]
    noise_s: float  # spread of the p99s of the healthy windows
    cpu_healthy_s: float  # worker CPU per request
    cpu_down_s: float
    rss_before: float
    rss_max_down: float

    @classmethod
    def of(cls, workload: Workload, windows: list[Window]) -> Measurement:
        healthy = [w for w in windows if w.kind == "healthy"]
        down = [w for w in windows if w.kind == "down"]
        ok, bad = workload.latencies(healthy), workload.latencies(down)
        per_window = [kit.percentile(workload.latencies([w]), 99) for w in healthy]
        return cls(
            requests=len(workload.samples),
            statuses={status for _, _, status in workload.samples},
            slowest_s=max(s for _, s, _ in workload.samples),
            healthy=ok,
            down=bad,
            noise_s=max(per_window) - min(per_window),
            cpu_healthy_s=sum(w.cpu_s for w in healthy) / len(ok),
            cpu_down_s=sum(w.cpu_s for w in down) / len(bad),
            rss_before=[mib for at, mib in workload.rss if at < down[0].start][-1],
            rss_max_down=max(mib for at, mib in workload.rss if any(w.start <= at < w.end for w in down)),
        )

    @property
    def p99_allowed_s(self) -> float:
        return kit.percentile(self.healthy, 99) * P99_TOLERANCE + max(self.noise_s, NOISE_FLOOR_S)

    @property
    def latency_ok(self) -> bool:
        return kit.percentile(self.down, 99) <= self.p99_allowed_s

    @property
    def cpu_ok(self) -> bool:
        return self.cpu_down_s <= self.cpu_healthy_s * CPU_TOLERANCE

    def describe(self) -> str:
        return (
            f"{self.requests} requests, statuses {sorted(map(str, self.statuses))}; healthy {kit.summary_ms(self.healthy)}; "
            f"down {kit.summary_ms(self.down)}; p99 {kit.percentile(self.healthy, 99) * 1000:.1f} -> "
            f"{kit.percentile(self.down, 99) * 1000:.1f} ms (allowed {self.p99_allowed_s * 1000:.1f} = +5% + "
            f"max(healthy-window spread {self.noise_s * 1000:.1f}, floor {NOISE_FLOOR_S * 1000:.0f})); worker CPU per request {self.cpu_healthy_s * 1000:.2f} -> "
            f"{self.cpu_down_s * 1000:.2f} ms; worker RSS {self.rss_before:.1f} MiB before, max {self.rss_max_down:.1f} "
            f"MiB down ({self.rss_max_down - self.rss_before:+.1f})"
        )


def check(shop: kit.AppProcess, service: str, figure: Callable[[str, str], None]) -> None:
    runs = [Measurement.of(*run_outage(shop, service))]
    if not (runs[0].latency_ok and runs[0].cpu_ok):  # a regression must show again in an independent second run
        runs.append(Measurement.of(*run_outage(shop, service)))

    # Export resumes: a request made after the restart reaches Jaeger.
    marker = kit.get(shop.url + "/probe/queries/?pg=1&mongo=0")
    started = time.monotonic()
    kit.wait_for(lambda: kit.trace_spans(marker.trace_id), lambda s: any(x.is_scope for x in s), 60, "the span made after the restart")
    resumed = time.monotonic() - started

    figure(
        f"{service} down",
        " | second run: ".join(run.describe() for run in runs) + f"; span made after restart in Jaeger after {resumed:.1f}s",
    )
    for run in runs:
        assert run.statuses == {200}
        assert run.slowest_s < EXPORT_TIMEOUT_S, "no request waited as long as one export attempt"
        assert run.rss_max_down - run.rss_before <= MEMORY_BOUND_MIB
    assert runs[-1].latency_ok
    assert runs[-1].cpu_ok


def test_collector_down_under_load(shop: kit.AppProcess, figure: Callable[[str, str], None]) -> None:
    """Collector stopped three times under load: latency and CPU unchanged, all 200, RSS bounded, export resumes."""
    check(shop, "collector", figure)


def test_jaeger_down_under_load(shop: kit.AppProcess, figure: Callable[[str, str], None]) -> None:
    """Jaeger (behind the collector) stopped three times under load: the app does not notice; export resumes."""
    check(shop, "jaeger", figure)
