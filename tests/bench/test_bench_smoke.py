"""The benchmark harness runs in its tiny mode and produces its table and JSON (no timings checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def test_run_quick_prints_table_and_writes_json(tmp_path: Path) -> None:
    """`run.py --quick` without the stack: per_span, memory and probes sections, and their JSON."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "per_span,memory,probes", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for heading in ("PER SPAN", "MEMORY", "PROBES", "otel+budget", "state per open scope"):
        assert heading in done.stdout
    results = json.loads(out.read_text())
    assert {"otel", "otel+budget", "otel+budget,no-metrics"} <= set(results["per_span"]["configs"])
    assert {"otel+budget", "otel+budget,no-metrics"} <= set(results["per_span"]["ratios"])
    assert results["memory"]["state"]["children=0"]["bytes_per_scope"] > 0
    assert "rss: /proc/self/statm pread, GIL kept (ours)" in results["probes"]["us_per_call"]


def test_unknown_benchmark_is_refused() -> None:
    """A typo in --only names the valid choices."""
    done = subprocess.run([sys.executable, str(RUN), "--only", "per_spam"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "per_span, e2e, memory, probes" in done.stderr


def test_gil_release_comparison_runs() -> None:
    """`gil_release.py` runs its three interpreters and prints a row for each (figures not checked)."""
    done = subprocess.run(
        [sys.executable, str(RUN.parent / "gil_release.py"), "--scopes", "50"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = done.stdout.splitlines()[1:]
    assert [row.split("  ")[0] for row in rows] == [
        "otel",
        "otel+budget (pread, GIL kept)",
        "otel+budget (os.pread, GIL released)",
    ]
