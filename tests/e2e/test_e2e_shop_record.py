"""The example shop's scope spans carry exactly the attributes and events recorded in shop_record.json.

shop_record.json was recorded (tests/e2e/record_shop.py) before the core was split into
processor/tally/verdict/spanformat/sinks; any change to what otel-budget writes on a span shows here
as a diff. Re-record it on purpose with `python tests/e2e/record_shop.py > tests/e2e/shop_record.json`.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from record_shop import machine_dependent

HERE = Path(__file__).resolve().parent


def test_exported_budgets_equal_the_record(shop_database: None) -> None:
    """A fresh process runs the shop's scenarios; what it prints equals the committed record, byte for byte."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, str(HERE / "record_shop.py")], capture_output=True, text=True, timeout=240, env=env, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"record_shop.py failed (exit {done.returncode}):\n{done.stderr[-3000:]}", pytrace=False)
    expected = _without_timing_events(json.loads((HERE / "shop_record.json").read_text()))
    now = _without_timing_events(json.loads(done.stdout))
    if _text(now) != _text(expected):  # as text: the order attributes were written in counts too
        diff = "\n".join(difflib.unified_diff(_text(expected), _text(now), "record", "now", lineterm=""))
        pytest.fail(f"what otel-budget writes on the shop's spans changed:\n{diff[:6000]}", pytrace=False)


def _without_timing_events(scopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events of time metrics come and go with the machine's load (none in the record): set aside, and uncounted."""
    for scope in scopes:
        timing = [e for e in scope["events"] if machine_dependent(str(e.get("budget.metric", "")))]
        scope["events"] = [e for e in scope["events"] if e not in timing]
        scope["attributes"]["budget.violations"] -= len(timing)
    return scopes


def _text(scopes: list[dict[str, Any]]) -> list[str]:
    return json.dumps(scopes, indent=1).splitlines()
