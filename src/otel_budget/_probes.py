"""Cheap per-process probes read at the start and end of every scope: RSS, peak RSS, thread CPU time.

Costs on the benchmark machine: `benchmarks/run.py --only probes`, docs/benchmarks.md.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

try:
    import ctypes
except ImportError:  # pragma: no cover - a Python built without ctypes
    ctypes = None  # type: ignore[assignment]

__all__ = ["cpu_and_peak", "cpu_ns", "peak_rss_bytes", "reset", "rss_bytes"]

cpu_ns = time.thread_time_ns

try:
    import resource

    # ru_maxrss is KiB on Linux, bytes on macOS.
    _MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024

    def peak_rss_bytes() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT

    if hasattr(resource, "RUSAGE_THREAD"):  # Linux
        _getrusage = resource.getrusage
        _THREAD = resource.RUSAGE_THREAD

        def cpu_and_peak() -> tuple[int, int]:
            """This thread's CPU time (ns, µs resolution) and the process's peak RSS (bytes): one syscall.

            Linux fills `ru_maxrss` with the whole process's high-water mark for RUSAGE_THREAD too.
            """
            usage = _getrusage(_THREAD)
            return round((usage.ru_utime + usage.ru_stime) * 1e6) * 1000, usage.ru_maxrss * 1024

    else:  # pragma: no cover - macOS, BSD

        def cpu_and_peak() -> tuple[int, int]:
            """This thread's CPU time (ns) and the process's peak RSS (bytes)."""
            return cpu_ns(), peak_rss_bytes()

except ImportError:  # pragma: no cover - Windows

    def peak_rss_bytes() -> int:
        import psutil

        return int(getattr(psutil.Process().memory_info(), "peak_wset", 0))

    def cpu_and_peak() -> tuple[int, int]:
        """This thread's CPU time (ns) and the process's peak RSS (bytes)."""
        return cpu_ns(), peak_rss_bytes()


# Resident set size from a cached `/proc/self/statm` descriptor (~1.8 µs; psutil's memory_info ~9 µs).
#
# The read holds the GIL. `os.pread` would release it for a syscall that never blocks, and a release
# and re-take twice per scope starves every other Python thread: CPython's GIL hands over on a timeout
# only when no switch happened meanwhile, and each of ours counts as one. The SDK's batch exporter
# thread then fell behind by thousands of spans (docs/benchmarks.md). `ctypes.PyDLL` calls `pread`
# without releasing it; `os.pread` is the fallback where ctypes is unavailable, psutil where there is
# no /proc.
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_fd = -1  # -1: not open yet (or reset after fork); -2: no /proc, psutil from now on
_psutil_process: Any = None
_slow_lock = threading.Lock()  # the first read of two threads must not open (and leak) two descriptors


def _gil_holding_pread() -> Any:
    """libc's `pread` through `ctypes.PyDLL` (which keeps the GIL), or None."""
    if ctypes is None or not sys.platform.startswith("linux"):
        return None
    try:
        pread = ctypes.PyDLL(None).pread
    except (AttributeError, OSError):
        return None
    pread.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long)
    pread.restype = ctypes.c_ssize_t
    return pread


_pread = _gil_holding_pread()
_buffer: Any = ctypes.create_string_buffer(64) if _pread is not None else None


def rss_bytes() -> int:
    """The process's resident set size in bytes.

    The buffer is shared: a thread switch between the read and the parse can only put another
    thread's read of the same file, a moment later, under this one's parse. The field parsed is
    in the first bytes, which every read rewrites.
    """
    fd = _fd
    if fd >= 0 and _pread is not None:
        size = _pread(fd, _buffer, 64, 0)
        if size > 0:
            try:
                return int(_buffer.raw[:size].split(None, 2)[1]) * _PAGE
            except (ValueError, IndexError):
                pass
    return _rss_slowly()


def _rss_slowly() -> int:
    """First call, after fork, without ctypes, after a failed read, or without /proc."""
    global _fd
    if _fd == -1:
        with _slow_lock:
            if _fd == -1:
                try:
                    _fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except OSError:
                    _fd = -2
                if _COMPILED is not None:
                    _COMPILED.rss_open(_fd)
    if _fd >= 0:
        try:
            return int(os.pread(_fd, 64, 0).split(None, 2)[1]) * _PAGE
        except (OSError, ValueError, IndexError):  # e.g. a daemon closed every descriptor: open again next time
            reset()
    return _psutil_rss()


def _psutil_rss() -> int:
    global _psutil_process
    import psutil

    if _psutil_process is None:
        _psutil_process = psutil.Process()
    return int(_psutil_process.memory_info().rss)


def reset() -> None:
    """Forget the descriptor: after fork `/proc/self` must be opened again by the child."""
    global _fd, _psutil_process
    fd, _fd = _fd, -1
    if _COMPILED is not None:
        _COMPILED.rss_open(-1)
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
    _psutil_process = None


def _compiled_probes() -> Any:
    """`_speedups` (its `rss_bytes` and `cpu_and_peak`: the same reads without ctypes' and struct_rusage's
    cost), or None: not built, `OTEL_BUDGET_COMPILED=false`, or no GIL-holding `pread` to fall back on."""
    from otel_budget.settings import compiled_module

    speedups = compiled_module() if _pread is not None else None
    if speedups is not None:
        speedups.configure_probes(_rss_slowly)
    return speedups


_COMPILED = _compiled_probes()
if _COMPILED is not None:
    rss_bytes = _COMPILED.rss_bytes  # noqa: F811 - the compiled twin of the function above
    if hasattr(_COMPILED, "cpu_and_peak"):
        cpu_and_peak = _COMPILED.cpu_and_peak  # noqa: F811


def _after_fork_in_child() -> None:
    global _slow_lock
    _slow_lock = threading.Lock()  # a thread of the parent may have held it at the fork
    reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
