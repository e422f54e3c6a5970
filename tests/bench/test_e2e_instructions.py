"""benchmarks/e2e_instructions.py: the difference and ratio code on fake totals, and one real server under callgrind."""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import e2e_instructions  # noqa: E402


def test_compare_on_fake_totals() -> None:
    """Per request = (total at the large size - total at the small) / (large - small); ports never shared."""
    totals = {
        ("otel", 20): 9_000_000_000, ("otel", 80): 11_400_000_000,  # 40 000 000 per request
        ("otel+budget", 20): 9_100_000_000, ("otel+budget", 80): 11_548_000_000,  # 40 800 000: 1.020
        ("otel+budget,no-metrics", 20): 9_050_000_000, ("otel+budget,no-metrics", 80): 11_498_600_000,  # 1.0201
    }  # fmt: skip
    busy: set[int] = set()
    lock = threading.Lock()
    asked: list[tuple[str, int]] = []

    def run(config: str, requests: int, port: int, layout: int) -> int:
        assert layout == 0
        with lock:
            assert port not in busy, f"port {port} handed to two servers at once"
            busy.add(port)
            asked.append((config, requests))
        with lock:
            busy.discard(port)
        return totals[config, requests]

    costs = e2e_instructions.compare(["otel+budget", "otel+budget,no-metrics"], [20, 80], run, jobs=2)
    assert sorted(asked) == sorted(totals)
    assert costs == {"otel": 40_000_000, "otel+budget": 40_800_000, "otel+budget,no-metrics": 40_810_000}
    table = e2e_instructions.report(costs)
    assert table[2].split()[-2:] == ["<=1.02", "yes"] and "1.020" in table[2]
    assert table[3].split()[-1] == "no"  # 1.00025 over the goal


def test_compare_takes_the_median_over_layouts() -> None:
    """`--layouts 3`: each configuration at both sizes in every layout, the median of its per-request figures."""
    per_request = {  # (config, layout) -> instructions per request
        ("otel", 0): 40_000_000, ("otel", 1): 40_200_000, ("otel", 2): 39_900_000,
        ("otel+budget", 0): 40_900_000, ("otel+budget", 1): 40_700_000, ("otel+budget", 2): 41_500_000,
    }  # fmt: skip
    asked: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def run(config: str, requests: int, port: int, layout: int) -> int:
        with lock:
            asked.append((config, requests, layout))
        return 9_000_000_000 + requests * per_request[config, layout]

    costs = e2e_instructions.compare(["otel+budget"], [20, 80], run, jobs=2, layouts=3)
    assert sorted(asked) == sorted((config, size, layout) for config, layout in per_request for size in (20, 80))
    assert costs == {"otel": 40_000_000, "otel+budget": 40_900_000}  # the middle of each three


def test_a_layout_is_an_environment_variable_of_its_own_length() -> None:
    assert e2e_instructions.LAYOUT_VARIABLE not in e2e_instructions._with_layout({}, 0)
    padded = [e2e_instructions._with_layout({}, layout)[e2e_instructions.LAYOUT_VARIABLE] for layout in (1, 2)]
    assert 0 < len(padded[0]) < len(padded[1])


def test_summed_instructions_reads_every_profile(tmp_path: Path) -> None:
    for pid, total in ((101, 1234), (102, 5000)):
        (tmp_path / f"callgrind.{pid}").write_text(f"version: 1\ncmd: python\nevents: Ir\nsummary: {total}\n")
    assert e2e_instructions.summed_instructions(sorted(map(str, tmp_path.glob("callgrind.*")))) == 6234
    (tmp_path / "callgrind.103").write_text("version: 1\n")  # a profile cut short
    with pytest.raises(ValueError, match="callgrind.103"):
        e2e_instructions.summed_instructions([str(tmp_path / "callgrind.103")])


def test_the_default_configurations_parse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        e2e_instructions.main(["--compare", "--sizes", "5,5"])
    err = capsys.readouterr().err
    assert "--sizes:" in err and "unknown" not in err


def test_one_real_server_under_callgrind() -> None:
    """The shop under callgrind, 1 and 3 requests: the two extra requests cost what a 25-query view costs."""
    assert shutil.which("valgrind"), "make test installs valgrind (the bench-instructions prerequisite)"
    from e2e import setup_shop

    setup_shop()
    costs = e2e_instructions.compare([], [1, 3], e2e_instructions.run_server, jobs=2)
    per_request = costs["otel"]
    # Plain OTel serves it in ~40 M instructions (docs/benchmarks.md); far less means nothing was served.
    assert 10_000_000 < per_request < 400_000_000, per_request
