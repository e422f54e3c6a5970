"""Ports, pids and their processes on this machine (Linux /proc), shared with examples/shop/processes.py."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import time

from .settings import HOST

__all__ = ["listener_pid", "pid_alive", "pid_cmdline", "pid_starttime", "port_open", "signal_and_wait"]


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Whether 127.0.0.1:port accepts a connection."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on :port, from /proc/net/tcp{,6}."""
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
    return inodes


def listener_pid(port: int) -> int | None:
    """pid of the process listening on 127.0.0.1/0.0.0.0:port (Linux /proc scan)."""
    inodes = _listening_inodes(port)
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
    """Whether `pid` runs and is not a zombie."""
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
    """The command line of `pid`, space-separated; empty when unknown."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def signal_and_wait(pid: int, sig: signal.Signals, timeout: float) -> bool:
    """Send `sig` to `pid` and wait up to `timeout` seconds for it to exit; True when it did."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)
