from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from otel_budget import BudgetSpanProcessor, install
from otel_budget._pipeline import members
from otel_budget.activation import is_enabled, metrics_enabled, metrics_setting

from tracing_kit import make_tracing

APP = textwrap.dedent(
    """
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("GET", kind=SpanKind.SERVER, attributes={"http.request.method": "GET"}) as span:
        span.set_attribute("http.route", "orders/")
        for i in range(7):
            with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT,
                                              attributes={"db.system": "postgresql",
                                                          "db.statement": f"SELECT * FROM line WHERE id = {i}"}):
                pass
    """
)


def run_instrumented(tmp_path: Path, **env: str) -> tuple[list[dict[str, Any]], str]:
    """Run APP under `opentelemetry-instrument` with the console exporter; return its spans and stderr."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    bindir = Path(sys.executable).parent
    environment = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "activation-test",
        **env,
    }
    if "OTEL_BUDGET_CONFIG" not in env:
        environment.pop("OTEL_BUDGET_CONFIG", None)
    proc = subprocess.run(
        [str(bindir / "opentelemetry-instrument"), str(bindir / "python"), str(script)],
        capture_output=True, text=True, env=environment, timeout=60, check=True,
    )  # fmt: skip
    decoder = json.JSONDecoder()
    spans, text, index = [], proc.stdout, 0
    while (start := text.find("{", index)) >= 0:
        span, index = decoder.raw_decode(text, start)
        spans.append(span)
    return spans, proc.stderr


def server_span(spans: list[dict[str, Any]]) -> dict[str, Any]:
    (span,) = [s for s in spans if s["kind"] == "SpanKind.SERVER"]
    return span


def test_zero_code_under_opentelemetry_instrument_with_distro(tmp_path: Path) -> None:
    """With opentelemetry-distro installed, the exported request span carries the tally and the event."""
    spans, _ = run_instrumented(tmp_path)
    span = server_span(spans)
    assert span["attributes"]["budget.db.postgresql.queries"] == 7
    assert span["attributes"]["budget.violations"] == 1
    (event,) = span["events"]
    assert event["name"] == "budget.exceeded"
    assert event["attributes"]["budget.metric"] == "db.repeated_queries"
    assert event["attributes"]["budget.statement"] == "SELECT * FROM line WHERE id = ?"


def test_disabled_by_env(tmp_path: Path) -> None:
    """OTEL_BUDGET_ENABLED=false leaves spans untouched."""
    spans, _ = run_instrumented(tmp_path, OTEL_BUDGET_ENABLED="false")
    span = server_span(spans)
    assert not any(key.startswith("budget.") for key in span["attributes"])
    assert span["events"] == []


def test_bad_file_at_start_logs_and_marks_spans(tmp_path: Path) -> None:
    """A bad budgets file does not crash the app: defaults apply, an ERROR is logged, spans say why."""
    bad = tmp_path / "budgets.toml"
    bad.write_text("[http]\ndb.querys = 3\n")
    spans, stderr = run_instrumented(tmp_path, OTEL_BUDGET_CONFIG=str(bad))
    assert "budgets file unusable, running on built-in defaults" in stderr
    assert f"{bad}: http.db.querys: unknown metric; did you mean 'db.queries'?" in stderr
    span = server_span(spans)
    assert span["attributes"]["budget.config_error"].startswith(f"{bad}: http.db.querys: unknown metric")
    assert [e["attributes"]["budget.metric"] for e in span["events"]] == ["db.repeated_queries"]


def test_file_from_env(tmp_path: Path) -> None:
    """OTEL_BUDGET_CONFIG is used by the zero-code path."""
    good = tmp_path / "budgets.toml"
    good.write_text("[http]\ndb.queries = 2\ndb.repeated_queries = 100\n")
    spans, _ = run_instrumented(tmp_path, OTEL_BUDGET_CONFIG=str(good))
    (event,) = server_span(spans)["events"]
    assert (event["attributes"]["budget.metric"], event["attributes"]["budget.actual"]) == ("db.queries", 7)


def test_exporter_before_processor_still_exports_events() -> None:
    """A batch exporter added before ours (as post_instrument does) still sees the events."""
    tracing = make_tracing({"http": {"db.queries": 0}}, batch=True)
    with tracing.request():
        tracing.db("SELECT 1")
    assert set(tracing.events("GET items/")) == {"db.queries"}


def test_install_is_idempotent() -> None:
    """Installing twice on one provider adds one processor."""
    provider = TracerProvider()
    first = install(provider)
    assert first is not None and install(provider) is first
    assert members(provider._active_span_processor) == [first]  # noqa: SLF001 - what idempotent means


def test_install_on_non_sdk_provider_warns(caplog: pytest.LogCaptureFixture) -> None:
    """Without an SDK provider there is nothing to add to: a warning, no exception."""
    from opentelemetry.trace import NoOpTracerProvider

    assert install(NoOpTracerProvider()) is None
    assert "is not the SDK's; budgets are off" in caplog.text


@pytest.mark.parametrize(("value", "enabled"), [("false", False), ("0", False), ("OFF", False), ("true", True), ("", True)])
def test_enabled_values(monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool) -> None:
    """OTEL_BUDGET_ENABLED accepts the usual boolean spellings."""
    monkeypatch.setenv("OTEL_BUDGET_ENABLED", value)
    assert is_enabled() is enabled


def test_enabled_garbage_logs_and_stays_on(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An unknown value is an error in the log, never a crash; the library stays on."""
    monkeypatch.setenv("OTEL_BUDGET_ENABLED", "maybe")
    assert is_enabled() is True
    assert "OTEL_BUDGET_ENABLED='maybe' is not a boolean (valid: true, false" in caplog.text


@pytest.mark.parametrize(("value", "recorded"), [("false", 0), ("true", 1)])
def test_metrics_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, value: str, recorded: int) -> None:
    """OTEL_BUDGET_METRICS=false installs a processor that records no histograms; spans keep their tally."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.trace import SpanKind

    monkeypatch.setenv("OTEL_BUDGET_METRICS", value)
    reader = InMemoryMetricReader()
    provider = TracerProvider()
    processor = install(provider, meter_provider=MeterProvider([reader]))
    assert processor is not None
    with provider.get_tracer("t").start_as_current_span("GET", kind=SpanKind.SERVER) as span:
        pass
    assert "budget.duration_ms" in span.attributes
    data = reader.get_metrics_data()
    names = {m.name for r in (data.resource_metrics if data else []) for s in r.scope_metrics for m in s.metrics}
    assert ("budget.duration" in names) is bool(recorded)  # the histogram of duration_ms


def _recorded_metric_names(reader: Any) -> set[str]:
    data = reader.get_metrics_data()
    return {m.name for r in (data.resource_metrics if data else []) for s in r.scope_metrics for m in s.metrics}


def _one_request_over_budget(processor_provider: TracerProvider) -> None:
    from opentelemetry.trace import SpanKind

    tracer = processor_provider.get_tracer("t")
    with tracer.start_as_current_span("GET", kind=SpanKind.SERVER, attributes={"http.route": "r/"}):
        for _ in range(6):  # over the built-in db.repeated_queries = 5
            query = {"db.system": "sqlite", "db.statement": "SELECT 1"}
            with tracer.start_as_current_span("q", kind=SpanKind.CLIENT, attributes=query):
                pass


def test_metrics_list_records_only_those_histograms(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_BUDGET_METRICS=a,b: histograms for a and b only; the violations counter as always."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setenv("OTEL_BUDGET_METRICS", " duration_ms , db.sqlite.queries ")
    reader = InMemoryMetricReader()
    provider = TracerProvider()
    assert install(provider, meter_provider=MeterProvider([reader])) is not None
    _one_request_over_budget(provider)
    assert _recorded_metric_names(reader) == {"budget.duration", "budget.db.sqlite.queries", "budget.violations"}


def test_metrics_list_with_a_typo_names_it_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_BUDGET_METRICS", "duration_ms,db.querys")
    assert metrics_setting() == frozenset({"duration_ms"})
    assert (
        "OTEL_BUDGET_METRICS: 'db.querys' is not a metric; did you mean 'db.queries'? "
        "(valid: true, false, or a comma-separated list of: cpu_ms" in caplog.text
    )
    assert caplog.text.rstrip().endswith("skipping it")


def test_metrics_value_with_no_metric_records_everything(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A value that is neither a boolean nor names a metric is logged; nothing is lost (all recorded)."""
    monkeypatch.setenv("OTEL_BUDGET_METRICS", "maybe")
    assert metrics_setting() is True
    assert metrics_enabled() is True
    assert "'maybe' is not a metric" in caplog.text
    assert "recording every metric" in caplog.text


def test_processor_refuses_unknown_metric_names() -> None:
    with pytest.raises(ValueError, match=r"record_metrics: 'db.querys' is not a metric; did you mean 'db.queries'\?"):
        BudgetSpanProcessor(record_metrics=["duration_ms", "db.querys"])
    assert BudgetSpanProcessor(record_metrics="duration_ms")._metrics is not None  # noqa: SLF001 - one name, as a str
