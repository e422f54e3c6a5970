"""The memory-study cases (memory_study_cases.py), each in a fresh interpreter's pytest run.

They measure the process: its resident set size (an 8 MiB block must show as growth) and
`tracemalloc`, which is process-wide. Run after the rest of the suite in one process, the RSS they
read also moves with what hundreds of earlier tests left allocated, freed and cached by the
allocator, and the cases stop being about the study. A child interpreter gives them the process a
fresh service has; its pytest run must pass every case.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("memory_study_cases.py")
ROOT = Path(__file__).resolve().parents[2]


def test_memory_study_cases_pass_in_a_fresh_interpreter() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    passed = re.fullmatch(r"(\d+) passed in .*", summary)  # nothing failed, skipped or deselected
    assert passed and int(passed.group(1)) >= len(re.findall(r"^def test_", CASES.read_text(), re.M)), summary
