"""The compiled hot path (`_speedups`) against the pure-Python one: the same results, span for span.

`make test` also runs tests/unit with `OTEL_BUDGET_COMPILED=false`, so every unit test runs on both
paths; these tests compare the two directly on generated scopes (compiled_cases.py) in two fresh
interpreters, and check the counts against what the generator made.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind
from tracing_kit import Tracing

from otel_budget import processor as processor_module
from otel_budget.settings import Settings

CASES = Path(__file__).with_name("compiled_cases.py")
ROOT = Path(__file__).resolve().parents[2]


def run_cases(seed: int, scopes: int, compiled: str | None) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key != "OTEL_BUDGET_COMPILED"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    if compiled is not None:
        env["OTEL_BUDGET_COMPILED"] = compiled
    done = subprocess.run(
        [sys.executable, str(CASES), str(seed), str(scopes)], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_compiled_path_is_built_and_used_here() -> None:
    """`make venv` builds `_speedups`; a silent build failure would leave only the Python path tested."""
    if Settings.from_env().compiled:
        assert processor_module._COMPILED is not None
    else:
        assert processor_module._COMPILED is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_and_python_paths_give_the_same_results(seed: int) -> None:
    compiled, python = run_cases(seed, 60, None), run_cases(seed, 60, "false")
    assert (compiled["compiled"], python["compiled"]) == (True, False)
    assert compiled["truth"] == python["truth"]
    assert len(compiled["results"]) == len(python["results"]) > 60  # the nested scopes are results too
    for ours, theirs in zip(compiled["results"], python["results"]):
        assert ours == theirs
    # Against the generator: every query and call counted once (nested scopes are added to their request's).
    requests = [result for result in compiled["results"] if result["kind"] == "http"]
    assert sum(result["values"]["db.queries"] for result in requests) == compiled["truth"]["queries"]
    assert sum(result["values"]["external.calls"] for result in requests) == compiled["truth"]["calls"]
    assert any(result["violations"] for result in requests) and not all(result["violations"] for result in requests)


@pytest.mark.parametrize("method", ["on_start", "on_end"])
def test_a_span_that_is_not_an_sdk_span_is_logged_not_raised(
    tracing: Tracing, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    """Whichever path runs, a broken span costs a log line, never an exception in the host."""
    processor_module_logger = logging.getLogger(processor_module.__name__)
    with caplog.at_level(logging.ERROR, logger=processor_module_logger.name):
        getattr(tracing.processor, method)(object())
    assert any(f"{method} failed" in record.getMessage() and record.exc_info for record in caplog.records)


def test_a_batch_with_a_broken_span_counts_the_others(tracing: Tracing, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        with tracing.request():
            for index in range(20):
                with tracing.tracer.start_as_current_span("db", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite"}) as span:
                    span.set_attribute("db.statement", f"SELECT {index}")
                    if index == 3:
                        span._start_time = "soon"  # type: ignore[attr-defined]  # fault injection
    assert tracing.results[-1].values["db.queries"] == 19
    assert any("could not count a span" in record.getMessage() for record in caplog.records)


def test_compiled_setting(caplog: pytest.LogCaptureFixture) -> None:
    assert Settings.from_env({}).compiled is True
    assert Settings.from_env({"OTEL_BUDGET_COMPILED": "false"}).compiled is False
    with caplog.at_level(logging.ERROR):
        assert Settings.from_env({"OTEL_BUDGET_COMPILED": "banana"}).compiled is True
    assert "OTEL_BUDGET_COMPILED='banana' is not a boolean" in caplog.text


def test_a_subclass_that_overrides_the_hot_path_keeps_it() -> None:
    class Counting(processor_module.BudgetSpanProcessor):
        ended = 0

        def on_end(self, span: Any) -> None:
            Counting.ended += 1
            super().on_end(span)

    counting = Counting(record_metrics=False)
    assert counting.compiled is False and "on_end" not in counting.__dict__
