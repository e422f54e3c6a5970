"""End to end in instructions: the CPU a gunicorn worker spends per request of the shop, under callgrind.

Wall-clock CPU per request (`e2e.py`) on this shared 2-core machine moves by ±5 % between two identical
servers (the control), more than the +2 % goal of issue 14. Instruction counts do not: this runs the
shop's `probe/queries/?pg=20&mongo=5` (20 PostgreSQL statements, 5 MongoDB commands) under
`opentelemetry-instrument gunicorn` (one worker, one thread) inside callgrind, serves N requests one
after the other, stops the server and adds up the instructions of its processes (master and worker).
Each configuration runs at two sizes; the difference per request cancels start-up and imports:

    .venv/bin/python benchmarks/e2e_instructions.py --compare          # make bench-e2e-instructions
    .venv/bin/python benchmarks/e2e_instructions.py otel+budget 20     # one server, prints its total

Timers would make the counts depend on how long a run takes under valgrind (~50x slower than native),
so the span exporter sends full batches only (`OTEL_BSP_SCHEDULE_DELAY`, one hour) and the metrics
are exported once, at shutdown (`OTEL_METRIC_EXPORT_INTERVAL`, one hour): what a busy production
server does per request, where a batch fills in well under 5 s and a 60 s metrics export is shared by
thousands of requests. Spans go over OTLP to the stack's collector (`make stack`), as in `e2e.py`.
"""

from __future__ import annotations

import argparse
import glob
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from instructions import compare_args, per_scope, ratios  # noqa: E402  (the same difference of two sizes)

REPO = HERE.parent
SHOP_DIR = REPO / "examples" / "shop"
HOST = "127.0.0.1"
PATH = "/probe/queries/?pg=20&mongo=5"
BASELINE = "otel"
CONFIGS = ("otel", "otel+budget", "otel+budget,no-metrics")
GOAL = 1.02  # issue 14: worker CPU per request at most +2 % over plain OTel
SIZES = (20, 80)
PORTS = (18601, 18602)  # one per valgrind run at a time (`--jobs`)
HOUR_MS = "3600000"
# (config, requests, port, layout) -> instructions of the server's processes
Runner = Callable[[str, int, int, int], int]
# An environment variable of another length per layout (`--layouts`): it moves where the process's memory
# lies, and with it the collisions of CPython's type-attribute cache and dict lookups, which moved the same
# code's count by up to ~0.4 % per request between runs. The median over a few layouts steadies the ratio.
LAYOUT_VARIABLE = "OTEL_BUDGET_BENCH_LAYOUT"


def server_env(config: str, tag: str) -> dict[str, str]:
    """The shop's environment (`examples/shop/processes.py`) for `config`, with the timers off."""
    if str(SHOP_DIR) not in sys.path:
        sys.path.insert(0, str(SHOP_DIR))
    from processes import ShopProcesses

    env: dict[str, str] = dict(ShopProcesses().app_env(tag))
    env.update(
        OTEL_TRACES_EXPORTER="otlp", OTEL_METRICS_EXPORTER="otlp", PYTHONHASHSEED="0",
        OTEL_BSP_SCHEDULE_DELAY=HOUR_MS, OTEL_METRIC_EXPORT_INTERVAL=HOUR_MS,
        OTEL_BUDGET_ENABLED="true" if config.startswith("otel+budget") else "false",
        OTEL_BUDGET_METRICS="false" if config == "otel+budget,no-metrics" else "true",
    )  # fmt: skip
    return env


def summed_instructions(paths: Sequence[str]) -> int:
    """The instructions of every callgrind profile in `paths` (each file's `summary:` or `totals:` line)."""
    total = 0
    for path in paths:
        with open(path) as profile:
            for line in profile:
                if line.startswith(("summary:", "totals:")):
                    total += int(line.split()[1])
                    break
            else:
                raise ValueError(f"{path}: no 'summary:' line (callgrind did not finish it)")
    return total


def _get(url: str, timeout: float) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        response.read()
        return int(response.status)


def run_server(config: str, requests: int, port: int, layout: int = 0, *, startup_timeout: float = 900.0) -> int:
    """Serve `requests` requests with one gunicorn worker under callgrind; its processes' instructions.
    `layout`: the length of `LAYOUT_VARIABLE` (0: not set), the same at both sizes of a configuration."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("e2e_instructions.py: valgrind not found (make bench-e2e-instructions installs it)")
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="otel-budget-e2e-cg-") as out_dir:
        argv = [
            valgrind, "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.%p", "--trace-children=yes",
            str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "gunicorn"), "shop.wsgi",
            "--bind", f"{HOST}:{port}", "--workers", "1", "--worker-class", "gthread", "--threads", "1",
            "--timeout", "900", "--graceful-timeout", "120",
        ]  # fmt: skip
        tag = "cg-" + "".join(c if c.isalnum() else "-" for c in config)
        with open(Path(out_dir) / "server.log", "wb") as log:
            process = subprocess.Popen(
                argv, env=_with_layout(server_env(config, tag), layout), cwd=SHOP_DIR, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            url = f"http://{HOST}:{port}"
            deadline = time.monotonic() + startup_timeout
            while True:
                try:
                    if _get(url + "/healthz/", 30) == 200:
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log_tail = (Path(out_dir) / "server.log").read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"{config} on :{port} did not get healthy:\n{log_tail}") from None
                    time.sleep(2)
            for _ in range(requests):
                status = _get(url + PATH, 300)
                if status != 200:
                    raise RuntimeError(f"{config}: {PATH} answered {status}")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # gunicorn stops its worker; callgrind writes each profile
            process.wait(timeout=600)
        return summed_instructions(sorted(glob.glob(f"{out_dir}/callgrind.*")))


def _with_layout(env: dict[str, str], layout: int) -> dict[str, str]:
    if layout:
        env[LAYOUT_VARIABLE] = "x" * (layout * 4099)
    return env


def compare(
    configs: Sequence[str], sizes: Sequence[int], run: Runner, jobs: int = 2, layouts: int = 1
) -> dict[str, float]:
    """Instructions per request of each configuration (the baseline first), `jobs` servers at a time; with
    `layouts` > 1, the median over that many memory layouts (each one's figures and ratios on stderr)."""
    wanted = [BASELINE, *[config for config in configs if config != BASELINE]]
    cases = [(config, size, layout) for layout in range(layouts) for config in wanted for size in sizes]
    jobs = max(1, min(jobs, len(PORTS)))
    free: queue.Queue[int] = queue.Queue()
    for port in PORTS[:jobs]:
        free.put(port)

    def one(case: tuple[str, int, int]) -> int:
        config, size, layout = case
        port = free.get()  # a port no other server holds now
        try:
            return run(config, size, port, layout)
        finally:
            free.put(port)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        totals = list(pool.map(one, cases))
    collected: dict[tuple[str, int], dict[int, int]] = {}
    for (config, size, layout), total in zip(cases, totals):
        collected.setdefault((config, layout), {})[size] = total
        where = f" (layout {layout})" if layouts > 1 else ""
        print(f"  {config} {size} requests{where}: {total} instructions", file=sys.stderr)
    each = {key: per_scope(sizes_seen) for key, sizes_seen in collected.items()}
    if layouts > 1:
        for layout in range(layouts):
            base = each[BASELINE, layout]
            text = ", ".join(f"{config} {each[config, layout] / base:.4f}" for config in wanted[1:])
            print(f"  layout {layout}: {BASELINE} {base:,.0f} per request; {text}", file=sys.stderr)
    return {config: statistics.median(each[config, layout] for layout in range(layouts)) for config in wanted}


def report(costs: Mapping[str, float], goal: float = GOAL) -> list[str]:
    """The table: instructions per request, the ratio to plain OTel, the goal and whether it holds."""
    ratio = ratios(costs)
    lines = [f"{'configuration':<26} {'instr/request':>14} {'ratio':>7} {'goal':>7}  holds?"]
    for config, cost in costs.items():
        if config == BASELINE:
            lines.append(f"{config:<26} {cost:>14,.0f} {ratio[config]:>7.3f}")
            continue
        verdict = "yes" if ratio[config] <= goal else "no"
        lines.append(f"{config:<26} {cost:>14,.0f} {ratio[config]:>7.3f} {f'<={goal:.2f}':>7}  {verdict}")
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="store_true", help="run each configuration at two sizes, print ratios")
    parser.add_argument("--configs", default=";".join(CONFIGS[1:]), help="--compare: besides plain OTel, separated by ;")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="--compare: the two numbers of requests")
    parser.add_argument("--jobs", type=int, default=2, help="--compare: servers under valgrind at a time (1 or 2)")
    parser.add_argument(
        "--layouts", type=int, default=1, help="--compare: memory layouts to take the median over (3: ~3x as long)"
    )
    parser.add_argument("config", nargs="?", help=f"one of {', '.join(CONFIGS)}")
    parser.add_argument("requests", nargs="?", type=int, help="requests to serve")
    args = parser.parse_args(argv)
    from e2e import setup_shop  # migrate and seed the shop's database (idempotent)

    if args.compare:
        configs, sizes = compare_args(parser, args.configs, args.sizes, CONFIGS)
        setup_shop()
        if args.layouts < 1:
            parser.error("--layouts: at least 1")
        costs = compare(configs, sizes, run_server, args.jobs, args.layouts)
        print("\n".join(report(costs)))
        return 0
    if args.config not in CONFIGS or args.requests is None:
        parser.error(f"CONFIG REQUESTS; CONFIG one of {', '.join(CONFIGS)}")
    setup_shop()
    print(run_server(args.config, args.requests, PORTS[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
