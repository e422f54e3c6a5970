"""dashboards/alerts.yml: promtool accepts it, its unit tests pass and cover every rule."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml
from alerting_stack import ALERTS, ALERTS_TEST


def run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, cwd=ALERTS.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    assert result.returncode == 0, f"`{' '.join(cmd)}` failed:\n{result.stdout}"
    return result.stdout


def test_promtool_check_rules(promtool: str) -> None:
    """`promtool check rules` accepts the rules file."""
    output = run([promtool, "check", "rules", ALERTS.name])
    assert "SUCCESS" in output


def test_promtool_test_rules(promtool: str) -> None:
    """`promtool test rules` passes every unit test."""
    output = run([promtool, "test", "rules", ALERTS_TEST.name])
    assert "SUCCESS" in output and "FAILED" not in output


def test_every_rule_has_firing_and_quiet_cases(alert_rules: list[dict[str, Any]]) -> None:
    """Each alert is expected firing at some eval time and expected silent at another."""
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules}
    assert names - firing == set(), "rules without a firing case"
    assert names - silent == set(), "rules without a not-firing case"


def test_every_rule_has_for_severity_and_annotations(alert_rules: list[dict[str, Any]]) -> None:
    """An alert says how long, how bad, and what to look at."""
    for rule in alert_rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]
        assert f"docs/alerting.md#{rule['alert'].lower()}" in rule["annotations"]["runbook"], rule["alert"]


def test_no_alert_on_absence(alert_rules: list[dict[str, Any]]) -> None:
    """A budgeted route gone quiet is not an alert (docs/alerting.md): no absent() rules."""
    for rule in alert_rules:
        assert "absent" not in rule["expr"], rule["alert"]


def test_violation_rules_read_the_one_producer(alert_rules: list[dict[str, Any]]) -> None:
    """Rules sum the library's budget_violations_total as is; the connector's count is another name."""
    for rule in alert_rules:
        assert "otel_scope" not in rule["expr"], rule["alert"]
        assert "budget_exceeded_events_total" not in rule["expr"], rule["alert"]
    assert "budget_exceeded_events_total{" in ALERTS_TEST.read_text(), "no case shows the connector's count left out"
