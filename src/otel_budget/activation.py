"""Zero-code activation, `install()` for hand-built providers, and the tracing the pytest plugin sets up."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from otel_budget import names
from otel_budget._pipeline import fuse
from otel_budget.config import BudgetConfig, ConfigError, load_config
from otel_budget.killed import watch_celery
from otel_budget.processor import BudgetSpanProcessor
from otel_budget.sampling import wrap_sampler
from otel_budget.settings import Settings

__all__ = [
    "django_unconfigured",
    "install",
    "instrument_installed",
    "is_enabled",
    "metrics_enabled",
    "metrics_setting",
    "post_instrument",
    "pre_instrument",
    "set_up_tracing",
]

logger = logging.getLogger("otel_budget")

# Instrumentations the pytest plugin switches on when they are installed: (module, class).
INSTRUMENTORS = (
    ("opentelemetry.instrumentation.django", "DjangoInstrumentor"),
    ("opentelemetry.instrumentation.psycopg2", "Psycopg2Instrumentor"),
    ("opentelemetry.instrumentation.psycopg", "PsycopgInstrumentor"),
    ("opentelemetry.instrumentation.pymongo", "PymongoInstrumentor"),
    ("opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor"),
    ("opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
    ("opentelemetry.instrumentation.urllib", "URLLibInstrumentor"),
    ("opentelemetry.instrumentation.celery", "CeleryInstrumentor"),
)


def is_enabled() -> bool:
    """`OTEL_BUDGET_ENABLED` (default true); an unrecognised value is logged and counts as true."""
    return Settings.from_env().enabled


def metrics_enabled() -> bool:
    """`OTEL_BUDGET_METRICS` is not false: some `budget.*` metrics are recorded."""
    return metrics_setting() is not False


def metrics_setting() -> bool | frozenset[str]:
    """`OTEL_BUDGET_METRICS`: true (default), false, or the metrics to record (`Settings.record_metrics`)."""
    return Settings.from_env().record_metrics


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

    With `OTEL_BUDGET_SAMPLING=all` (the default) it also wraps the provider's sampler so that every scope is
    tallied whatever the sampler decides (`sampling.ScopeSampler`): call it before tracers are taken from
    the provider (before instrumenting), as they keep the sampler they were given.
    Returns the processor, or None when disabled or when no SDK TracerProvider is configured.
    """
    settings = Settings.from_env()
    if not settings.enabled:
        logger.info("otel-budget: disabled by %s", names.ENV_ENABLED)
        return None
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        logger.warning(
            "otel-budget: the TracerProvider %r is not the SDK's; budgets are off. Install opentelemetry-distro "
            "or call otel_budget.install(your_provider).",
            provider,
        )
        return None
    existing = _installed(provider)
    if existing is not None:
        return existing
    config, error = load_config_or_default(config_path if config_path is not None else settings.config_path)
    return _add_processor(provider, settings, config, error, options)


def set_up_tracing(config: BudgetConfig, settings: Settings) -> tuple[BudgetSpanProcessor, str]:
    """Our processor on the global SDK TracerProvider (set one up if there is none), and how it was done.

    A new processor enforces `config`; one already installed on the provider is returned as it is.
    """
    provider = trace.get_tracer_provider()
    if hasattr(provider, "add_span_processor"):
        setup = "reusing the configured TracerProvider"
    else:
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        setup = "own TracerProvider (no exporter)"
    existing = _installed(provider)
    if existing is not None:
        return existing, setup
    return _add_processor(provider, settings, config, None, {}), setup


def _installed(provider: Any) -> BudgetSpanProcessor | None:
    return getattr(provider, "_otel_budget_processor", None)


def _add_processor(
    provider: Any, settings: Settings, config: BudgetConfig, error: str | None, options: dict[str, Any]
) -> BudgetSpanProcessor:
    options.setdefault("max_open_scopes", settings.max_open_scopes)
    options.setdefault("record_metrics", settings.record_metrics)
    options.setdefault("sampling", settings.sampling)
    options.setdefault("memory_study", settings.memory_study)
    processor = BudgetSpanProcessor(config=config, config_error=error, **options)
    provider.add_span_processor(processor)
    fuse(provider)  # the SDK then calls one processor per hook, ours compiled in it (_pipeline.py)
    if options["sampling"] == names.SAMPLING_ALL and not wrap_sampler(provider, processor.tally_for):
        logger.warning("otel-budget: the sampler of %r cannot be wrapped; only sampled scopes are tallied", provider)
    setattr(provider, "_otel_budget_processor", processor)  # noqa: B010 - marks the provider as done
    _watch_killed_tasks(processor, provider)
    logger.debug("otel-budget: installed with budgets from %s", config.source)
    return processor


def instrument_installed() -> list[Any]:
    """Switch on the instrumentations whose library is installed and not yet instrumented; return them."""
    try:
        from opentelemetry.instrumentation.dependencies import DependencyConflictError
    except ImportError:  # no instrumentation package installed (otel-budget without extras)
        return []

    done = []
    for module_name, class_name in INSTRUMENTORS:
        if module_name.endswith(".django") and not _django_configured():
            continue
        try:
            instrumentor = getattr(importlib.import_module(module_name), class_name)()
        except ImportError:
            continue
        if instrumentor.is_instrumented_by_opentelemetry:
            continue
        try:
            instrumentor.instrument(raise_exception_on_conflict=True)
        except DependencyConflictError:
            continue  # the library itself is not installed (or not a supported version)
        except Exception:
            logger.exception("otel-budget: %s failed; not instrumented", class_name)
            continue
        done.append(instrumentor)
    return done


def _django_configured() -> bool:
    try:
        from django.conf import settings
    except ImportError:
        return False
    return bool(settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE"))


def pre_instrument(**_: Any) -> None:
    """Entry point `opentelemetry_pre_instrument`: after the configurator built the provider, before the
    instrumentors take their tracers, which then get the wrapped sampler (docs/sampling.md)."""
    post_instrument()


def django_unconfigured() -> bool:
    """Django is installed but its settings are not configured: its instrumentation stays off."""
    return importlib.util.find_spec("django") is not None and not _django_configured()


def _watch_killed_tasks(processor: BudgetSpanProcessor, provider: Any) -> None:
    """Where Celery is installed, the worker's main process reports tasks killed in its pool (killed.py)."""
    try:
        reporter = watch_celery(processor, provider)
    except Exception:
        logger.exception("otel-budget: could not watch Celery for killed tasks; they go unreported")
        return
    setattr(provider, "_otel_budget_killed_tasks", reporter)  # noqa: B010 - the signals hold it weakly


def post_instrument(**_: Any) -> None:
    """Entry point `opentelemetry_post_instrument`: runs after the distro's configurator set up the SDK."""
    try:
        install()
    except Exception:
        logger.exception("otel-budget: could not install; the application runs without budgets")
