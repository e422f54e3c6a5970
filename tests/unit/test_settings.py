from __future__ import annotations

import logging

import pytest

from otel_budget.settings import DEFAULT_MAX_OPEN_SCOPES, Settings


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]


def test_defaults_with_no_variable(caplog: pytest.LogCaptureFixture) -> None:
    """No OTEL_BUDGET_* variable: no file, enabled, 10 000 open scopes, every metric; nothing logged."""
    settings = Settings.from_env({"PATH": "/bin"})
    assert settings.environ == {}
    assert (settings.config_path, settings.enabled, settings.max_open_scopes, settings.record_metrics) == (
        None,
        True,
        DEFAULT_MAX_OPEN_SCOPES,
        True,
    )
    assert DEFAULT_MAX_OPEN_SCOPES == 10_000
    assert caplog.records == []


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env() with no argument takes the process environment, and only our variables."""
    monkeypatch.setenv("OTEL_BUDGET_CONFIG", "budgets.toml")
    monkeypatch.setenv("OTEL_BUDGET_STACK_DIR", "/tmp/elsewhere")
    for name in ("OTEL_BUDGET_ENABLED", "OTEL_BUDGET_MAX_OPEN_SCOPES", "OTEL_BUDGET_METRICS", "OTEL_BUDGET_COMPILED"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env().environ == {"OTEL_BUDGET_CONFIG": "budgets.toml"}


@pytest.mark.parametrize(("value", "path"), [("budgets.toml", "budgets.toml"), ("", None)])
def test_config_path(value: str, path: str | None) -> None:
    """OTEL_BUDGET_CONFIG names the budgets file; empty means none."""
    assert Settings.from_env({"OTEL_BUDGET_CONFIG": value}).config_path == path


@pytest.mark.parametrize(("value", "enabled"), [("false", False), (" Off ", False), ("0", False), ("yes", True), ("", True)])
def test_enabled(value: str, enabled: bool) -> None:
    """OTEL_BUDGET_ENABLED takes the usual boolean spellings."""
    assert Settings.from_env({"OTEL_BUDGET_ENABLED": value}).enabled is enabled


def test_bad_enabled_logs_and_stays_on(caplog: pytest.LogCaptureFixture) -> None:
    """An unrecognised OTEL_BUDGET_ENABLED is logged once and counts as true."""
    settings = Settings.from_env({"OTEL_BUDGET_ENABLED": "Maybe"})
    assert settings.enabled is True
    assert settings.enabled is True
    assert errors(caplog) == [
        "otel-budget: OTEL_BUDGET_ENABLED='maybe' is not a boolean (valid: true, false, 1, 0, yes, no, on, off); "
        "staying enabled"
    ]


def test_max_open_scopes() -> None:
    """OTEL_BUDGET_MAX_OPEN_SCOPES is a positive integer."""
    assert Settings.from_env({"OTEL_BUDGET_MAX_OPEN_SCOPES": "250"}).max_open_scopes == 250


@pytest.mark.parametrize("value", ["abc", "0", "-5", "10.5"])
def test_bad_max_open_scopes_logs_and_falls_back(value: str, caplog: pytest.LogCaptureFixture) -> None:
    """Anything but a positive integer: an ERROR naming the variable, and the default 10 000."""
    assert Settings.from_env({"OTEL_BUDGET_MAX_OPEN_SCOPES": value}).max_open_scopes == 10_000
    assert errors(caplog) == [f"otel-budget: OTEL_BUDGET_MAX_OPEN_SCOPES={value!r} is not a positive integer; using 10000"]


@pytest.mark.parametrize(
    ("value", "recorded"),
    [("false", False), ("NO", False), ("true", True), ("", True), (" duration_ms , db.queries ", frozenset({"duration_ms", "db.queries"}))],
)
def test_record_metrics(value: str, recorded: bool | frozenset[str], caplog: pytest.LogCaptureFixture) -> None:
    """OTEL_BUDGET_METRICS: a boolean, or the metrics whose histograms to record."""
    assert Settings.from_env({"OTEL_BUDGET_METRICS": value}).record_metrics == recorded
    assert caplog.records == []


def test_bad_metrics_logs_and_records_every_metric(caplog: pytest.LogCaptureFixture) -> None:
    """An OTEL_BUDGET_METRICS naming no metric is logged with the choices and counts as true."""
    assert Settings.from_env({"OTEL_BUDGET_METRICS": "maybe"}).record_metrics is True
    (message,) = errors(caplog)
    assert message.startswith(
        "otel-budget: OTEL_BUDGET_METRICS: 'maybe' is not a metric (valid: true, false, or a comma-separated list of: cpu_ms, "
    )
    assert message.endswith("; recording every metric")


def test_a_value_is_parsed_only_when_used(caplog: pytest.LogCaptureFixture) -> None:
    """Reading one setting logs nothing about the other variables (a disabled install stays quiet)."""
    settings = Settings.from_env(
        {"OTEL_BUDGET_ENABLED": "false", "OTEL_BUDGET_MAX_OPEN_SCOPES": "lots", "OTEL_BUDGET_METRICS": "maybe"}
    )
    assert settings.enabled is False
    assert caplog.records == []


@pytest.mark.parametrize(("value", "mode"), [("", "all"), ("all", "all"), (" Follow ", "follow")])
def test_sampling(value: str, mode: str) -> None:
    """OTEL_BUDGET_SAMPLING: all (default) or follow, case and spaces aside."""
    assert Settings.from_env({"OTEL_BUDGET_SAMPLING": value}).sampling == mode


def test_bad_sampling_logs_and_tallies_all(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown OTEL_BUDGET_SAMPLING is logged with the valid values and counts as all."""
    assert Settings.from_env({"OTEL_BUDGET_SAMPLING": "sampled"}).sampling == "all"
    assert errors(caplog) == ["otel-budget: OTEL_BUDGET_SAMPLING='sampled' is not a sampling mode (valid: all, follow); using all"]
