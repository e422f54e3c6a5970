"""Why the RSS probe keeps the GIL: the batch exporter's queue and GC time, with and without it.

Runs the per-span loop (SERVER span + 20 PostgreSQL spans, BatchSpanProcessor + null exporter) in
three fresh interpreters: the SDK alone, otel-budget as shipped (libc `pread` through
`ctypes.PyDLL`, GIL kept), and otel-budget with the RSS probe on `os.pread`, which releases the
GIL for the syscall. Prints, per configuration, the exporter queue's length (sampled every 10
scopes), the time spent in the garbage collector per scope, and CPU per scope.

    .venv/bin/python benchmarks/gil_release.py [--scopes 3000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

CONFIGS = {
    "otel": "otel",
    "otel+budget (pread, GIL kept)": "otel+budget,no-metrics",
    "otel+budget (os.pread, GIL released)": "otel+budget,no-metrics",
}


def measure(name: str, scopes: int) -> dict[str, float]:
    import per_span
    from otel_budget._pipeline import members

    if "os.pread" in name:
        from otel_budget import _probes

        _probes._pread = None  # noqa: SLF001 - rss_bytes falls back to os.pread
    provider, _ = per_span.make_provider(CONFIGS[name])
    tracer = provider.get_tracer("bench")
    queue = members(provider._active_span_processor)[0]._batch_processor._queue  # noqa: SLF001
    for _ in range(300):
        per_span.one_scope(tracer)
    gc.collect()
    in_gc = [0.0, 0.0]  # start, total

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            in_gc[0] = time.perf_counter()
        else:
            in_gc[1] += time.perf_counter() - in_gc[0]

    gc.callbacks.append(on_gc)
    lengths = []
    cpu = time.process_time()
    for index in range(scopes):
        per_span.one_scope(tracer)
        if index % 10 == 0:
            lengths.append(len(queue))
    cpu = time.process_time() - cpu
    gc.callbacks.remove(on_gc)
    provider.shutdown()
    return {
        "queue_median": statistics.median(lengths),
        "queue_max": max(lengths),
        "gc_us_per_scope": in_gc[1] / scopes * 1e6,
        "cpu_us_per_scope": cpu / scopes * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scopes", type=int, default=3000)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.scopes)))
        return
    print(f"{'configuration':40} {'exporter queue: median':>22} {'max':>7} {'GC µs/scope':>12} {'CPU µs/scope':>13}")
    for name in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--scopes", str(args.scopes)],
            check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="1"),
        )  # fmt: skip
        r = json.loads(out.stdout)
        print(f"{name:40} {r['queue_median']:>22,.0f} {r['queue_max']:>7,} {r['gc_us_per_scope']:>12.0f} {r['cpu_us_per_scope']:>13.0f}")


if __name__ == "__main__":
    main()
