"""The services of the stack (six, or eight in the scaled topology): how each starts, stops, is checked and provisioned."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import struct
import subprocess
import time
from typing import Any

from .builds import binary, collector_bin, sha12
from .processes import pid_alive, pid_cmdline, pid_starttime, port_open, signal_and_wait
from .progress import StackError, log, tail
from .settings import (
    AGENT_CONFIG,
    ALERTS_FILE,
    COLLECTOR_CONFIG,
    GATEWAY_CONFIG,
    HOST,
    JAEGER_CONFIG,
    LOG_DIR,
    PG_BIN,
    PROMETHEUS_TEMPLATE,
    REPO_DIR,
    STACK_DIR,
)
from .wire import http, mongo_command, redis_command

__all__ = [
    "BY_NAME",
    "GATEWAYS",
    "SCALED_COLLECTORS",
    "SCALED_SERVICES",
    "SERVICES",
    "Agent",
    "AgentCopy",
    "Collector",
    "FerretDB",
    "Gateway",
    "Jaeger",
    "Postgres",
    "Prometheus",
    "Redis",
    "Service",
    "render_prometheus_config",
    "scaled_copy",
    "validate_collector_config",
]


class Service:
    """A service of the stack: its command, pid file, log, health check and provisioning."""

    name = ""
    ports: tuple[int, ...] = ()
    address = ""
    start_timeout = 60.0
    stop_signal = signal.SIGTERM

    @property
    def log_path(self) -> str:
        """The service's log, $STACK_DIR/logs/<name>.log."""
        return os.path.join(LOG_DIR, f"{self.name}.log")

    @property
    def pid_path(self) -> str:
        """The pid file `start` writes: pid and start time."""
        return os.path.join(LOG_DIR, f"{self.name}.pid")

    @property
    def fp_path(self) -> str:
        """What the service was started with (see `fingerprint`)."""
        return os.path.join(LOG_DIR, f"{self.name}.fingerprint")

    def command(self) -> list[str]:
        """The argv that runs the service."""
        raise NotImplementedError

    def needs(self) -> list[str]:
        """What `ensure_built` installs or builds for it: a service name of the build and package tables."""
        return [self.name]

    def prepare(self) -> None:
        """Create directories / render configs before start."""

    def health(self) -> str | None:
        """None when healthy, else a short reason."""
        raise NotImplementedError

    def after_healthy(self) -> None:
        """Idempotent provisioning once the service answers."""

    def fingerprint(self) -> str:
        """What a restart-worthy change (binary, config) changes; written beside the pid file."""
        return " ".join(self.command())

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra arguments of `subprocess.Popen` (user, environment)."""
        return {}

    # -- pid bookkeeping
    def our_pid(self) -> int | None:
        """pid from our pid file, if that very process (pid + start time) is still alive."""
        try:
            with open(self.pid_path) as f:
                fields = f.read().split()
            pid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return None
        if not pid_alive(pid):
            return None
        if len(fields) > 1:
            return pid if pid_starttime(pid) == fields[1] else None
        # pid file without start time (older stack.py): the process must run our binary
        argv0 = pid_cmdline(pid).split(" ", 1)[0]
        return pid if argv0 == self.command()[0] else None

    def start(self) -> int:
        """Start the service daemonised (own session, output to its log); returns its pid."""
        self.prepare()
        os.makedirs(LOG_DIR, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.command())}\n".encode())
            out.flush()
            proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                                    **self.popen_kwargs())
        with open(self.pid_path, "w") as f:
            f.write(f"{proc.pid} {pid_starttime(proc.pid)}\n")
        with open(self.fp_path, "w") as f:
            f.write(self.fingerprint())
        return proc.pid

    def stop(self, timeout: float = 20.0) -> str:
        """Stop the process `start` started (SIGKILL after `timeout`); says what happened."""
        pid = self.our_pid()
        if pid is None:
            with contextlib.suppress(OSError):
                os.unlink(self.pid_path)
            return "not running (started by stack.py)"
        how = "stopped"
        if not signal_and_wait(pid, self.stop_signal, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            how = "killed (did not stop in time)"
            time.sleep(0.3)
        with contextlib.suppress(OSError):
            os.unlink(self.pid_path)
        return f"{how} (pid {pid})"

    def failure(self, why: str) -> StackError:
        """An error naming the service, its address, its log and the log's last lines."""
        return StackError(f"{self.name} ({self.address}) is not healthy: {why}\n"
                          f"  log: {self.log_path}, last lines:\n{tail(self.log_path)}")


class Postgres(Service):
    """PostgreSQL 15: own cluster in the stack dir, run as the `postgres` user, trust auth on loopback."""

    name, ports, address = "postgres", (5432,), "127.0.0.1:5432"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for clients to leave

    @property
    def data(self) -> str:
        """The cluster's data directory."""
        return os.path.join(STACK_DIR, "postgres", "data")

    @property
    def run_dir(self) -> str:
        """The directory of its Unix socket."""
        return os.path.join(STACK_DIR, "postgres", "run")

    def command(self) -> list[str]:
        return [os.path.join(PG_BIN, "postgres"), "-D", self.data, "-p", "5432",
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.run_dir}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200", "-c", "logging_collector=off"]

    def popen_kwargs(self) -> dict[str, Any]:
        pw = pwd.getpwnam("postgres")
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
                "env": dict(os.environ, HOME=pw.pw_dir, USER="postgres", LOGNAME="postgres")}

    def prepare(self) -> None:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise StackError("there is no `postgres` user (install postgresql-15)") from None
        base = os.path.join(STACK_DIR, "postgres")
        for d in (base, self.run_dir):
            os.makedirs(d, exist_ok=True)
            os.chown(d, pw.pw_uid, pw.pw_gid)
        lock = os.path.join(self.data, "postmaster.pid")
        if os.path.exists(lock) and not port_open(5432):
            # Left by a postgres that was killed (session end, reboot): postgres refuses to
            # start while the pid written there belongs to any live process.
            try:
                with open(lock) as f:
                    old_pid = int(f.readline())
            except (OSError, ValueError):
                old_pid = 0
            if not (pid_alive(old_pid) and "postgres" in pid_cmdline(old_pid)):
                os.unlink(lock)
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            if os.path.exists(self.data):
                shutil.rmtree(self.data)
            log("postgres: initdb (trust authentication, loopback only)")
            r = subprocess.run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "postgres",
                                "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=base, check=False,
                               **self.popen_kwargs())
            if r.returncode != 0:
                raise StackError(f"postgres: initdb failed:\n{r.stdout.decode()}")

    def health(self) -> str | None:
        if not port_open(5432):
            return "port 5432 closed"
        r = subprocess.run([os.path.join(PG_BIN, "psql"), "-h", HOST, "-p", "5432", "-U", "postgres",
                            "-d", "postgres", "-XtAc", "SELECT 1"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=10, check=False,
                           env=dict(os.environ, PGCONNECT_TIMEOUT="3"))
        out = r.stdout.decode().strip()
        return None if r.returncode == 0 and out == "1" else f"SELECT 1 failed: {out[-300:]}"

    def after_healthy(self) -> None:
        sql = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'otel_budget') THEN
    CREATE ROLE otel_budget LOGIN PASSWORD 'otel_budget' CREATEDB;
  ELSE
    ALTER ROLE otel_budget LOGIN PASSWORD 'otel_budget' CREATEDB;
  END IF;
END $$;
SELECT 'CREATE DATABASE shop OWNER otel_budget'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'shop')\\gexec
"""
        r = subprocess.run([os.path.join(PG_BIN, "psql"), "-h", HOST, "-p", "5432", "-U", "postgres",
                            "-d", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=sql.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30, check=False)
        if r.returncode != 0:
            raise self.failure(f"creating user/database otel_budget/shop failed:\n{r.stdout.decode()}"
                               "  (is this postgres on :5432 the stack's? it needs trust auth for the "
                               "`postgres` user on 127.0.0.1)")


class Redis(Service):
    """Redis without persistence (the Celery broker and result backend)."""

    name, ports, address = "redis", (6379,), "127.0.0.1:6379"
    start_timeout = 20.0

    def command(self) -> list[str]:
        return [shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", HOST, "--port", "6379",
                "--dir", os.path.join(STACK_DIR, "redis"), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]

    def prepare(self) -> None:
        os.makedirs(os.path.join(STACK_DIR, "redis"), exist_ok=True)

    def health(self) -> str | None:
        try:
            reply = redis_command(6379, "PING")
        except OSError as e:
            return f"PING: {e}"
        return None if reply.startswith(b"+PONG") else f"PING answered {reply[:80]!r}"


class FerretDB(Service):
    """FerretDB (MongoDB wire protocol) on SQLite files in the stack dir."""

    name, ports, address = "ferretdb", (27017,), "127.0.0.1:27017"
    start_timeout = 30.0

    def command(self) -> list[str]:
        base = os.path.join(STACK_DIR, "ferretdb")
        return [binary("ferretdb"), "--handler=sqlite", f"--sqlite-url=file:{base}/data/",
                f"--listen-addr={HOST}:27017", "--telemetry=disable", "--debug-addr=-",
                f"--state-dir={base}/state", "--log-level=info"]

    def prepare(self) -> None:
        for d in ("data", "state"):
            os.makedirs(os.path.join(STACK_DIR, "ferretdb", d), exist_ok=True)

    def health(self) -> str | None:
        try:
            reply = mongo_command(27017, {"ping": 1, "$db": "admin"})
        except (OSError, ValueError, struct.error) as e:
            return f"ping: {e}"
        return None if reply.get("ok") == 1 else f"ping answered {reply}"


class Jaeger(Service):
    """Jaeger v2 with in-memory storage, configured by stack/jaeger.yaml."""

    name, ports, address = "jaeger", (16686, 14317, 14318), "OTLP 127.0.0.1:14317/14318, UI+API 127.0.0.1:16686"

    def command(self) -> list[str]:
        return [binary("jaeger"), f"--config={JAEGER_CONFIG}"]

    def fingerprint(self) -> str:
        return f"{binary('jaeger')} {sha12(JAEGER_CONFIG)}"

    def health(self) -> str | None:
        try:
            code, body = http("GET", "http://127.0.0.1:16686/api/services")
            if code != 200 or "data" not in json.loads(body):
                return f"GET /api/services -> {code} {body[:200]!r}"
        except (OSError, ValueError) as e:
            return f"GET /api/services: {e}"
        if not port_open(14317):
            return "OTLP gRPC port 14317 closed"
        return None


def telemetry_health(metrics_port: int, service_name: str) -> str | None:
    """None when a collector's own telemetry on `metrics_port` answers as `service_name`.

    Each collector config sets its own `service.telemetry.resource` `service.name`, exposed as
    `target_info`: the default collector, the agent (same ports) and the gateways are told apart.
    """
    code, body = http("GET", f"http://127.0.0.1:{metrics_port}/metrics")
    if code != 200:
        return f"GET :{metrics_port}/metrics (own telemetry) -> {code}"
    if f'service_name="{service_name}"'.encode() not in body:
        return f"the collector on :{metrics_port} is not {service_name} (see target_info in its /metrics)"
    return None


class Collector(Service):
    """The OpenTelemetry Collector built from builder-config.yaml, configured by collector-config/config.yaml."""

    name, ports = "collector", (4317, 4318, 8889, 8888)
    address = "OTLP 127.0.0.1:4317/4318, prometheus exporter 127.0.0.1:8889, own metrics :8888"
    config = COLLECTOR_CONFIG
    telemetry_name = "otelcol-budget"  # the builder's dist name, the default `service.name`

    def needs(self) -> list[str]:
        return ["collector"]  # the agent runs the same binary

    def command(self) -> list[str]:
        return [collector_bin(), f"--config={self.config}"]

    def fingerprint(self) -> str:
        return f"{collector_bin()} {sha12(self.config)}"

    def prepare(self) -> None:
        validate_collector_config(self.config)

    def health(self) -> str | None:
        grpc, otlp_http, exporter, telemetry = self.ports
        try:
            code, body = http("POST", f"http://127.0.0.1:{otlp_http}/v1/traces", b"{}",
                              {"Content-Type": "application/json"})
            if code != 200:
                return f"POST :{otlp_http}/v1/traces -> {code} {body[:200]!r}"
            reason = telemetry_health(telemetry, self.telemetry_name)
            if reason:
                return reason
        except OSError as e:
            return f"{e}"
        for port, what in ((grpc, "OTLP gRPC"), (exporter, "prometheus exporter")):
            if not port_open(port):
                return f"{what} port {port} closed"
        return None


class Agent(Collector):
    """The scaled topology's agent: config.yaml's ports and counts, traces load-balanced to the gateways."""

    name = "agent"
    address = "OTLP 127.0.0.1:4317/4318, prometheus exporter 127.0.0.1:8889, own metrics :8888 -> gateways"
    config = AGENT_CONFIG
    telemetry_name = "otelcol-budget-agent"


class AgentCopy(Agent):
    """agent.yaml with every port shifted by `offset`, sending to `gateways`: a scaled topology beside the stack's.

    The tests run one (tests/collector) so that the shared collector on 4317/8889 is never swapped out.
    Its rendered config lives in the stack's log dir, beside its pid file.
    """

    def __init__(self, offset: int, gateways: list[Gateway], *, prefix: str = "test-") -> None:
        self.name = f"{prefix}agent"
        self.offset = offset
        grpc, otlp_http, exporter, telemetry = Collector.ports
        self.ports = (grpc + offset, otlp_http + offset, exporter + offset, telemetry + offset)
        self.gateways = gateways
        self.address = (f"OTLP 127.0.0.1:{self.ports[0]}/{self.ports[1]}, prometheus exporter "
                        f"127.0.0.1:{self.ports[2]}, own metrics :{self.ports[3]} -> {', '.join(g.name for g in gateways)}")

    @property
    def config(self) -> str:  # type: ignore[override]
        return os.path.join(LOG_DIR, f"{self.name}.yaml")

    def render(self) -> str:
        """agent.yaml's text with this copy's ports (the endpoints are written out literally there)."""
        with open(AGENT_CONFIG) as f:
            text = f.read()
        grpc, otlp_http, exporter, telemetry = self.ports
        for old, new in (("127.0.0.1:4317", grpc), ("127.0.0.1:4318", otlp_http), ("127.0.0.1:8889", exporter),
                         ("port: 8888", telemetry), ("127.0.0.1:4417", self.gateways[0].ports[0]),
                         ("127.0.0.1:4427", self.gateways[1].ports[0])):
            if old not in text:
                raise StackError(f"{AGENT_CONFIG} no longer says {old!r}: AgentCopy cannot shift its ports")
            text = text.replace(old, old[:-4] + str(new))
        return text.replace("127.0.0.1:8888", f"127.0.0.1:{telemetry}")  # in a comment only

    def fingerprint(self) -> str:
        return f"{collector_bin()} {sha12(AGENT_CONFIG)} {self.ports}"

    def prepare(self) -> None:
        os.makedirs(LOG_DIR, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(self.render())
        validate_collector_config(self.config)


def scaled_copy(offset: int = 20000, prefix: str = "test-") -> list[Service]:
    """The scaled topology's three collectors on the shared ports + `offset`, in start order (gateways first)."""
    gateways = [Gateway(g.number, g.ports[0] + offset, g.ports[1] + offset, prefix=prefix) for g in GATEWAYS]
    return [*gateways, AgentCopy(offset, gateways, prefix=prefix)]


class Gateway(Service):
    """A tail-sampling gateway collector (collector-config/gateway.yaml) on its own pair of ports."""

    def __init__(self, number: int, otlp_port: int, metrics_port: int, *, prefix: str = "") -> None:
        self.name = f"{prefix}gateway{number}"
        self.number = number
        self.ports = (otlp_port, metrics_port)
        self.address = f"OTLP 127.0.0.1:{otlp_port} (gRPC), own metrics :{metrics_port} -> Jaeger"

    @property
    def env(self) -> dict[str, str]:
        """The variables gateway.yaml reads its ports from."""
        return {"GATEWAY_OTLP_PORT": str(self.ports[0]), "GATEWAY_METRICS_PORT": str(self.ports[1])}

    def needs(self) -> list[str]:
        return ["collector"]

    def command(self) -> list[str]:
        return [collector_bin(), f"--config={GATEWAY_CONFIG}"]

    def fingerprint(self) -> str:
        return f"{collector_bin()} {sha12(GATEWAY_CONFIG)} {self.ports}"

    def popen_kwargs(self) -> dict[str, Any]:
        return {"env": dict(os.environ, **self.env)}

    def prepare(self) -> None:
        validate_collector_config(GATEWAY_CONFIG, self.env)

    def health(self) -> str | None:
        if not port_open(self.ports[0]):
            return f"OTLP gRPC port {self.ports[0]} closed"
        try:
            return telemetry_health(self.ports[1], "otelcol-budget-gateway")
        except OSError as e:
            return f"{e}"


class Prometheus(Service):
    """Prometheus scraping the collector, with dashboards/alerts.yml and rules.d/*.yml."""

    name, ports, address = "prometheus", (9090,), "127.0.0.1:9090"

    @property
    def config_path(self) -> str:
        """The rendered prometheus.yml in the stack dir."""
        return os.path.join(STACK_DIR, "prometheus", "prometheus.yml")

    def command(self) -> list[str]:
        return [shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={self.config_path}",
                f"--storage.tsdb.path={os.path.join(STACK_DIR, 'prometheus', 'data')}",
                "--storage.tsdb.retention.time=2d", f"--web.listen-address={HOST}:9090",
                "--web.enable-lifecycle"]

    def fingerprint(self) -> str:
        return " ".join(self.command())

    def prepare(self) -> None:
        render_prometheus_config()

    def health(self) -> str | None:
        try:
            code, body = http("GET", "http://127.0.0.1:9090/-/ready")
        except OSError as e:
            return f"GET /-/ready: {e}"
        return None if code == 200 else f"GET /-/ready -> {code} {body[:200]!r}"

    def reload(self) -> None:
        """Re-render the configuration and make the running Prometheus load it."""
        render_prometheus_config()
        code, body = http("POST", "http://127.0.0.1:9090/-/reload", b"", timeout=10)
        if code != 200:
            raise self.failure(f"POST /-/reload -> {code}: {body.decode(errors='replace')[:500]}")


SERVICES: list[Service] = [Postgres(), Redis(), FerretDB(), Jaeger(), Collector(), Prometheus()]
# The scaled topology (`up --scaled`) runs these instead of `collector`, in this start order.
GATEWAYS: list[Gateway] = [Gateway(1, 4417, 8890), Gateway(2, 4427, 8891)]
SCALED_COLLECTORS: list[Service] = [*GATEWAYS, Agent()]
SCALED_SERVICES: list[Service] = [x for s in SERVICES for x in (SCALED_COLLECTORS if s.name == "collector" else [s])]
BY_NAME = {s.name: s for s in SERVICES + SCALED_COLLECTORS}


def render_prometheus_config() -> str:
    """Render stack/prometheus.yml with absolute paths into the stack dir and check it."""
    base = os.path.join(STACK_DIR, "prometheus")
    os.makedirs(os.path.join(base, "data"), exist_ok=True)
    os.makedirs(os.path.join(STACK_DIR, "rules.d"), exist_ok=True)
    if not os.path.exists(ALERTS_FILE):  # dashboards/alerts.yml is written elsewhere; keep Prometheus startable
        os.makedirs(os.path.dirname(ALERTS_FILE), exist_ok=True)
        with open(ALERTS_FILE, "w") as f:
            f.write("# Placeholder written by stack/stack.py; the real alert rules replace it.\ngroups: []\n")
    with open(PROMETHEUS_TEMPLATE) as f:
        text = f.read().replace("@REPO_DIR@", REPO_DIR).replace("@STACK_DIR@", STACK_DIR)
    path = os.path.join(base, "prometheus.yml")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    promtool = shutil.which("promtool")
    if promtool:
        r = subprocess.run([promtool, "check", "config", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, check=False)
        if r.returncode != 0:
            raise StackError(f"prometheus: `promtool check config {path}` failed:\n{r.stdout.decode()}")
    return path


def validate_collector_config(config: str = COLLECTOR_CONFIG, env: dict[str, str] | None = None) -> None:
    """Run the collector's `validate` on a config (collector-config/config.yaml); raises when it fails."""
    r = subprocess.run([collector_bin(), "validate", f"--config={config}"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, check=False, env=dict(os.environ, **(env or {})))
    if r.returncode != 0:
        raise StackError(f"collector: `validate --config={config}` failed:\n{r.stdout.decode()}")
