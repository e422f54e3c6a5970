"""benchmarks/instructions.py --compare: the parsing and ratio code on fake callgrind output, and one real run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import instructions  # noqa: E402


def fake_stderr(total: int) -> str:
    """What valgrind prints on stderr at the end of a callgrind run (the profile written to /dev/null)."""
    return (
        "==4242== Callgrind, a call-graph generating cache profiler\n==4242== \n"
        f"==4242== Events    : Ir\n==4242== Collected : {total}\n==4242== \n==4242== I   refs:      {total:,}\n"
    )


def test_compare_on_fake_callgrind_output(capsys: pytest.CaptureFixture[str]) -> None:
    """Per scope = (total at the large size - total at the small) / (large - small); ratios against plain OTel."""
    totals = {
        ("otel", 10): 1_000_000_000, ("otel", 30): 1_080_000_000,  # 4 000 000 per scope
        ("otel+budget", 10): 1_100_000_000, ("otel+budget", 30): 1_184_000_000,  # 4 200 000: 1.050
        ("otel+budget,no-metrics", 10): 1_050_000_000, ("otel+budget,no-metrics", 30): 1_132_480_000,  # 4 124 000
    }  # fmt: skip
    asked: list[tuple[str, int]] = []

    def run(config: str, scopes: int) -> str:
        asked.append((config, scopes))
        return fake_stderr(totals[config, scopes])

    costs = instructions.compare(["otel+budget", "otel+budget,no-metrics"], [10, 30], run, jobs=1)
    assert sorted(asked) == sorted(totals)
    assert costs == {"otel": 4_000_000, "otel+budget": 4_200_000, "otel+budget,no-metrics": 4_124_000}
    assert list(costs) == ["otel", "otel+budget", "otel+budget,no-metrics"]  # the baseline first
    assert instructions.ratios(costs)["otel+budget,no-metrics"] == pytest.approx(1.031)
    table = instructions.report(costs)
    assert table[1].split() == ["otel", "4,000,000", "1.000"]
    assert table[2].split() == ["otel+budget", "4,200,000", "1.050", "<=1.05", "yes"]  # at the goal: holds
    assert table[3].split() == ["otel+budget,no-metrics", "4,124,000", "1.031", "<=1.03", "no"]
    assert "otel+budget 30: Collected 1184000000" in capsys.readouterr().err


def test_parse_collected_takes_callgrinds_line_and_refuses_output_without_it() -> None:
    assert instructions.parse_collected(fake_stderr(5_981_383_122)) == 5_981_383_122
    assert instructions.parse_collected("==1== Collected : 7\n==2== Collected : 9\n") == 9  # the last one
    with pytest.raises(ValueError, match="no 'Collected :' line"):
        instructions.parse_collected("valgrind: command not found\n")
    with pytest.raises(ValueError, match="two different sizes"):
        instructions.per_scope({200: 5})
    assert instructions.per_scope({600: 5_981_383_122, 200: 3_967_231_866}) == pytest.approx(5_035_378.14)


def test_one_real_callgrind_run() -> None:
    """Plain OTel under valgrind at tiny sizes: a plausible cost per scope (21 spans), from a real `Collected` line;
    with `--children 0` a scope is its SERVER span alone, a small fraction of that."""
    assert shutil.which("valgrind"), "valgrind is on every machine of this kind (make valgrind installs it)"
    costs = instructions.compare([], [1, 3], instructions.valgrind_runner(warm_up=5), jobs=2)
    assert list(costs) == ["otel"]
    assert 1_000_000 < costs["otel"] < 50_000_000, costs
    alone = instructions.compare([], [1, 3], instructions.valgrind_runner(warm_up=5, children=0), jobs=2)["otel"]
    assert 0 < alone < costs["otel"] / 8, (alone, costs)  # 1 span of 21: measured ~1/19 (230 424 of 4 353 796)


def test_the_default_configurations_parse(capsys: pytest.CaptureFixture[str]) -> None:
    """Names hold commas (`otel+budget,no-metrics`): the list is split on `;`, so the defaults are all known."""
    with pytest.raises(SystemExit):
        instructions.main(["--compare", "--sizes", "5,5"])  # rejected for its sizes, after the names were checked
    err = capsys.readouterr().err
    assert "--sizes:" in err and "unknown" not in err


def test_the_simple_exporter_runs_on_one_thread_and_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--exporter simple`: the SDK's SimpleSpanProcessor before ours, and two identical runs count alike."""
    from per_span import make_provider

    monkeypatch.setenv("BENCH_SIMPLE_EXPORT", "1")  # what `--exporter simple` sets, for the runs it starts too
    provider, meter_provider = make_provider("otel")
    assert [type(each).__name__ for each in provider._active_span_processor._span_processors] == ["SimpleSpanProcessor"]
    provider.shutdown()
    meter_provider.shutdown()
    run = instructions.valgrind_runner(warm_up=5)
    # 40 scopes apart: a run's start-up may differ by ~140 000 instructions from the next one's (seen once in
    # CI at sizes 2 and 6, 4 scopes apart: 0.8 % per scope); spread over 40 scopes that is under 0.1 %.
    first, second = (instructions.compare([], [2, 42], run, jobs=2)["otel"] for _ in range(2))
    assert abs(first - second) <= 0.002 * first, (first, second)
