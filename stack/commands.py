"""otel-budget local service stack: PostgreSQL, Redis, FerretDB, Jaeger, the
OpenTelemetry Collector and Prometheus, all on 127.0.0.1.

    python3 stack/stack.py up [service...]   start what is down (installs/builds first if needed)
    python3 stack/stack.py down [service...] stop what this script started
    python3 stack/stack.py status            table of service / address / state / pid / log
    python3 stack/stack.py build             install packages and build binaries only
    python3 stack/stack.py tools             install what the tests need beside it (chromium)
    python3 stack/stack.py validate-config   check the collector (and Prometheus) configuration
    --scaled   the scaled topology: agent + 2 tail-sampling gateways instead of the collector;
               `up --scaled` swaps them in, `up` swaps the collector back, `down --scaled`
               stops the agent and the gateways only

Standard library only, so the system python3 runs it. Environment:
    OTEL_BUDGET_STACK_DIR  state, data, logs, pid files   (default /tmp/otel-budget-stack)
    OTEL_BUDGET_CACHE      built binaries and sources     (default ~/.cache/otel-budget)
See docs/stack.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .builds import GO_BINARIES, build_lock, ensure_built
from .packages import TEST_TOOLS, ensure_packages, missing_packages
from .processes import listener_pid, pid_alive, pid_cmdline, port_open
from .progress import StackError, fmt_secs, log
from .services import (
    BY_NAME,
    GATEWAYS,
    SCALED_COLLECTORS,
    SCALED_SERVICES,
    SERVICES,
    Prometheus,
    Service,
    render_prometheus_config,
    validate_collector_config,
)
from .settings import AGENT_CONFIG, BIN_DIR, COLLECTOR_CONFIG, GATEWAY_CONFIG, LOG_DIR, STACK_DIR

__all__ = ["cmd_build", "cmd_down", "cmd_status", "cmd_up", "cmd_validate", "main"]


@contextlib.contextmanager
def stack_lock() -> Iterator[None]:
    """One `up`/`down` at a time per stack dir."""
    os.makedirs(LOG_DIR, exist_ok=True)
    os.chmod(STACK_DIR, 0o755)  # the postgres user must be able to reach its data dir
    with open(os.path.join(STACK_DIR, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def topology(scaled: bool) -> list[Service]:
    """Every service of the default (single collector) or the scaled topology, in start order."""
    return SCALED_SERVICES if scaled else SERVICES


def pick(names: list[str], scaled: bool = False) -> list[Service]:
    """The services named (the whole topology when none), in start order."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    if names:
        return [s for s in SERVICES + SCALED_COLLECTORS if s.name in names]
    return topology(scaled)


def other_collectors(names: list[str], scaled: bool) -> list[Service]:
    """What a whole topology replaces (`up` stops the gateways too); nothing for named services."""
    return [] if names else [BY_NAME["collector"]] if scaled else SCALED_COLLECTORS


def swap_out(services: list[Service], also: list[Service]) -> None:
    """Stop the running services (ours) that `services` replace: those holding a port one of them
    needs (the collector and the agent share theirs), and those of `also`."""
    wanted = {s.name for s in services}
    ports = {p for s in services for p in s.ports}
    for other in SERVICES + SCALED_COLLECTORS:
        if other.name not in wanted and (other in also or ports & set(other.ports)) and other.our_pid():
            log(f"{other.name:<10} swapped out of the topology: {other.stop()}")


def open_text(path: str) -> str:
    """A file's text; empty when it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


@dataclass
class UpRun:
    """What one `up` found and did: services started (with pid), already running, and errors."""

    started: list[tuple[Service, int]] = field(default_factory=list)
    running: list[Service] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def bring_up(s: Service, run: UpRun) -> None:
    """Start `s` unless it is healthy and unchanged; restart it when its binary or config changed."""
    pid = s.our_pid()
    reason = s.health()
    if reason is None:
        if pid and open_text(s.fp_path) != s.fingerprint():
            log(f"{s.name:<10} binary or config changed since start: restarting ({s.stop()})")
        else:
            owner = f"pid {pid}" if pid else f"not started by stack.py, pid {listener_pid(s.ports[0])}"
            log(f"{s.name:<10} already running ({owner})")
            run.running.append(s)
            return
    elif pid:
        log(f"{s.name:<10} process {pid} is up but not healthy yet ({reason}); waiting")
        run.started.append((s, pid))
        return
    else:
        busy = [p for p in s.ports if port_open(p)]
        if busy:
            other = listener_pid(busy[0])
            run.errors.append(f"{s.name}: port {busy[0]} is taken by another process "
                              f"(pid {other}: {pid_cmdline(other) if other else '?'}) that does not answer "
                              f"as {s.name} ({reason}); stop it and run again")
            return
    try:
        pid = s.start()
    except StackError as e:
        run.errors.append(str(e))
        return
    log(f"{s.name:<10} started (pid {pid}), log {s.log_path}")
    run.started.append((s, pid))


def settle(run: UpRun) -> None:
    """Wait for what was started, then provision every service (Prometheus also reloads its config)."""
    for s, pid in run.started:
        err = wait_healthy(s, pid)
        if err:
            run.errors.append(err)
        else:
            try:
                s.after_healthy()
            except StackError as e:
                run.errors.append(str(e))
    for s in run.running:
        try:
            s.after_healthy()
            if isinstance(s, Prometheus):  # pick up edits of dashboards/alerts.yml
                s.reload()
                log(f"{s.name:<10} configuration re-rendered and reloaded")
        except StackError as e:
            run.errors.append(str(e))


def cmd_up(names: list[str], scaled: bool = False) -> int:
    """Start what is down (building first if needed), then print the status table."""
    services = pick(names, scaled)
    t0 = time.monotonic()
    log(f"stack dir {STACK_DIR}, logs in {LOG_DIR}, binary cache {BIN_DIR}")
    run = UpRun()
    with stack_lock():
        ensure_built([n for s in services for n in s.needs()])
        swap_out(services, other_collectors(names, scaled))
        for s in services:
            bring_up(s, run)
        settle(run)
    if run.errors:
        for e in run.errors:
            print(f"\nERROR: {e}", file=sys.stderr)
        print(f"\n{len(run.errors)} service(s) failed; see the logs above (python3 stack/stack.py status)",
              file=sys.stderr)
        return 1
    log(f"{len(services)} service(s) healthy, {len(run.started)} started, in {fmt_secs(time.monotonic() - t0)}")
    print_status(services)
    return 0


def wait_healthy(s: Service, pid: int) -> str | None:
    """None once `s` answers, else why it did not within its start timeout."""
    deadline = time.monotonic() + s.start_timeout
    reason: str | None = "not checked"
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return str(s.failure(f"the process (pid {pid}) exited during start-up"))
        reason = s.health()
        if reason is None:
            log(f"{s.name:<10} healthy")
            return None
        time.sleep(0.25)
    return str(s.failure(f"no healthy answer within {s.start_timeout:.0f}s (last check: {reason})"))


def cmd_down(names: list[str], scaled: bool = False) -> int:
    """Stop what `up` started (both topologies; with `scaled`, the agent and gateways), in reverse start order."""
    services = pick(names) if names else SCALED_COLLECTORS if scaled else SERVICES + SCALED_COLLECTORS
    with stack_lock():
        for s in reversed(services):
            log(f"{s.name:<10} {s.stop()}")
            if s.health() is None:
                pid = listener_pid(s.ports[0])
                log(f"{s.name:<10} note: something not started by stack.py still answers on "
                    f"{s.address} (pid {pid}); left alone")
    return 0


def print_status(services: list[Service]) -> None:
    """Print the table service / address / state / pid / log."""
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


def cmd_status(names: list[str], scaled: bool = False) -> int:
    """Print the status table; 0 only when every service is healthy, else 3."""
    services = pick(names, scaled)
    print_status(services)
    return 0 if all(s.health() is None for s in services) else 3


def cmd_build(names: list[str], scaled: bool = False) -> int:
    """Install the packages and build the binaries only."""
    t = time.monotonic()
    ensure_built([n for s in pick(names, scaled) for n in s.needs()])
    for b in GO_BINARIES:
        if b.service:
            log(f"{'ok ' if os.path.exists(b.path) else 'missing'} {b.path}")
    log(f"build done in {fmt_secs(time.monotonic() - t)}")
    return 0


def cmd_tools(_: list[str], scaled: bool = False) -> int:
    """Install what the tests need beside the services (Chromium, for the HTML report's tests)."""
    t = time.monotonic()
    missing = missing_packages(TEST_TOOLS)[0]
    if missing:
        with build_lock():
            ensure_packages(TEST_TOOLS)
    for tool in TEST_TOOLS:
        log(f"{'ok ' if shutil.which(tool) else 'missing'} {shutil.which(tool) or tool}")
    log(f"tools done in {fmt_secs(time.monotonic() - t)}")
    return 0


def cmd_validate(_: list[str], scaled: bool = False) -> int:
    """Check the collectors' configurations (`validate`) and Prometheus' (`promtool check config`)."""
    ensure_built(["collector", "prometheus"])
    validate_collector_config()
    log(f"collector config OK: {COLLECTOR_CONFIG}")
    validate_collector_config(AGENT_CONFIG)
    log(f"agent config OK: {AGENT_CONFIG}")
    for gateway in GATEWAYS:
        validate_collector_config(GATEWAY_CONFIG, gateway.env)
    log(f"gateway config OK: {GATEWAY_CONFIG}")
    path = render_prometheus_config()
    log(f"prometheus config OK (promtool): {path}")
    return 0


COMMANDS: dict[str, Callable[[list[str], bool], int]] = {
    "up": cmd_up, "down": cmd_down, "status": cmd_status, "build": cmd_build, "tools": cmd_tools,
    "validate-config": cmd_validate,
}


def main(argv: list[str] | None = None) -> int:
    """The command line: `up|down|status|build|validate-config [SERVICE...]`; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=list(COMMANDS))
    ap.add_argument("services", nargs="*", help=f"subset of: {', '.join(BY_NAME)}")
    ap.add_argument("--scaled", action="store_true",
                    help="the scaled topology: agent + gateway1 + gateway2 instead of collector (docs/stack.md)")
    args = ap.parse_args(argv)
    try:
        return COMMANDS[args.command](args.services, args.scaled)
    except StackError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `stack.py status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
