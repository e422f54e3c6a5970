"""The end-of-scope probes: RSS read from /proc/self/statm without releasing the GIL, and after fork."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest
from tracing_kit import touched_mapping

from otel_budget import _probes

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm is Linux's")


def statm_rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@linux_only
def test_rss_is_the_kernels_figure_and_follows_an_allocation() -> None:
    before = _probes.rss_bytes()
    assert abs(before - statm_rss()) <= 256 * 1024  # reading statm with open() itself allocates a little
    block = touched_mapping(64 * 1024 * 1024)  # its own pages, whatever malloc holds
    grown = _probes.rss_bytes() - before
    assert 60 * 1024 * 1024 <= grown <= 72 * 1024 * 1024, grown
    block.close()


@linux_only
def test_rss_read_keeps_the_gil() -> None:
    """`pread` is called through ctypes.PyDLL: the call holds the GIL (see the comment in _probes)."""
    _probes.rss_bytes()
    assert _probes._pread is not None  # noqa: SLF001
    assert _probes._pread._flags_ & ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]  # noqa: SLF001


@linux_only
def test_rss_recovers_when_its_descriptor_is_closed_under_it() -> None:
    """A daemon that closes every descriptor: the next read falls back, the one after opens statm again."""
    _probes.rss_bytes()
    os.close(_probes._fd)  # noqa: SLF001
    assert abs(_probes.rss_bytes() - statm_rss()) <= 256 * 1024
    assert abs(_probes.rss_bytes() - statm_rss()) <= 256 * 1024
    assert _probes._fd >= 0  # noqa: SLF001


@linux_only
def test_rss_after_fork_is_the_childs() -> None:
    """The child opens its own /proc/self/statm: its figure, not the parent's descriptor's."""
    _probes.rss_bytes()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: grow by 64 MiB, which the parent does not
        try:
            before = _probes.rss_bytes()
            block = touched_mapping(64 * 1024 * 1024)
            os.write(write, f"{_probes.rss_bytes() - before} {len(block)}".encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    grown, _ = (int(x) for x in os.read(read, 64).split())
    assert 60 * 1024 * 1024 <= grown <= 72 * 1024 * 1024, grown


def test_cpu_and_peak_move_forward() -> None:
    cpu, peak = _probes.cpu_and_peak()
    sum(range(2_000_000))
    cpu_after, peak_after = _probes.cpu_and_peak()
    assert cpu_after > cpu
    assert peak_after >= peak > 0
