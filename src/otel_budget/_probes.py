"""Cheap per-process probes read at the start and end of every scope: RSS, peak RSS, thread CPU time.

Costs on the benchmark machine: `benchmarks/run.py --only probes`, docs/benchmarks.md.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["cpu_and_peak", "cpu_ns", "peak_rss_bytes", "rss_bytes"]

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


class _StatmReader:
    """Resident set size from a cached `/proc/self/statm` descriptor (~2 µs, psutil's memory_info ~25 µs)."""

    def __init__(self) -> None:
        self._fd = -1
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._psutil_process: object = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        """Forget the descriptor: after fork `/proc/self` must be opened again by the child."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
        self._psutil_process = None

    def __call__(self) -> int:
        fd = self._fd
        if fd == -1:
            fd = self._open()
        if fd < 0:
            return self._psutil_rss()
        try:
            return int(os.pread(fd, 64, 0).split(None, 2)[1]) * self._page
        except (OSError, ValueError, IndexError):
            self.reset()
            return self._psutil_rss()

    def _open(self) -> int:
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self._fd = -2  # not Linux: psutil from now on
        return self._fd

    def _psutil_rss(self) -> int:
        import psutil

        if self._psutil_process is None:
            self._psutil_process = psutil.Process()
        return int(self._psutil_process.memory_info().rss)  # type: ignore[attr-defined]


rss_bytes = _StatmReader()
