"""The README's quick start: the commands a newcomer copies must be complete."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start() -> list[str]:
    """The shell lines of the README's first ```sh block under "## Quick start", comments removed."""
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no ```sh block under ## Quick start"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def environment_for(lines: list[str], program: str) -> dict[str, str]:
    """The variables exported before the line that runs `opentelemetry-instrument <program>`, plus its own."""
    env: dict[str, str] = {}
    for line in lines:
        words = shlex.split(line)
        if words[0] == "export":
            env.update(_pair(word) for word in words[1:])
            continue
        assignments = [word for word in words if re.match(r"^[A-Z_]+=", word)]
        command = words[len(assignments) :]
        if command[:2] == ["opentelemetry-instrument", program]:
            return {**env, **dict(_pair(word) for word in assignments)}
    raise AssertionError(f"no `opentelemetry-instrument {program}` line in the quick start")


def _pair(assignment: str) -> tuple[str, str]:
    name, _, value = assignment.partition("=")
    return name, value


def test_gunicorn_command_sets_what_django_needs() -> None:
    """The production command names the Django settings, the budgets file and a service name."""
    env = environment_for(quick_start(), "gunicorn")
    assert env.get("DJANGO_SETTINGS_MODULE") == "mysite.settings"
    assert env.get("OTEL_BUDGET_CONFIG") == "budgets.toml"
    assert env.get("OTEL_SERVICE_NAME") == "mysite"


def test_celery_worker_command_is_there_with_its_own_service_name() -> None:
    """A Celery worker command runs under opentelemetry-instrument too, as another service."""
    env = environment_for(quick_start(), "celery")
    assert env.get("DJANGO_SETTINGS_MODULE") == "mysite.settings"
    assert env.get("OTEL_BUDGET_CONFIG") == "budgets.toml"
    assert env.get("OTEL_SERVICE_NAME") == "mysite-worker"
