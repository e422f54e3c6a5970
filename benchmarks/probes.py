"""The cost of each end-of-scope probe, in µs per call (timeit, median and spread of several repeats)."""

from __future__ import annotations

import os
import time
import timeit
from collections.abc import Callable
from typing import Any

import psutil
from _common import summary

from otel_budget import _probes


def candidates() -> dict[str, Callable[[], Any]]:
    process = psutil.Process()
    statm = os.open("/proc/self/statm", os.O_RDONLY)
    return {
        "rss: /proc/self/statm pread, GIL kept (ours)": _probes.rss_bytes,
        "rss: /proc/self/statm os.pread, GIL released": lambda: int(os.pread(statm, 64, 0).split()[1]),
        "rss: psutil memory_info": lambda: process.memory_info().rss,
        "peak rss: getrusage(RUSAGE_SELF)": _probes.peak_rss_bytes,
        "thread cpu: time.thread_time_ns": time.thread_time_ns,
        "thread cpu + peak rss: thread_time_ns + getrusage(SELF)": lambda: (time.thread_time_ns(), _probes.peak_rss_bytes()),
        "thread cpu + peak rss: getrusage(THREAD) (ours)": _probes.cpu_and_peak,
        "wall: time.time_ns (reference)": time.time_ns,
        **histogram_records(),
    }


def histogram_records() -> dict[str, Callable[[], Any]]:
    """One SDK `Histogram.record` with a scope's two attributes: the metrics cost, 12 of them per scope.

    Inside a sampled span (where a scope's records happen) the SDK's default exemplar filter also
    offers each measurement to the exemplar reservoir.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    histogram = MeterProvider([InMemoryMetricReader()]).get_meter("bench").create_histogram("h", unit="ms")
    attributes = {"http.route": "products/", "http.request.method": "GET"}
    span = TracerProvider().get_tracer("bench").start_span("GET products/")
    in_span = trace.set_span_in_context(span)
    return {
        "metrics: SDK Histogram.record, no span": lambda: histogram.record(5.0, attributes),
        "metrics: SDK Histogram.record, in a sampled span": lambda: histogram.record(5.0, attributes, in_span),
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
