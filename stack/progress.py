"""Progress lines, durations, log tails, logged commands and the one error the stack raises."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping

from .settings import LOG_DIR

__all__ = ["StackError", "fmt_secs", "log", "run_logged", "tail"]

_T0 = time.monotonic()


class StackError(Exception):
    """A step of the stack failed; the message says which and where its log is."""


def log(msg: str) -> None:
    """Print a progress line with the seconds since start."""
    print(f"[stack {time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def fmt_secs(s: float) -> str:
    """`42s` or `3m05s`."""
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def tail(path: str, n: int = 25) -> str:
    """The last `n` lines of a log file, indented for an error message."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    | " + line for line in lines[-n:]) or "    (log is empty)"


def run_logged(cmd: list[str], name: str, cwd: str | None = None, env: Mapping[str, str] | None = None,
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
