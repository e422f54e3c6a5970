#!/usr/bin/env python3
"""otel-budget overhead benchmarks, side by side with plain OpenTelemetry (`make bench`).

    .venv/bin/python benchmarks/run.py                       # everything (e2e needs `make stack` and wrk)
    .venv/bin/python benchmarks/run.py --only per_span,probes --rounds 5 --duration 2
    .venv/bin/python benchmarks/run.py --quick               # a few seconds: checks the harness, not the figures

Benchmarks: per_span (SDK spans/s, with and without our processor), e2e (the example shop under
gunicorn + wrk: no OTel / OTel / OTel + otel-budget), memory (RSS over many scopes, state per open
scope), probes (µs per end-of-scope probe). Prints a table and writes JSON (--json).
See docs/benchmarks.md for the method and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BENCHMARKS = ("per_span", "e2e", "memory", "probes")
GOALS = {
    "per_span": "our processor adds <= 5 % to the SDK's cost per span",
    "e2e": "throughput >= 98 % and p99 <= 102 % of plain OTel",
    "memory": "no RSS growth from 10k to 100k scopes; <= 1 KiB of state per open scope",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (per_span 7, e2e 5)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per configuration per round (per_span 3, e2e 20)")
    parser.add_argument("--scopes", type=int, default=100_000, help="memory: scopes to run (RSS read at 1/10 and the end)")
    parser.add_argument("--open-scopes", type=int, default=2000, help="memory: open scopes for the state size")
    parser.add_argument("--connections", type=int, default=8, help="e2e: wrk connections (fixed concurrency)")
    parser.add_argument("--e2e-burst", type=int, default=4, help="e2e: seconds per turn (configurations alternate)")
    parser.add_argument("--e2e-port", type=int, default=8101, help="e2e: first of five free ports for the servers")
    parser.add_argument("--e2e-sampling", type=float, default=None,
                        help="e2e: head sampling at this ratio: plain OTel at 100 %% and at it, otel-budget at it, a control")
    parser.add_argument("--e2e-exporter", choices=["auto", "otlp", "none"], default="auto",
                        help="e2e: OTEL_{TRACES,METRICS}_EXPORTER; auto = otlp to the stack's collector if it is up")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the harness (figures meaningless)")
    parser.add_argument("--json", default=str(HERE / "results" / "latest.json"), help="where to write the results")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


def environment() -> dict[str, Any]:
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": commit,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            name: version(name)
            for name in ("opentelemetry-sdk", "opentelemetry-instrumentation-django", "django", "gunicorn", "psycopg2-binary", "pymongo")
        },
    }


def fmt_spread(stats: dict[str, float], fmt: str = "{:,.0f}", scale: float = 1.0) -> str:
    return (
        f"{fmt.format(stats['median'] * scale)} "
        f"[{fmt.format(stats['min'] * scale)}–{fmt.format(stats['max'] * scale)}]"
    )


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    env = results["environment"]
    add(f"otel-budget benchmarks — {env['date']}, commit {env['commit']}, {env['python']}, "
        f"{env['cpus']} CPUs, load {env['loadavg_start']} at start → {results.get('loadavg_end')} at end")  # fmt: skip
    add("median [min–max] over interleaved rounds; ratios are per round against plain OTel, then the median")
    if "per_span" in results:
        r = results["per_span"]
        add("")
        add(f"PER SPAN — SERVER span + {r['spans_per_scope'] - 1} PostgreSQL spans, BatchSpanProcessor + null exporter "
            f"({r['rounds']} rounds × {r['duration_s']} s per configuration)")  # fmt: skip
        add(f"  {'configuration':30} {'spans/s':>22} {'CPU µs/span':>20} {'spans/s ratio':>22} {'CPU/span ratio':>22}")
        for name, stats in r["configs"].items():
            ratio = r["ratios"].get(name)
            add(
                f"  {name:30} {fmt_spread(stats['spans_per_s']):>22} {fmt_spread(stats['cpu_us_per_span'], '{:.2f}'):>20} "
                f"{fmt_spread(ratio['spans_per_s'], '{:.3f}') if ratio else '1':>22} "
                f"{fmt_spread(ratio['cpu_us_per_span'], '{:.3f}') if ratio else '1':>22}"
            )
    if "e2e" in results:
        r = results["e2e"]
        add("")
        if "error" in r:
            add(f"END TO END — not run: {r['error']}")
        else:
            add(f"END TO END — GET {r['url']}, gunicorn {r['gunicorn']['workers']} workers × {r['gunicorn']['threads']} "
                f"threads (gthread), wrk -c{r['connections']}, {r['rounds']} rounds × {r['duration_s']} s in {r.get('burst_s')} s turns, "
                f"exporter {r['exporter']}, errors {r['errors']}, discarded rounds {r.get('discarded_rounds', 0)}")  # fmt: skip
            add(f"  {'configuration':24} {'req/s':>18} {'p50 ms':>18} {'p99 ms':>18} {'server CPU ms/req':>20}")
            for name, stats in r["configs"].items():
                add(
                    f"  {name:24} {fmt_spread(stats['requests_per_s'], '{:.1f}'):>18} "
                    f"{fmt_spread(stats['p50_us'], '{:.1f}', 1e-3):>18} {fmt_spread(stats['p99_us'], '{:.1f}', 1e-3):>18} "
                    f"{fmt_spread(stats['server_cpu_us_per_request'], '{:.2f}', 1e-3):>20}"
                )
            add(f"  {'vs ' + r.get('baseline', 'otel'):24} {'req/s ratio':>18} {'p50 ratio':>18} {'p99 ratio':>18} {'CPU/req ratio':>20}")
            for name, ratio in r["ratios"].items():
                add(
                    f"  {name:24} {fmt_spread(ratio['requests_per_s'], '{:.3f}'):>18} {fmt_spread(ratio['p50_us'], '{:.3f}'):>18} "
                    f"{fmt_spread(ratio['p99_us'], '{:.3f}'):>18} {fmt_spread(ratio['server_cpu_us_per_request'], '{:.3f}'):>20}"
                )
    if "memory" in results:
        r = results["memory"]
        first, last = r["checkpoints"][0], r["checkpoints"][-1]
        add("")
        add(f"MEMORY — RSS (MiB) after N finished scopes (each: SERVER + 22 DB spans, literals cycling through the cache)")
        add(f"  {'configuration':24} " + " ".join(f"{c:>8,}" for c in r["checkpoints"]) + f" {'growth ' + format(first, ',') + '→' + format(last, ','):>18}")
        for name, g in r["growth"].items():
            add(f"  {name:16} " + " ".join(f"{g['rss_mib'][str(c)]:>8.1f}" for c in r["checkpoints"]) + f" {g['growth_mib']:>+17.2f}")
        for name, s in r["state"].items():
            add(f"  state per open scope ({name} DB spans counted, {s['open_scopes']} open): {s['bytes_per_scope']:.0f} bytes")
    if "probes" in results:
        r = results["probes"]
        add("")
        add("PROBES — µs per call (timeit, median [min–max] of repeats)")
        for name, stats in r["us_per_call"].items():
            add(f"  {name:56} {fmt_spread(stats, '{:.3f}'):>24}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {"environment": environment(), "options": vars(args)}
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    failed = False
    if "per_span" in args.only:
        import per_span

        log("per_span ...")
        results["per_span"] = per_span.run(
            rounds=args.rounds or (1 if args.quick else 7),
            duration=args.duration or (0.3 if args.quick else 3.0),
            log=log,
        )
    if "e2e" in args.only:
        import e2e

        log("e2e ...")
        try:
            results["e2e"] = e2e.run(
                rounds=args.rounds or (1 if args.quick else 5),
                duration=args.duration or (2 if args.quick else 20),
                burst=1 if args.quick else args.e2e_burst,
                connections=args.connections,
                port=args.e2e_port,
                exporter=args.e2e_exporter,
                sampling=args.e2e_sampling,
                log=log,
            )
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            results["e2e"] = {"error": str(exc)}
            failed = True
    if "memory" in args.only:
        import memory

        log("memory ...")
        results["memory"] = memory.run(
            scopes=2000 if args.quick else args.scopes, open_scopes=200 if args.quick else args.open_scopes, log=log
        )
    if "probes" in args.only:
        import probes

        log("probes ...")
        results["probes"] = probes.run(number=2000 if args.quick else 20_000, repeats=3 if args.quick else 7, log=log)
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(results))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
