"""Fixtures for the `otel-budget` command's tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from cli_support import BUDGETS_TOML, emit_workload, make_provider, otlp_json


@pytest.fixture(scope="session")
def workload_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workload as an OTLP/JSON lines file, as the collector's file exporter writes it."""
    path = tmp_path_factory.mktemp("otlp") / "traces.jsonl"
    exporter = InMemorySpanExporter()
    provider = make_provider("shop", exporter)
    emit_workload(provider, t0=1_700_000_000_000_000_000)
    provider.shutdown()
    path.write_text(json.dumps(otlp_json(exporter.get_finished_spans())) + "\n")
    return path


@pytest.fixture(scope="session")
def budgets_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("budgets") / "budgets.toml"
    path.write_text(BUDGETS_TOML)
    return path


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], str]:
    """`write(name, text)` puts a file in the (current) temporary directory and returns its name."""
    monkeypatch.chdir(tmp_path)

    def write(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return name

    return write
