#!/usr/bin/env python3
"""otel-budget local service stack: PostgreSQL, Redis, FerretDB, Jaeger, the
OpenTelemetry Collector and Prometheus, all on 127.0.0.1.

    python3 stack/stack.py up [service...]   start what is down (installs/builds first if needed)
    python3 stack/stack.py down [service...] stop what this script started
    python3 stack/stack.py status            table of service / address / state / pid / log
    python3 stack/stack.py build             install packages and build binaries only
    python3 stack/stack.py validate-config   check the collector (and Prometheus) configuration

Standard library only, so the system python3 runs it. Environment:
    OTEL_BUDGET_STACK_DIR  state, data, logs, pid files   (default /tmp/otel-budget-stack)
    OTEL_BUDGET_CACHE      built binaries and sources     (default ~/.cache/otel-budget)
See docs/stack.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK_DIR = os.path.abspath(os.environ.get("OTEL_BUDGET_STACK_DIR") or "/tmp/otel-budget-stack")
CACHE_DIR = os.path.abspath(
    os.environ.get("OTEL_BUDGET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "otel-budget")
)
BIN_DIR = os.path.join(CACHE_DIR, "bin")
SRC_DIR = os.path.join(CACHE_DIR, "src")
LOG_DIR = os.path.join(STACK_DIR, "logs")
HOST = "127.0.0.1"

PG_BIN = "/usr/lib/postgresql/15/bin"
FERRETDB_VERSION = "v1.24.2"
JAEGER_VERSION = "v1.76.0"
OCB_VERSION = "v0.161.0"

COLLECTOR_CONFIG = os.path.join(REPO_DIR, "collector-config", "config.yaml")
BUILDER_CONFIG = os.path.join(REPO_DIR, "collector-config", "builder-config.yaml")
JAEGER_CONFIG = os.path.join(REPO_DIR, "stack", "jaeger.yaml")
PROMETHEUS_TEMPLATE = os.path.join(REPO_DIR, "stack", "prometheus.yml")
ALERTS_FILE = os.path.join(REPO_DIR, "dashboards", "alerts.yml")

# First-build times measured on this project's machine (2 cores, cold Go module and build
# caches, other test suites running beside it); see docs/stack.md. Only for progress messages.
ESTIMATE = {
    "apt": "~1 min",
    "ferretdb": "~2.5-3.5 min",
    "jaeger": "~9-10.5 min",
    "ocb": "~1-2 min",
    "collector": "~6.5-8 min",
}

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[stack {time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


class StackError(Exception):
    pass


def fmt_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def sha12(*paths: str) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def tail(path: str, n: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    | " + line for line in lines[-n:]) or "    (log is empty)"


# --------------------------------------------------------------------------- probes

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy loopback


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def listener_pid(port: int) -> int | None:
    """pid of the process listening on 127.0.0.1/0.0.0.0:port (Linux /proc scan)."""
    inodes = set()
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            continue
    if not inodes:
        return None
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            for fd in os.listdir(fd_dir):
                try:
                    link = os.readlink(os.path.join(fd_dir, fd))
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(fd_dir.split("/")[2])
        except OSError:
            continue
    return None


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def pid_starttime(pid: int) -> str:
    """Start time of a process (clock ticks since boot): with the pid, identifies it even
    after a reboot or on a new machine where the same pid belongs to something else."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


# --- tiny BSON + MongoDB OP_MSG, enough for {ping: 1} / {hello: 1}

def _bson_encode(doc: dict) -> bytes:
    out = b""
    for k, v in doc.items():
        key = k.encode() + b"\0"
        if isinstance(v, bool):
            out += b"\x08" + key + (b"\x01" if v else b"\x00")
        elif isinstance(v, int):
            out += b"\x10" + key + struct.pack("<i", v)
        elif isinstance(v, str):
            s = v.encode() + b"\0"
            out += b"\x02" + key + struct.pack("<i", len(s)) + s
        else:
            raise TypeError(type(v))
    return struct.pack("<i", len(out) + 5) + out + b"\0"


def _bson_decode(buf: bytes, pos: int = 0) -> dict:
    (size,) = struct.unpack_from("<i", buf, pos)
    end, pos, doc = pos + size - 1, pos + 4, {}
    while pos < end:
        t = buf[pos]
        pos += 1
        z = buf.index(b"\0", pos)
        key, pos = buf[pos:z].decode(), z + 1
        if t == 0x01:
            (v,) = struct.unpack_from("<d", buf, pos); pos += 8
        elif t in (0x02, 0x0D, 0x0E):
            (n,) = struct.unpack_from("<i", buf, pos); v = buf[pos + 4:pos + 3 + n].decode("utf-8", "replace"); pos += 4 + n
        elif t in (0x03, 0x04):
            v = _bson_decode(buf, pos); pos += struct.unpack_from("<i", buf, pos)[0]
            if t == 0x04:
                v = list(v.values())
        elif t == 0x05:
            (n,) = struct.unpack_from("<i", buf, pos); v = buf[pos + 5:pos + 5 + n]; pos += 5 + n
        elif t == 0x07:
            v = buf[pos:pos + 12].hex(); pos += 12
        elif t == 0x08:
            v = buf[pos] == 1; pos += 1
        elif t in (0x09, 0x11, 0x12):
            (v,) = struct.unpack_from("<q", buf, pos); pos += 8
        elif t in (0x0A, 0xFF, 0x7F):
            v = None
        elif t == 0x10:
            (v,) = struct.unpack_from("<i", buf, pos); pos += 4
        elif t == 0x13:
            v = buf[pos:pos + 16]; pos += 16
        else:
            raise ValueError(f"unsupported BSON type 0x{t:02x}")
        doc[key] = v
    return doc


def mongo_command(port: int, cmd: dict, timeout: float = 2.0) -> dict:
    body = struct.pack("<I", 0) + b"\x00" + _bson_encode(cmd)  # flagBits, section kind 0
    header = struct.pack("<iiii", 16 + len(body), 1, 0, 2013)  # OP_MSG
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(header + body)
        data = b""
        while len(data) < 4 or len(data) < struct.unpack_from("<i", data)[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            data += chunk
    if struct.unpack_from("<i", data, 12)[0] != 2013 or data[20] != 0:
        raise ValueError("unexpected MongoDB reply")
    return _bson_decode(data, 21)


def redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


# --------------------------------------------------------------------------- installs & builds

_apt_updated = False


def _root_prefix() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    raise StackError("installing Debian packages needs root (or sudo); run as root or install them yourself")


def apt_install(packages: list[str], services: list[str]) -> None:
    """Install Debian packages (once), without letting their init scripts start daemons."""
    global _apt_updated
    t = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    pre = _root_prefix()
    policy = "/usr/sbin/policy-rc.d"
    own_policy = not os.path.exists(policy) and os.geteuid() == 0
    if own_policy:  # keep the packaged daemons from grabbing our ports
        with open(policy, "w") as f:
            f.write("#!/bin/sh\n# written by otel-budget stack/stack.py during apt-get install\nexit 101\n")
        os.chmod(policy, 0o755)
    try:
        if not _apt_updated:
            log("apt-get update (once)")
            run_logged(pre + ["apt-get", "update", "-q"], "apt", env=env)
            _apt_updated = True
        log(f"apt-get install {' '.join(packages)} (first run only, {ESTIMATE['apt']})")
        run_logged(pre + ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                          "-o", "Dpkg::Options::=--force-confold"] + packages, "apt", env=env)
    finally:
        if own_policy:
            os.unlink(policy)
    # If a package's daemon started anyway, stop it: the stack runs its own instances.
    for svc in services:
        if os.path.exists(f"/etc/init.d/{svc}"):
            subprocess.run(pre + ["service", svc, "stop"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
    log(f"installed {' '.join(packages)} in {fmt_secs(time.monotonic() - t)}")


def run_logged(cmd: list[str], name: str, cwd: str | None = None, env: dict | None = None,
               what: str | None = None) -> None:
    """Run a build/install command, output to $STACK_DIR/logs/build-<name>.log, with a
    heartbeat every 30 s so that CI logs show progress."""
    os.makedirs(LOG_DIR, exist_ok=True)
    path = os.path.join(LOG_DIR, f"build-{name}.log")
    t = time.monotonic()
    with open(path, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}   (cwd={cwd or os.getcwd()})\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(30):
                log(f"  ... still {what or name} ({fmt_secs(time.monotonic() - t)} elapsed, log {path})")

        th = threading.Thread(target=beat, daemon=True)
        th.start()
        rc = proc.wait()
        stop.set()
    if rc != 0:
        raise StackError(f"{' '.join(cmd[:3])}... failed (exit {rc}); log {path}, last lines:\n{tail(path, 40)}")


def go_exe() -> str:
    exe = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if not exe:
        raise StackError("Go is needed to build FerretDB, Jaeger and the collector (go >= 1.24): not found on PATH")
    return exe


def go_env() -> dict:
    env = dict(os.environ)
    # the collector builder runs `go` from PATH
    env["PATH"] = os.path.dirname(go_exe()) + os.pathsep + env.get("PATH", "")
    env.setdefault("HOME", pwd.getpwuid(os.getuid()).pw_dir)  # go needs it for GOCACHE/GOPATH
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def go_mod_dir(module: str, version: str) -> str:
    out = subprocess.run([go_exe(), "mod", "download", "-json", f"{module}@{version}"], env=go_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=CACHE_DIR, check=False)
    if out.returncode != 0:
        raise StackError(f"go mod download {module}@{version} failed:\n{out.stderr.decode()}{out.stdout.decode()}")
    return json.loads(out.stdout)["Dir"]


def writable_copy(src: str, dst: str) -> None:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    for root, dirs, files in os.walk(dst):
        for n in dirs + files:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o200)


def timed_build(label: str, key: str, fn) -> None:
    t = time.monotonic()
    log(f"building {label} (first run only, {ESTIMATE[key]} on 2 cores; about 21 min for all)...")
    fn()
    log(f"built {label} in {fmt_secs(time.monotonic() - t)}")


def ferretdb_bin() -> str:
    return os.path.join(BIN_DIR, f"ferretdb-{FERRETDB_VERSION}")


def build_ferretdb() -> str:
    out = ferretdb_bin()
    if os.path.exists(out):
        return out

    def do() -> None:
        # `go install .../cmd/ferretdb@v1.24.2` builds a binary that panics at start:
        # build/version/version.txt is generated in FerretDB's repository, absent from the module.
        src = os.path.join(SRC_DIR, f"ferretdb-{FERRETDB_VERSION}")
        writable_copy(go_mod_dir("github.com/FerretDB/FerretDB", FERRETDB_VERSION), src)
        with open(os.path.join(src, "build", "version", "version.txt"), "w") as f:
            f.write(FERRETDB_VERSION + "\n")
        with open(os.path.join(src, "build", "version", "package.txt"), "w") as f:
            f.write("otel-budget-stack\n")
        run_logged([go_exe(), "build", "-trimpath", "-ldflags=-s -w", "-o", out + ".tmp", "./cmd/ferretdb"],
                   "ferretdb", cwd=src, env=go_env(), what="building FerretDB")
        os.replace(out + ".tmp", out)

    timed_build(f"FerretDB {FERRETDB_VERSION}", "ferretdb", do)
    return out


def jaeger_bin() -> str:
    return os.path.join(BIN_DIR, f"jaeger-{JAEGER_VERSION}")


def build_jaeger() -> str:
    out = jaeger_bin()
    if os.path.exists(out):
        return out

    def do() -> None:
        # `go install .../cmd/jaeger@v1.76.0` is refused: Jaeger's go.mod has a replace
        # directive. Build from a writable copy of the module instead. The UI assets
        # (cmd/query/app/ui/actual) are not in the module; `//go:embed actual/*` needs at
        # least one file there, and without index.html.gz Jaeger serves its placeholder page.
        src = os.path.join(SRC_DIR, f"jaeger-{JAEGER_VERSION}")
        writable_copy(go_mod_dir("github.com/jaegertracing/jaeger", JAEGER_VERSION), src)
        with open(os.path.join(src, "cmd", "query", "app", "ui", "actual", "README.txt"), "w") as f:
            f.write("No UI assets in this build (otel-budget stack); the API under /api works.\n")
        run_logged([go_exe(), "build", "-trimpath", "-ldflags=-s -w", "-o", out + ".tmp", "./cmd/jaeger"],
                   "jaeger", cwd=src, env=go_env(), what="building Jaeger")
        os.replace(out + ".tmp", out)

    timed_build(f"Jaeger {JAEGER_VERSION}", "jaeger", do)
    return out


def ocb_bin() -> str:
    return os.path.join(BIN_DIR, f"ocb-{OCB_VERSION}")


def build_ocb() -> str:
    out = ocb_bin()
    if os.path.exists(out):
        return out

    def do() -> None:
        gobin = os.path.join(SRC_DIR, f"ocb-{OCB_VERSION}-gobin")
        os.makedirs(gobin, exist_ok=True)
        run_logged([go_exe(), "install", f"go.opentelemetry.io/collector/cmd/builder@{OCB_VERSION}"], "ocb",
                   cwd=CACHE_DIR, env=dict(go_env(), GOBIN=gobin), what="installing the collector builder")
        os.replace(os.path.join(gobin, "builder"), out)

    timed_build(f"collector builder (ocb) {OCB_VERSION}", "ocb", do)
    return out


def collector_bin() -> str:
    return os.path.join(BIN_DIR, f"otelcol-budget-{OCB_VERSION}-{sha12(BUILDER_CONFIG)}")


def build_collector() -> str:
    out = collector_bin()
    if os.path.exists(out):
        return out
    ocb = build_ocb()

    def do() -> None:
        work = os.path.join(SRC_DIR, os.path.basename(out))
        os.makedirs(work, exist_ok=True)
        with open(BUILDER_CONFIG) as f:
            lines = f.read().splitlines()
        build_dir = os.path.join(work, "_build")
        rendered = []
        for line in lines:  # point output_path at the cache (stdlib only: no YAML parser)
            if line.strip().startswith("output_path:"):
                line = line[: len(line) - len(line.lstrip())] + f"output_path: {build_dir}"
            rendered.append(line)
        cfg = os.path.join(work, "builder-config.yaml")
        with open(cfg, "w") as f:
            f.write("\n".join(rendered) + "\n")
        run_logged([ocb, f"--config={cfg}"], "collector", cwd=work, env=go_env(),
                   what="building the collector")
        with open(cfg) as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.strip().startswith("name:"))
        shutil.copy2(os.path.join(build_dir, name), out + ".tmp")
        os.replace(out + ".tmp", out)

    timed_build(f"OpenTelemetry Collector {OCB_VERSION} from collector-config/builder-config.yaml",
                "collector", do)
    return out


def missing_packages(names: list[str]) -> tuple[list[str], list[str]]:
    need, svcs = [], []
    if "postgres" in names and not os.path.exists(os.path.join(PG_BIN, "postgres")):
        need += ["postgresql-15"]
        svcs += ["postgresql"]
    if "redis" in names and not shutil.which("redis-server"):
        need += ["redis-server"]
        svcs += ["redis-server"]
    if "prometheus" in names and not (shutil.which("prometheus") and shutil.which("promtool")):
        need += ["prometheus"]
        svcs += ["prometheus"]
    return need, svcs


def ensure_packages(names: list[str]) -> None:
    need, svcs = missing_packages(names)
    if need:
        apt_install(need, svcs)


@contextlib.contextmanager
def build_lock():
    """One installer/builder at a time per cache (several `make stack` may run at once)."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, ".build.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another stack.py is installing/building (lock {f.name}); waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_built(names: list[str]) -> None:
    wanted = [n for n in ("ferretdb", "jaeger", "collector") if n in names]
    paths = {"ferretdb": ferretdb_bin, "jaeger": jaeger_bin, "collector": collector_bin}
    if all(os.path.exists(paths[n]()) for n in wanted) and not missing_packages(names)[0]:
        return  # fast path: nothing to do, no lock needed
    with build_lock():
        os.makedirs(BIN_DIR, exist_ok=True)
        os.makedirs(SRC_DIR, exist_ok=True)
        ensure_packages(names)
        if "ferretdb" in names:
            build_ferretdb()
        if "jaeger" in names:
            build_jaeger()
        if "collector" in names:
            build_collector()


# --------------------------------------------------------------------------- services

class Service:
    name = ""
    ports: tuple[int, ...] = ()
    address = ""
    start_timeout = 60.0
    stop_signal = signal.SIGTERM

    @property
    def log_path(self) -> str:
        return os.path.join(LOG_DIR, f"{self.name}.log")

    @property
    def pid_path(self) -> str:
        return os.path.join(LOG_DIR, f"{self.name}.pid")

    @property
    def fp_path(self) -> str:
        return os.path.join(LOG_DIR, f"{self.name}.fingerprint")

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create directories / render configs before start."""

    def health(self) -> str | None:
        """None when healthy, else a short reason."""
        raise NotImplementedError

    def after_healthy(self) -> None:
        """Idempotent provisioning once the service answers."""

    def fingerprint(self) -> str:
        return " ".join(self.command())

    def popen_kwargs(self) -> dict:
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
        pid = self.our_pid()
        if pid is None:
            with contextlib.suppress(OSError):
                os.unlink(self.pid_path)
            return "not running (started by stack.py)"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        how = "stopped"
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            how = "killed (did not stop in time)"
            time.sleep(0.3)
        with contextlib.suppress(OSError):
            os.unlink(self.pid_path)
        return f"{how} (pid {pid})"

    def failure(self, why: str) -> StackError:
        return StackError(f"{self.name} ({self.address}) is not healthy: {why}\n"
                          f"  log: {self.log_path}, last lines:\n{tail(self.log_path)}")


class Postgres(Service):
    name, ports, address = "postgres", (5432,), "127.0.0.1:5432"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for clients to leave

    @property
    def data(self) -> str:
        return os.path.join(STACK_DIR, "postgres", "data")

    @property
    def run_dir(self) -> str:
        return os.path.join(STACK_DIR, "postgres", "run")

    def command(self) -> list[str]:
        return [os.path.join(PG_BIN, "postgres"), "-D", self.data, "-p", "5432",
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.run_dir}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200", "-c", "logging_collector=off"]

    def popen_kwargs(self) -> dict:
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
    name, ports, address = "ferretdb", (27017,), "127.0.0.1:27017"
    start_timeout = 30.0

    def command(self) -> list[str]:
        base = os.path.join(STACK_DIR, "ferretdb")
        return [ferretdb_bin(), "--handler=sqlite", f"--sqlite-url=file:{base}/data/",
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
    name, ports, address = "jaeger", (16686, 14317, 14318), "OTLP 127.0.0.1:14317/14318, UI+API 127.0.0.1:16686"

    def command(self) -> list[str]:
        return [jaeger_bin(), f"--config={JAEGER_CONFIG}"]

    def fingerprint(self) -> str:
        return f"{jaeger_bin()} {sha12(JAEGER_CONFIG)}"

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


class Collector(Service):
    name, ports = "collector", (4317, 4318, 8889, 8888)
    address = "OTLP 127.0.0.1:4317/4318, prometheus exporter 127.0.0.1:8889, own metrics :8888"

    def command(self) -> list[str]:
        return [collector_bin(), f"--config={COLLECTOR_CONFIG}"]

    def fingerprint(self) -> str:
        return f"{collector_bin()} {sha12(COLLECTOR_CONFIG)}"

    def prepare(self) -> None:
        validate_collector_config()

    def health(self) -> str | None:
        try:
            code, body = http("POST", "http://127.0.0.1:4318/v1/traces", b"{}",
                              {"Content-Type": "application/json"})
            if code != 200:
                return f"POST :4318/v1/traces -> {code} {body[:200]!r}"
            code, _ = http("GET", "http://127.0.0.1:8888/metrics")
            if code != 200:
                return f"GET :8888/metrics (own telemetry) -> {code}"
        except OSError as e:
            return f"{e}"
        for port, what in ((4317, "OTLP gRPC"), (8889, "prometheus exporter")):
            if not port_open(port):
                return f"{what} port {port} closed"
        return None


class Prometheus(Service):
    name, ports, address = "prometheus", (9090,), "127.0.0.1:9090"

    @property
    def config_path(self) -> str:
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
        render_prometheus_config()
        code, body = http("POST", "http://127.0.0.1:9090/-/reload", b"", timeout=10)
        if code != 200:
            raise self.failure(f"POST /-/reload -> {code}: {body.decode(errors='replace')[:500]}")


SERVICES: list[Service] = [Postgres(), Redis(), FerretDB(), Jaeger(), Collector(), Prometheus()]
BY_NAME = {s.name: s for s in SERVICES}


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


def validate_collector_config() -> None:
    r = subprocess.run([collector_bin(), "validate", f"--config={COLLECTOR_CONFIG}"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, check=False)
    if r.returncode != 0:
        raise StackError(f"collector: `validate --config={COLLECTOR_CONFIG}` failed:\n{r.stdout.decode()}")


# --------------------------------------------------------------------------- commands

@contextlib.contextmanager
def stack_lock():
    os.makedirs(LOG_DIR, exist_ok=True)
    os.chmod(STACK_DIR, 0o755)  # the postgres user must be able to reach its data dir
    with open(os.path.join(STACK_DIR, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def pick(names: list[str]) -> list[Service]:
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    return [s for s in SERVICES if not names or s.name in names]


def cmd_up(names: list[str]) -> int:
    services = pick(names)
    t0 = time.monotonic()
    log(f"stack dir {STACK_DIR}, logs in {LOG_DIR}, binary cache {BIN_DIR}")
    with stack_lock():
        ensure_built([s.name for s in services])
        started: list[tuple[Service, int]] = []
        running: list[Service] = []
        errors: list[str] = []
        for s in services:
            pid = s.our_pid()
            reason = s.health()
            if reason is None:
                if pid and open_text(s.fp_path) != s.fingerprint():
                    log(f"{s.name:<10} binary or config changed since start: restarting ({s.stop()})")
                else:
                    owner = f"pid {pid}" if pid else f"not started by stack.py, pid {listener_pid(s.ports[0])}"
                    log(f"{s.name:<10} already running ({owner})")
                    running.append(s)
                    continue
            elif pid:
                log(f"{s.name:<10} process {pid} is up but not healthy yet ({reason}); waiting")
                started.append((s, pid))
                continue
            else:
                busy = [p for p in s.ports if port_open(p)]
                if busy:
                    other = listener_pid(busy[0])
                    errors.append(f"{s.name}: port {busy[0]} is taken by another process "
                                  f"(pid {other}: {pid_cmdline(other) if other else '?'}) that does not answer "
                                  f"as {s.name} ({reason}); stop it and run again")
                    continue
            try:
                pid = s.start()
            except StackError as e:
                errors.append(str(e))
                continue
            log(f"{s.name:<10} started (pid {pid}), log {s.log_path}")
            started.append((s, pid))
        for s, pid in started:
            err = wait_healthy(s, pid)
            if err:
                errors.append(err)
            else:
                try:
                    s.after_healthy()
                except StackError as e:
                    errors.append(str(e))
        for s in running:
            try:
                s.after_healthy()
                if isinstance(s, Prometheus):  # pick up edits of dashboards/alerts.yml
                    s.reload()
                    log(f"{s.name:<10} configuration re-rendered and reloaded")
            except StackError as e:
                errors.append(str(e))
    if errors:
        for e in errors:
            print(f"\nERROR: {e}", file=sys.stderr)
        print(f"\n{len(errors)} service(s) failed; see the logs above (python3 stack/stack.py status)",
              file=sys.stderr)
        return 1
    log(f"{len(services)} service(s) healthy, {len(started)} started, in {fmt_secs(time.monotonic() - t0)}")
    print_status(services)
    return 0


def open_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def wait_healthy(s: Service, pid: int) -> str | None:
    deadline = time.monotonic() + s.start_timeout
    reason = "not checked"
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return str(s.failure(f"the process (pid {pid}) exited during start-up"))
        reason = s.health()
        if reason is None:
            log(f"{s.name:<10} healthy")
            return None
        time.sleep(0.25)
    return str(s.failure(f"no healthy answer within {s.start_timeout:.0f}s (last check: {reason})"))


def cmd_down(names: list[str]) -> int:
    services = pick(names)
    with stack_lock():
        for s in reversed(services):
            log(f"{s.name:<10} {s.stop()}")
            if s.health() is None:
                pid = listener_pid(s.ports[0])
                log(f"{s.name:<10} note: something not started by stack.py still answers on "
                    f"{s.address} (pid {pid}); left alone")
    return 0


def print_status(services: list[Service]) -> None:
    rows = [("SERVICE", "ADDRESS", "STATE", "PID", "LOG")]
    for s in services:
        pid = s.our_pid()
        reason = s.health()
        if reason is None:
            state = "healthy" if pid else "healthy (not ours)"
            pid = pid or listener_pid(s.ports[0])
        elif pid:
            state = f"UNHEALTHY: {reason}"
        else:
            state = "down"
        rows.append((s.name, s.address, state, str(pid or "-"), s.log_path))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:4])) + "  " + r[4])


def cmd_status(names: list[str]) -> int:
    services = pick(names)
    print_status(services)
    return 0 if all(s.health() is None for s in services) else 3


def cmd_build(names: list[str]) -> int:
    t = time.monotonic()
    ensure_built([s.name for s in pick(names)])
    for path in (ferretdb_bin(), jaeger_bin(), collector_bin()):
        log(f"{'ok ' if os.path.exists(path) else 'missing'} {path}")
    log(f"build done in {fmt_secs(time.monotonic() - t)}")
    return 0


def cmd_validate(_: list[str]) -> int:
    ensure_built(["collector", "prometheus"])
    validate_collector_config()
    log(f"collector config OK: {COLLECTOR_CONFIG}")
    path = render_prometheus_config()
    log(f"prometheus config OK (promtool): {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "build", "validate-config"])
    ap.add_argument("services", nargs="*", help=f"subset of: {', '.join(BY_NAME)}")
    args = ap.parse_args(argv)
    fn = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "build": cmd_build,
          "validate-config": cmd_validate}[args.command]
    try:
        return fn(args.services)
    except StackError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `stack.py status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
