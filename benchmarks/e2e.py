"""End to end: the example shop's `probe/queries/?pg=20&mongo=5` under gunicorn, driven by wrk.

Five gunicorn servers run side by side on their own ports (this module starts and stops them; it
never touches the shop that `examples/shop/processes.py` runs on :8000):

- `none`: plain gunicorn, no OpenTelemetry;
- `otel`: `opentelemetry-instrument gunicorn`, otel-budget installed but `OTEL_BUDGET_ENABLED=false`;
- `otel+budget`: the same with otel-budget on (the shop's budgets.toml);
- `otel+budget,no-metrics`: the same with `OTEL_BUDGET_METRICS=false` (spans and events, no histograms);
- `otel (control)`: a second, identical `otel` server. Its ratio to `otel` is the noise floor of
  this measurement on this machine: an effect smaller than its spread cannot be told from zero.

wrk (one thread, a fixed number of connections) loads one server at a time, in bursts of a few
seconds; the configurations take turns burst by burst, in a rotated order, so a busy machine slows
them alike. A round is `duration` seconds per configuration; its latency percentiles come from the
merged per-request latency histograms of its bursts. Per round the ratios are taken against `otel` of
the same round. Besides requests/s and latency, the CPU time the gunicorn processes used per request
is read from /proc (steadier than wall time on a shared box).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import summary

REPO = Path(__file__).resolve().parent.parent
SHOP_DIR = REPO / "examples" / "shop"
HOST = "127.0.0.1"
CONFIGS = ("none", "otel", "otel+budget", "otel+budget,no-metrics", "otel (control)")
BASELINE = "otel"
# `--e2e-sampling R`: head sampling at ratio R (parentbased_traceidratio). Plain OTel at 100 % and at R,
# otel-budget at R (every request still tallied, over-budget traces exported), and a control at R.
# Each exports OTLP to a sink collector of the run's own (debug exporter, nothing kept), so what the
# servers pay for exporting is real and the shared collector and Jaeger see none of it.
SAMPLING_CONFIGS = ("otel 100%", "otel {r}", "otel+budget {r}", "otel {r} (control)")
SAMPLING_BASELINE = "otel {r}"
SINK_CONFIG = """
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {host}:{port}
exporters:
  debug:
    verbosity: basic
    sampling_initial: 1
    sampling_thereafter: 100000
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces: {{receivers: [otlp], exporters: [debug]}}
    metrics: {{receivers: [otlp], exporters: [debug]}}
"""
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# wrk prints one JSON line when done: totals and the latency histogram (µs -> count), so the
# bursts of a round can be merged into exact percentiles.
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  local histogram = {}
  for i = 1, summary.requests do
    local value, count = latency(i)
    if value == 0 or count == 0 then break end
    histogram[#histogram + 1] = string.format('[%d, %d]', value, count)
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, "histogram": [%s]}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    table.concat(histogram, ', ')))
end
"""


def percentile(histogram: dict[int, int], p: float) -> float:
    """The `p`-th percentile (nearest rank) of a value -> count histogram."""
    total = sum(histogram.values())
    rank = max(1, -(-total * p // 100))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float("nan")


def _port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its live children (gunicorn master + workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1] is the parent pid
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


class Server:
    """One gunicorn serving the shop on its own port, in its own session (stopped as a group)."""

    def __init__(
        self, config: str, port: int, *, workers: int, threads: int, exporter: str, log_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        sys.path.insert(0, str(SHOP_DIR))
        from processes import ShopProcesses  # the shop's own environment: settings, OTLP, budgets

        self.config = config
        self.port = port
        bin_dir = Path(sys.executable).parent
        env = ShopProcesses().app_env("bench-" + "".join(c if c.isalnum() else "-" for c in config).strip("-"))
        env.update(OTEL_TRACES_EXPORTER=exporter, OTEL_METRICS_EXPORTER=exporter)
        argv = [
            str(bin_dir / "gunicorn"), "shop.wsgi", "--bind", f"{HOST}:{port}",
            "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
            "--timeout", "60", "--graceful-timeout", "5", "--error-logfile", "-",
        ]  # fmt: skip
        if config == "none":
            env = {k: v for k, v in env.items() if not k.startswith(("OTEL_", "OTEL_BUDGET_"))}
        else:
            argv.insert(0, str(bin_dir / "opentelemetry-instrument"))
            # The same install either way; only the environment differs.
            env["OTEL_BUDGET_ENABLED"] = "true" if config.startswith("otel+budget") else "false"
            env["OTEL_BUDGET_METRICS"] = "false" if config == "otel+budget,no-metrics" else "true"
            env.update(extra_env or {})
        self.log_path = log_dir / f"gunicorn-{port}.log"
        if _port_open(port):
            raise RuntimeError(f"port {port} is taken; pick others with --e2e-port")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, env=env, cwd=SHOP_DIR, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with _OPENER.open(f"{self.url}/healthz/", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"gunicorn {self.config} on :{self.port} did not get healthy:\n" + "\n".join(tail))

    def cpu_seconds(self) -> float:
        return _process_tree_cpu(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def wrk(url: str, *, seconds: float, connections: int, script: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script), url],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class Tally:
    """One configuration's bursts within a round, added up."""

    def __init__(self) -> None:
        self.requests = self.errors = 0
        self.seconds = self.cpu_seconds = 0.0
        self.histogram: dict[int, int] = {}

    def add(self, burst: dict[str, Any], cpu_seconds: float) -> None:
        self.requests += burst["requests"]
        self.errors += burst["socket_errors"] + burst["non_2xx"]
        self.seconds += burst["duration_us"] / 1e6
        self.cpu_seconds += cpu_seconds
        for value, count in burst["histogram"]:
            self.histogram[value] = self.histogram.get(value, 0) + count

    def result(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": self.requests / self.seconds,
            "p50_us": percentile(self.histogram, 50),
            "p90_us": percentile(self.histogram, 90),
            "p99_us": percentile(self.histogram, 99),
            "server_cpu_us_per_request": self.cpu_seconds / max(1, self.requests) * 1e6,
        }


def setup_shop() -> None:
    """Migrate and seed the shop's database (idempotent), as the shop's README says."""
    env = dict(os.environ, PYTHONPATH=str(SHOP_DIR), DJANGO_SETTINGS_MODULE="shop.settings")
    subprocess.run(
        [sys.executable, str(SHOP_DIR / "manage.py"), "setup_shop"], check=True, env=env, cwd=SHOP_DIR,
        capture_output=True,
    )  # fmt: skip


class Sink:
    """A collector of the run's own that receives OTLP and keeps nothing (the sampling mode's export target)."""

    def __init__(self, port: int, log_dir: Path) -> None:
        sys.path.insert(0, str(REPO))
        from stack import collector_bin  # the stack's collector binary (make stack builds it)

        config = log_dir / "sink.yaml"
        config.write_text(SINK_CONFIG.format(host=HOST, port=port))
        if _port_open(port):
            raise RuntimeError(f"port {port} is taken; pick others with --e2e-port")
        with open(log_dir / "sink.log", "ab") as log:
            self.process = subprocess.Popen([collector_bin(), f"--config={config}"], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 30
        while not _port_open(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sink collector did not listen on {port}: see {log_dir / 'sink.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def start_sink(port: int, log_dir: Path) -> Sink:
    return Sink(port, log_dir)


def run(
    *,
    rounds: int = 5,
    duration: float = 20.0,
    burst: int = 4,
    connections: int = 8,
    pg: int = 20,
    mongo: int = 5,
    port: int = 8101,
    workers: int = 2,
    threads: int = 4,
    exporter: str = "auto",
    sampling: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`rounds` rounds of `duration` s per configuration, in `burst`-second turns; medians and spreads over rounds.

    With `sampling`, the configurations are SAMPLING_CONFIGS at that head-sampling ratio.
    """
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk not found: apt-get install wrk")
    for name, service_port in (("PostgreSQL", 5432), ("FerretDB", 27017)):
        if not _port_open(service_port):
            raise RuntimeError(f"{name} is not on {HOST}:{service_port}: make stack")
    if exporter == "auto":
        exporter = "otlp" if _port_open(4317) else "none"
    configs, baseline, collector_port = CONFIGS, BASELINE, 4317
    extra_env: dict[str, dict[str, str]] = {}
    if sampling is not None:
        label = f"{sampling:.0%}" if sampling >= 0.01 else f"{sampling:.1%}"
        configs = tuple(c.format(r=label) for c in SAMPLING_CONFIGS)
        baseline, exporter, collector_port = SAMPLING_BASELINE.format(r=label), "otlp", port + len(configs)
        for config in configs:
            extra_env[config] = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{collector_port}",
                                 "OTEL_TRACES_SAMPLER": "parentbased_always_on" if "100%" in config
                                 else "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(sampling)}  # fmt: skip
    setup_shop()
    log_dir = Path(tempfile.mkdtemp(prefix="otel-budget-bench-"))
    script = log_dir / "report.lua"
    script.write_text(WRK_SCRIPT)
    path = f"/probe/queries/?pg={pg}&mongo={mongo}"
    servers: dict[str, Server] = {}
    sink = start_sink(collector_port, log_dir) if sampling is not None else None
    try:
        for index, config in enumerate(configs):
            servers[config] = Server(
                config, port + index, workers=workers, threads=threads, exporter=exporter, log_dir=log_dir,
                extra_env=extra_env.get(config),
            )  # fmt: skip
        for server in servers.values():
            server.wait_healthy()
        for server in servers.values():  # warm-up: imports, connections, caches
            wrk(server.url + path, seconds=3, connections=connections, script=script)
        samples: dict[str, list[dict[str, float]]] = {config: [] for config in configs}
        discarded = 0
        number = 0
        turns = max(1, round(duration / burst))
        while number < rounds:
            tallies = {config: Tally() for config in configs}
            collector_ok = True
            for turn in range(turns):
                shift = (number + turn) % len(configs)
                for config in configs[shift:] + configs[:shift]:  # rotate: no configuration always first
                    server = servers[config]
                    collector_ok = collector_ok and (exporter != "otlp" or _port_open(collector_port))
                    cpu0 = server.cpu_seconds()
                    result = wrk(server.url + path, seconds=burst, connections=connections, script=script)
                    tallies[config].add(result, server.cpu_seconds() - cpu0)
                    collector_ok = collector_ok and (exporter != "otlp" or _port_open(collector_port))
            if not collector_ok:  # the shared collector went away (someone's outage test): export cost changed
                discarded += 1
                log(f"  e2e round {number + 1}: the collector was down during the round; discarded, repeating")
                if discarded > 2 * rounds:
                    raise RuntimeError("the collector at 127.0.0.1:4317 keeps going down; try --e2e-exporter none")
                time.sleep(5)
                continue
            for config, tally in tallies.items():
                samples[config].append({**tally.result(), "loadavg_1m": os.getloadavg()[0]})
            number += 1
            log(
                f"  e2e round {number}/{rounds}: "
                + ", ".join(f"{c} {samples[c][-1]['requests_per_s']:.1f} req/s" for c in configs)
            )
    finally:
        for server in servers.values():
            server.stop()
        if sink is not None:
            sink.stop()
    metrics = ("requests_per_s", "p50_us", "p99_us", "server_cpu_us_per_request")
    ratios: dict[str, dict[str, Any]] = {}
    for config in configs:
        if config == baseline:
            continue
        ratios[config] = {
            metric: summary([s[metric] / b[metric] for s, b in zip(samples[config], samples[baseline])])
            for metric in metrics
        }
    return {
        "url": path,
        "rounds": rounds,
        "duration_s": duration,
        "connections": connections,
        "gunicorn": {"workers": workers, "worker_class": "gthread", "threads": threads},
        "exporter": exporter,
        "discarded_rounds": discarded,
        "burst_s": burst,
        "sampling": sampling,
        "baseline": baseline,
        "errors": {c: sum(s["errors"] for s in samples[c]) for c in configs},
        "configs": {c: {m: summary([s[m] for s in samples[c]]) for m in metrics} for c in configs},
        "ratios": ratios,
        "samples": samples,
        "logs": str(log_dir),
    }
