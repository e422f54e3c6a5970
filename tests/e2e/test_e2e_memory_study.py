"""Memory study through the example shop: after the memory hog overruns memory.growth_mb, the next run names
the view's allocating line in `budget.memory.top`; with the study off, tracemalloc never runs in a request.

The studied shop is its own gunicorn (one worker, so the next request reaches the process that saw the
overrun) on its own ports and broker, beside the e2e session's shop; tracemalloc's state is reported by
the hog view itself (`traced` in its response).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from shop_e2e import SHOP_DIR, ShopClient, ShopTraces, running

from processes import ShopProcesses

SRC = Path(__file__).resolve().parents[2] / "src"
VIEWS = SHOP_DIR / "store" / "views.py"
HOG_KIB = 80 * 1024  # the hog's block: b"\xa5" * (80 MiB), one allocation


def allocating_line() -> int:
    """The line of store/views.py where the hog allocates its block, read from the source."""
    (line,) = [n for n, text in enumerate(VIEWS.read_text().splitlines(), 1) if '_held.append(b"\\xa5"' in text]
    return line


@pytest.fixture(scope="module")
def studied_shop(stack_services: None, shop_database: None) -> Iterator[ShopClient]:
    processes = ShopProcesses(  # beside the e2e session's shop: its own ports, pid files and broker
        port=8006,
        partner_port=8016,
        instance="memory-study",
        web_workers=1,
        worker_concurrency=1,
        bsp_delay_ms=200,
        web_service=f"shop-memory-study-{os.getpid()}",
        worker_service=f"shop-memory-study-{os.getpid()}-worker",
        extra_env={
            "OTEL_BUDGET_MEMORY_STUDY": "1",
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/13",
            "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/14",
            "PYTHONPATH": f"{SHOP_DIR}{os.pathsep}{SRC}",
        },
    )
    with running(processes) as client:
        yield client


def test_the_run_after_an_overrun_names_the_views_allocating_line(studied_shop: ShopClient, traces: ShopTraces) -> None:
    """1st hog: 80 MiB > 50, not traced, no sites. 2nd (studied): its event names store/views.py:<line> +81920 KiB."""
    studied_shop.post("memory/release/")
    first = studied_shop.post("memory/hog/")
    second = studied_shop.post("memory/hog/")
    third = studied_shop.post("memory/hog/")  # the study had one run: not traced again
    studied_shop.post("memory/release/")
    assert (first.body["traced"], second.body["traced"], third.body["traced"]) == (False, True, False)
    assert first.body["pid"] == second.body["pid"] == third.body["pid"]

    overrun = traces.wait(first.trace_id).request
    (event,) = overrun.scope.violations
    assert (event.metric, event.limit, event.details, overrun.scope.memory_top) == ("memory.growth_mb", 50, None, None)
    assert "budget.memory.top" not in overrun.attributes

    studied = traces.wait(second.trace_id).request
    (event,) = studied.scope.violations
    assert (event.metric, event.limit) == ("memory.growth_mb", 50) and 78 <= event.actual <= 90
    top = event.details["memory.top"] if event.details else ""
    sites = top.split("; ")
    assert sites[0] == f"store/views.py:{allocating_line()} +{HOG_KIB} KiB", top
    assert all(re.fullmatch(r"\S+:\d+ \+\d+ KiB", site) for site in sites) and len(sites) <= 5 and len(top) <= 400
    raw = [dict(a) for name, a, _ in studied.events if name == "budget.exceeded"]
    assert [a["budget.memory.top"] for a in raw] == [top]
    assert studied.attributes["budget.memory.top"] == top == studied.scope.memory_top

    after = traces.wait(third.trace_id).request
    assert (after.scope.memory_top, [v.metric for v in after.scope.violations]) == (None, ["memory.growth_mb"])


def test_with_the_study_off_tracemalloc_never_runs_in_a_request(shop: ShopClient, traces: ShopTraces) -> None:
    """The session's shop (no OTEL_BUDGET_MEMORY_STUDY): overrun after overrun, never traced, no sites."""
    responses = [shop.post("memory/hog/") for _ in range(3)]
    shop.post("memory/release/")
    shop.post("memory/release/")
    assert [response.body["traced"] for response in responses] == [False, False, False]
    for response in responses:
        span = traces.wait(response.trace_id).request
        assert "budget.memory.top" not in span.attributes and span.scope.memory_top is None
        assert all(not (v.details or {}).get("memory.top") for v in span.scope.violations)
