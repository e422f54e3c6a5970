"""The cost of each end-of-scope probe, in µs per call (timeit, median and spread of several repeats)."""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable
from typing import Any

import psutil
from _common import summary

from otel_budget import _probes


def candidates() -> dict[str, Callable[[], Any]]:
    process = psutil.Process()
    return {
        "rss: /proc/self/statm pread (ours)": _probes.rss_bytes,
        "rss: psutil memory_info": lambda: process.memory_info().rss,
        "peak rss: getrusage(RUSAGE_SELF)": _probes.peak_rss_bytes,
        "thread cpu: time.thread_time_ns": time.thread_time_ns,
        "thread cpu + peak rss: thread_time_ns + getrusage(SELF)": lambda: (time.thread_time_ns(), _probes.peak_rss_bytes()),
        "thread cpu + peak rss: getrusage(THREAD) (ours)": _probes.cpu_and_peak,
        "wall: time.time_ns (reference)": time.time_ns,
    }


def run(*, repeats: int = 7, number: int = 20_000, log: Callable[[str], None] = print) -> dict[str, Any]:
    results = {}
    probes = candidates()
    for name, probe in probes.items():
        probe()  # open descriptors, create objects
    for name, probe in probes.items():
        timer = timeit.Timer(probe)
        per_call = [t / number * 1e6 for t in timer.repeat(repeat=repeats, number=number)]
        results[name] = summary(per_call)
        log(f"  probe {name}: {results[name]['median']:.3f} µs")
    return {"repeats": repeats, "number": number, "us_per_call": results}
