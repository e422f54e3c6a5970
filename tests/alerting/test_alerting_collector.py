"""The collector built from collector-config/builder-config.yaml accepts the shipped configurations."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from alerting_stack import COLLECTOR_CONFIG, REPO

COMPOSE_OVERRIDES = REPO / "dashboards" / "compose" / "collector-overrides.yaml"


def validate(collector_bin: str, *configs: str) -> subprocess.CompletedProcess[str]:
    cmd = [collector_bin, "validate", *(f"--config={c}" for c in configs)]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=60)


def test_validate_accepts_shipped_config(collector_bin: str) -> None:
    """`validate --config=collector-config/config.yaml` exits 0."""
    result = validate(collector_bin, str(COLLECTOR_CONFIG))
    assert result.returncode == 0, result.stdout


def test_validate_accepts_compose_config(collector_bin: str) -> None:
    """The configuration dashboards/compose.yaml runs (shipped config + overrides) is valid too."""
    result = validate(collector_bin, str(COLLECTOR_CONFIG), str(COMPOSE_OVERRIDES))
    assert result.returncode == 0, result.stdout


def test_validate_rejects_a_broken_config(collector_bin: str, tmp_path: Path) -> None:
    """`validate` really checks: a pipeline naming an unknown exporter fails."""
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    config["service"]["pipelines"]["metrics"]["exporters"].append("nonexistent")
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    result = validate(collector_bin, str(broken))
    assert result.returncode != 0
    assert "nonexistent" in result.stdout
