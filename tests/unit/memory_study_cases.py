"""Memory study: after a memory.growth_mb overrun the next run of the route is traced and names what grew.

Run by test_memory_study.py in a fresh interpreter (see there); `pytest tests/unit/memory_study_cases.py` runs them directly."""

from __future__ import annotations

import ctypes
import logging
import re
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import SpanKind
from tracing_kit import Tracing, make_tracing

from otel_budget import spanformat
from otel_budget._memory_study import MAX_TOP_CHARS, top_sites
from otel_budget.config import load_config
from otel_budget.settings import Settings

MIB = 1024 * 1024
BUDGET = {"http": {"memory": {"growth_mb": 2}}, "scope": {"memory": {"growth_mb": 2}}}
HERE = Path(__file__).name
kept: list[bytes] = []


@pytest.fixture(scope="module", autouse=True)
def _fresh_pages_for_big_blocks() -> None:
    """glibc's malloc raises its mmap threshold after a big block is freed, then serves the next one from
    freed heap pages, which RSS does not see grow: a fixed threshold keeps 8 MiB blocks in their own pages."""
    ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


@pytest.fixture
def study() -> Iterator[Tracing]:
    tracing = make_tracing(BUDGET, memory_study=1)
    yield tracing
    tracing.provider.shutdown()
    kept.clear()


@pytest.fixture(autouse=True)
def _never_left_tracing() -> Iterator[None]:
    assert not tracemalloc.is_tracing()
    yield
    assert not tracemalloc.is_tracing()


def hog(tracing: Tracing, route: str = "hog/") -> tuple[Any, bool, int]:
    """One POST `route` that keeps 8 MiB alive: its result, whether tracemalloc ran inside, the allocating line."""
    with tracing.request(route, "POST"):
        tracing_inside = tracemalloc.is_tracing()
        line = sys._getframe().f_lineno + 1
        kept.append(b"\xa5" * (8 * MIB))
    return tracing.results[-1], tracing_inside, line


def sites(top: str) -> list[tuple[str, int, int]]:
    """`file:line +N KiB; ...` as (file, line, KiB)."""
    found = [re.fullmatch(r"(.+):(\d+) \+(\d+) KiB", site) for site in top.split("; ")]
    assert all(found), top
    return [(m.group(1), int(m.group(2)), int(m.group(3))) for m in found if m]


def test_the_run_after_an_overrun_names_the_allocating_line(study: Tracing) -> None:
    """Run 1 overruns (not traced); run 2 is traced and its event names this file's allocating line."""
    first, traced_first, _ = hog(study)
    assert [v.metric for v in first.violations] == ["memory.growth_mb"] and not traced_first
    assert first.memory_top is None and study.processor._study.pending == {"POST hog/": 1}  # type: ignore[union-attr]
    second, traced_second, line = hog(study)
    assert traced_second and not tracemalloc.is_tracing()
    (file, lineno, kib), *_ = sites(second.memory_top)
    assert (file.endswith(HERE), lineno) == (True, line)
    assert kib == 8 * 1024  # the 8 MiB bytes object (plus its 33-byte header)
    (violation,) = second.violations
    assert violation.details == {"memory.top": second.memory_top}
    span = study.spans()[-1]
    assert span.attributes["budget.memory.top"] == second.memory_top
    (exceeded,) = [e for e in span.events if e.name == "budget.exceeded"]
    assert exceeded.attributes["budget.memory.top"] == second.memory_top


def test_study_ends_after_its_runs_and_waits_for_the_cooldown(study: Tracing) -> None:
    """With 1 run: the third overrun is not traced (the route was studied a moment ago), nor is any other run."""
    hog(study)
    hog(study)
    third, traced, _ = hog(study)
    assert (traced, third.memory_top, study.processor._study.pending) == (False, None, {})  # type: ignore[union-attr]


def test_within_budget_studied_run_has_the_attribute_and_no_event(study: Tracing) -> None:
    """A studied run that stays within budget: `budget.memory.top` on the span, no event."""
    hog(study)
    with study.request("hog/", "POST"):
        kept.append(b"\x01" * (MIB // 2))
    result = study.results[-1]
    assert result.violations == () and result.memory_top is not None
    assert sites(result.memory_top)[0][0].endswith(HERE)
    assert study.spans()[-1].attributes["budget.memory.top"] == result.memory_top


def test_other_routes_are_not_traced_while_a_study_is_pending(study: Tracing) -> None:
    """Only the overrun route is studied; requests to others run without tracemalloc."""
    hog(study)
    with study.request("items/", "GET"):
        assert not tracemalloc.is_tracing()
    assert study.results[-1].memory_top is None


def test_one_studied_scope_at_a_time(study: Tracing) -> None:
    """A second run of the route starting while the first is traced is not studied; the first still is."""
    hog(study)
    seen: dict[str, Any] = {}

    def other() -> None:
        with study.tracer.start_as_current_span("POST hog/", kind=SpanKind.SERVER, attributes={"http.request.method": "POST"}) as span:
            span.set_attribute("http.route", "hog/")
        seen["result"] = study.results[-1]

    with study.request("hog/", "POST"):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        kept.append(b"\xa5" * (8 * MIB))
    assert seen["result"].memory_top is None
    assert study.results[-1].memory_top is not None


def test_an_evicted_studied_scope_stops_tracing() -> None:
    """A traced scope dropped unfinished (evicted) stops tracemalloc at the next scope's start."""
    tracing = make_tracing(BUDGET, memory_study=1, max_open_scopes=1)
    try:
        hog(tracing)
        span = tracing.tracer.start_span("POST hog/", kind=SpanKind.SERVER, attributes={"http.request.method": "POST"})
        assert tracemalloc.is_tracing()
        with tracing.request("items/", "GET"):  # evicts the open one
            assert not tracemalloc.is_tracing()
        span.end()
    finally:
        tracing.provider.shutdown()
        kept.clear()


def test_off_never_traces(tracing: Tracing) -> None:
    """With the study off (the default): no study object, and tracemalloc never runs, overrun or not."""
    tracing.processor.config = make_tracing(BUDGET).processor.config
    assert tracing.processor._study is None
    for _ in range(3):
        _, traced, _ = hog(tracing)
        assert not traced
    assert [r.memory_top for r in tracing.results] == [None, None, None]
    kept.clear()


def test_tracing_started_by_someone_else_is_left_on_and_subtracted(study: Tracing) -> None:
    """If tracemalloc runs already, what it traced before the scope is not this scope's growth, and it stays on."""
    tracemalloc.start()
    try:
        before = [b"\x02" * (4 * MIB)]
        hog(study)
        second, _, line = hog(study)
        assert tracemalloc.is_tracing()
        found = sites(second.memory_top)
        assert [(lineno, kib // 1024) for file, lineno, kib in found if file.endswith(HERE)] == [(line, 8)]
        del before
    finally:
        tracemalloc.stop()


def test_top_sites_are_bounded() -> None:
    """At most five sites, each `file:line +N KiB`, the whole under MAX_TOP_CHARS; lines under 1 KiB left out."""
    tracemalloc.start()
    try:
        blocks = [bytearray(10_000 * (n + 1)) for n in range(8)]
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    top = top_sites(snapshot, None)
    assert 0 < len(top) <= MAX_TOP_CHARS and len(top.split("; ")) <= 5
    assert all(kib >= 1 for _, _, kib in sites(top))
    assert len(blocks) == 8


def test_decoded_from_an_exported_span(study: Tracing) -> None:
    """`spanformat.decode_span` reads budget.memory.top back, on the result and the memory event."""
    hog(study)
    second, _, _ = hog(study)
    decoded = spanformat.decode_span(study.spans()[-1])
    assert decoded is not None and decoded.memory_top == second.memory_top
    assert decoded.violations[0].details == {"memory.top": second.memory_top}


@pytest.mark.parametrize(
    ("value", "runs"), [("", 0), ("off", 0), ("0", 0), ("false", 0), ("on", 3), (" ON ", 3), ("yes", 3), ("1", 1), ("12", 12)]
)
def test_setting(value: str, runs: int, caplog: pytest.LogCaptureFixture) -> None:
    """OTEL_BUDGET_MEMORY_STUDY: off (default), on (3 runs) or a number of runs."""
    assert Settings.from_env({"OTEL_BUDGET_MEMORY_STUDY": value}).memory_study == runs
    assert caplog.records == []


@pytest.mark.parametrize("value", ["banana", "-2", "0.5", "101"])
def test_bad_setting_logs_and_stays_off(value: str, caplog: pytest.LogCaptureFixture) -> None:
    """A value that is not on/off or 1..100 runs is logged with the valid ones; the study stays off."""
    assert Settings.from_env({"OTEL_BUDGET_MEMORY_STUDY": value}).memory_study == 0
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"otel-budget: OTEL_BUDGET_MEMORY_STUDY={value!r} is not on, off or a number of runs from 1 to 100; "
        "memory study stays off"
    ]


def test_negative_memory_budget_is_the_usual_error(tmp_path: Path) -> None:
    """memory.growth_mb = -5 in a file: the error names the file and the key; `memory.top` is no metric."""
    path = tmp_path / "budgets.toml"
    path.write_text("[http]\nmemory.growth_mb = -5\n")
    with pytest.raises(Exception, match=r"budgets.toml: http.memory.growth_mb: must be a non-negative number, got negative -5"):
        load_config(str(path))
    path.write_text("[http]\nmemory.top = 5\n")
    with pytest.raises(Exception, match=r"budgets.toml: http.memory.top: "):
        load_config(str(path))


def test_tracing_stopped_by_someone_else_mid_run_is_logged_not_raised(study: Tracing) -> None:
    """tracemalloc stopped inside a studied run: the scope is still judged, without sites, and logged."""
    hog(study)
    with study.request("hog/", "POST"):
        kept.append(b"\xa5" * (8 * MIB))
        tracemalloc.stop()
    result = study.results[-1]
    assert ([v.metric for v in result.violations], result.memory_top) == (["memory.growth_mb"], None)
    assert not study.processor._study.tracing  # type: ignore[union-attr]
