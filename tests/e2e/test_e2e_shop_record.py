"""The example shop's scope spans carry exactly the attributes and events recorded in shop_record.json.

shop_record.json was recorded (tests/e2e/record_shop.py) before the core was split into
processor/tally/verdict/spanformat/sinks; any change to what otel-budget writes on a span shows here
as a diff. Re-record it on purpose with `python tests/e2e/record_shop.py > tests/e2e/shop_record.json`.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    expected = (HERE / "shop_record.json").read_text()
    if done.stdout.strip() != expected.strip():
        diff = "\n".join(difflib.unified_diff(expected.splitlines(), done.stdout.splitlines(), "record", "now", lineterm=""))
        pytest.fail(f"what otel-budget writes on the shop's spans changed:\n{diff[:6000]}", pytrace=False)
