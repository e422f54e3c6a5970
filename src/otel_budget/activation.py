"""Zero-code activation under `opentelemetry-instrument`, and `install()` for hand-built providers."""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import trace

from otel_budget import names
from otel_budget.config import BudgetConfig, ConfigError, choices_hint, load_config, valid_metrics
from otel_budget.processor import BudgetSpanProcessor

__all__ = ["install", "is_enabled", "metrics_enabled", "metrics_setting", "post_instrument"]

logger = logging.getLogger("otel_budget")
_FALSE = {"false", "0", "no", "off"}
_TRUE = {"true", "1", "yes", "on", ""}


def is_enabled() -> bool:
    """`OTEL_BUDGET_ENABLED` (default true); an unrecognised value is logged and counts as true."""
    return _flag(names.ENV_ENABLED, "staying enabled")


def metrics_enabled() -> bool:
    """`OTEL_BUDGET_METRICS` is not false: some `budget.*` metrics are recorded."""
    return metrics_setting() is not False


def metrics_setting() -> bool | frozenset[str]:
    """`OTEL_BUDGET_METRICS`: true (default: every histogram), false (none), or the metrics to record.

    A list (`duration_ms,db.queries`) records only those histograms, plus the `budget.violations`
    counter: each histogram costs an SDK `record` per scope (docs/benchmarks.md). Unknown names are
    logged with the valid choices and skipped; a value with no known name counts as true.
    """
    raw = os.environ.get(names.ENV_METRICS, "").strip()
    value = raw.lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return True
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    known = frozenset(valid_metrics())
    wanted = frozenset(entry for entry in entries if entry in known)
    for entry in entries:
        if entry not in known:
            logger.error(
                "otel-budget: %s: %r is not a metric%s; %s",
                names.ENV_METRICS,
                entry,
                choices_hint(entry, known, booleans=True),
                "skipping it" if wanted else "recording every metric",
            )
    return wanted or True


def _flag(variable: str, fallback: str) -> bool:
    value = os.environ.get(variable, "").strip().lower()
    if value in _FALSE:
        return False
    if value not in _TRUE:
        logger.error(
            "otel-budget: %s=%r is not a boolean (valid: true, false, 1, 0, yes, no, on, off); %s",
            variable,
            value,
            fallback,
        )
    return True


def _max_open_scopes() -> int:
    raw = os.environ.get(names.ENV_MAX_SCOPES, "")
    try:
        value = int(raw) if raw else 10_000
    except ValueError:
        value = 0
    if value < 1:
        logger.error("otel-budget: %s=%r is not a positive integer; using 10000", names.ENV_MAX_SCOPES, raw)
        return 10_000
    return value


def load_config_or_default(path: str | None = None) -> tuple[BudgetConfig, str | None]:
    """The configured budgets; on a bad file: built-in defaults, an ERROR log, and the reason."""
    try:
        return load_config(path), None
    except ConfigError as exc:
        logger.error(
            "otel-budget: budgets file unusable, running on built-in defaults (db.repeated_queries = 5, "
            "external.untimed_calls = 0) "
            "until it is fixed; every scope span carries budget.config_error:\n%s",
            exc,
        )
        return BudgetConfig(), str(exc)


def install(tracer_provider: Any = None, *, config_path: str | None = None, **options: Any) -> BudgetSpanProcessor | None:
    """Add a `BudgetSpanProcessor` to `tracer_provider` (default: the global one); idempotent.

    Returns the processor, or None when disabled or when no SDK TracerProvider is configured.
    """
    if not is_enabled():
        logger.info("otel-budget: disabled by %s", names.ENV_ENABLED)
        return None
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    add = getattr(provider, "add_span_processor", None)
    if add is None:
        logger.warning(
            "otel-budget: the TracerProvider %r is not the SDK's; budgets are off. Install opentelemetry-distro "
            "or call otel_budget.install(your_provider).",
            provider,
        )
        return None
    existing = getattr(provider, "_otel_budget_processor", None)
    if existing is not None:
        return existing  # type: ignore[no-any-return]
    config, error = load_config_or_default(config_path)
    options.setdefault("max_open_scopes", _max_open_scopes())
    options.setdefault("record_metrics", metrics_setting())
    processor = BudgetSpanProcessor(config=config, config_error=error, **options)
    add(processor)
    setattr(provider, "_otel_budget_processor", processor)  # noqa: B010 - marks the provider as done
    logger.debug("otel-budget: installed with budgets from %s", config.source)
    return processor


def post_instrument(**_: Any) -> None:
    """Entry point `opentelemetry_post_instrument`: runs after the distro's configurator set up the SDK."""
    try:
        install()
    except Exception:
        logger.exception("otel-budget: could not install; the application runs without budgets")
