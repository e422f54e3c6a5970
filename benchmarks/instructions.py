"""Per span in instructions: N scopes (1 SERVER + 20 DB spans) under one configuration, for callgrind.

Wall-clock ratios on a shared machine move by +-10 % between identical runs; instruction counts repeat
to a fraction of a per cent. Run each configuration at two sizes under callgrind and take the
difference, so interpreter start-up and imports cancel:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/instructions.py otel 200
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/instructions.py otel 600

`instructions.py --compare` (what `make bench-instructions` runs) does that for plain OTel, otel-budget
with its default metrics and without metrics, and a processor that does nothing (the SDK's own cost of
calling one more processor), and prints instructions per scope and the ratios against the goals
(issue 14): <= 1.05x plain OTel with the default metrics, <= 1.03x without.
The set-up is `per_span.make_provider`'s: the SDK with a BatchSpanProcessor and a null exporter, SDK
metrics with a reader, our processor after the exporter's (as `opentelemetry-instrument` orders them).

`--exporter simple` puts a SimpleSpanProcessor in the batch processor's place: every span is exported on
the thread that ends it, so no second thread takes the GIL at times that depend on how long a run lasts
under valgrind. Its counts repeat to ~0.04 % (the batch set-up's moved by up to ~50 000 per scope between
identical runs): the instrument for telling two versions of the code apart; the batch set-up is the one
the goals are stated on.

`--children 0` runs scopes of the SERVER span alone: what a scope costs by itself (its start and end, its
result and summary attributes). Beside the default 20, the difference over 20 is the cost of one child span.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import DB_STATEMENTS  # noqa: E402

WARM_UP = 300  # scopes before the measured ones: statement caches and instruments made
BASELINE = "otel"
# configuration -> the most it may cost per scope, as a multiple of plain OTel's (issue 14's goals)
GOALS: dict[str, float] = {"otel+budget": 1.05, "otel+budget,no-metrics": 1.03}
# Beside them, no goal: what the SDK itself costs to call one more processor whose hooks do nothing (C
# callables, no Python frame of ours) in its own loop. Ours does not pay that loop: `install` fuses it with
# the exporter's processor into one call per hook (docs/benchmarks.md, fourth and seventh sessions).
FLOOR = "ref: otel+c-noop-processor"
SIZES = (200, 600)
# DB spans per scope: the goals' 20 (all of per_span's), or fewer (`--children 0`: what a scope costs by
# itself, its start and end)
CHILDREN = len(DB_STATEMENTS)
_COLLECTED = re.compile(r"^==\d+== Collected : (\d+)\s*$", re.MULTILINE)

Runner = Callable[[str, int], str]  # (config, scopes) -> valgrind's stderr


def run_scopes(config: str, scopes: int, warm_up: int = WARM_UP, children: int = CHILDREN) -> None:
    """Run `scopes` scopes of `config` (`children` DB spans each) after `warm_up` ones, then shut the providers
    down."""
    from per_span import _DB, make_provider, one_scope

    # The exporter wakes on full batches only: its work then depends on the spans, not on the wall time of
    # a run under valgrind on a busy machine (the 5 s timer's exports moved the counts by up to ~80 000 per
    # scope between identical runs).
    os.environ.setdefault("BENCH_EXPORT_ON_FULL_BATCH", "1")
    provider, meter_provider = make_provider(config)
    tracer = provider.get_tracer("bench")
    spans = _DB[:children]
    for _ in range(warm_up + scopes):
        one_scope(tracer, spans)
    provider.shutdown()
    meter_provider.shutdown()


def parse_collected(stderr: str) -> int:
    """The instruction total from callgrind's `==pid== Collected : <n>` line (the last one, if several)."""
    found = _COLLECTED.findall(stderr)
    if not found:
        raise ValueError("no 'Collected :' line in valgrind's output: " + stderr.strip()[-500:])
    return int(found[-1])


def per_scope(collected: Mapping[int, int]) -> float:
    """Instructions per scope from the totals at two sizes: start-up and imports cancel in the difference."""
    if len(collected) != 2:
        raise ValueError(f"two different sizes are needed, not {sorted(collected)}")
    (small, at_small), (large, at_large) = sorted(collected.items())
    return (at_large - at_small) / (large - small)


def ratios(costs: Mapping[str, float]) -> dict[str, float]:
    """Each configuration's cost per scope over plain OTel's."""
    base = costs[BASELINE]
    return {config: cost / base for config, cost in costs.items()}


def report(costs: Mapping[str, float], goals: Mapping[str, float] = GOALS) -> list[str]:
    """The table: per-scope instructions, ratio to plain OTel, the goal and whether it holds."""
    ratio = ratios(costs)
    lines = [f"{'configuration':<26} {'instr/scope':>12} {'ratio':>7} {'goal':>7}  holds?"]
    for config, cost in costs.items():
        goal = goals.get(config)
        verdict = "" if goal is None else ("yes" if ratio[config] <= goal else "no")
        goal_text = f"<={goal:.2f}" if goal is not None else ""
        lines.append(f"{config:<26} {cost:>12,.0f} {ratio[config]:>7.3f} {goal_text:>7}  {verdict}".rstrip())
    return lines


def valgrind_runner(python: str = sys.executable, warm_up: int = WARM_UP, children: int = CHILDREN) -> Runner:
    """Run `instructions.py CONFIG N` under callgrind (no profile written) and hand back its stderr."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("instructions.py --compare: valgrind not found (make bench-instructions installs it)")

    def run(config: str, scopes: int) -> str:
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", python, os.path.abspath(__file__),
                   "--warm-up", str(warm_up), "--children", str(children), config, str(scopes)]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict and set layouts in every run
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{config} {scopes}: exit {done.returncode}: {done.stderr.strip()[-1000:]}")
        return done.stderr

    return run


def compare(configs: Sequence[str], sizes: Sequence[int], run: Runner, jobs: int = 2) -> dict[str, float]:
    """Per-scope instructions of each configuration (the baseline first), `jobs` valgrind runs at a time."""
    wanted = [BASELINE, *[config for config in configs if config != BASELINE]]
    cases = [(config, size) for config in wanted for size in sizes]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        totals = list(pool.map(lambda case: parse_collected(run(*case)), cases))
    collected: dict[str, dict[int, int]] = {config: {} for config in wanted}
    for (config, size), total in zip(cases, totals):
        collected[config][size] = total
        print(f"  {config} {size}: Collected {total}", file=sys.stderr)
    return {config: per_scope(collected[config]) for config in wanted}


def compare_args(
    parser: argparse.ArgumentParser, configs_text: str, sizes_text: str, known: Sequence[str]
) -> tuple[list[str], list[int]]:
    """`--configs` (names separated by `;`: a name may hold a comma) and `--sizes` (two different numbers),
    checked against `known`; a bad value is the parser's usage error."""
    configs = [config.strip() for config in configs_text.split(";") if config.strip()]
    sizes = [int(size) for size in sizes_text.split(",")]
    unknown = sorted(set(configs) - set(known))
    if unknown:
        parser.error(f"unknown configuration {unknown}; choose from {'; '.join(known)}")
    if len(set(sizes)) != 2:
        parser.error("--sizes: two different sizes")
    return configs, sizes


def main(argv: list[str]) -> int:
    from per_span import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--compare", action="store_true", help="run the configurations under callgrind, print the ratios"
    )
    parser.add_argument(
        "--configs", default=";".join([*GOALS, FLOOR]), help="--compare: besides plain OTel, separated by ; (names hold commas)"
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="--compare: the two numbers of scopes")
    parser.add_argument("--jobs", type=int, default=2, help="--compare: valgrind runs at a time")
    parser.add_argument("--warm-up", type=int, default=WARM_UP, help="scopes run before the measured ones")
    parser.add_argument(
        "--children", type=int, default=CHILDREN, choices=range(CHILDREN + 1), metavar=f"0..{CHILDREN}",
        help=f"DB spans per scope (default {CHILDREN}, the goals' set-up; 0: a scope's own start and end)",
    )  # fmt: skip
    parser.add_argument(
        "--exporter", choices=("batch", "simple"), default="batch",
        help="the SDK's span processor before ours: batch (the goals' set-up) or simple (no exporter thread: repeatable)",
    )  # fmt: skip
    parser.add_argument("config", nargs="?", help=f"one of {sorted(CONFIGS)}")
    parser.add_argument("scopes", nargs="?", type=int, help="scopes to run after the warm-up")
    args = parser.parse_args(argv)
    if args.exporter == "simple":
        os.environ["BENCH_SIMPLE_EXPORT"] = "1"  # read by per_span.make_provider, here and in the valgrind runs
    if args.compare:
        configs, sizes = compare_args(parser, args.configs, args.sizes, list(CONFIGS))
        costs = compare(configs, sizes, valgrind_runner(warm_up=args.warm_up, children=args.children), args.jobs)
        print("\n".join(report(costs)))
        return 0
    if args.config not in CONFIGS or args.scopes is None:
        parser.error(f"CONFIG SCOPES; CONFIG one of {sorted(CONFIGS)}")
    run_scopes(args.config, args.scopes, args.warm_up, args.children)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
