"""The `OTEL_BUDGET_*` environment variables: read in one place, with their defaults and logged fallbacks."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_budget import names

__all__ = ["DEFAULT_MAX_OPEN_SCOPES", "DEFAULT_STUDY_RUNS", "MAX_STUDY_RUNS", "Settings", "compiled_module"]

logger = logging.getLogger("otel_budget")

DEFAULT_MAX_OPEN_SCOPES = 10_000
DEFAULT_STUDY_RUNS = 3  # `OTEL_BUDGET_MEMORY_STUDY=on`: runs traced after an overrun
MAX_STUDY_RUNS = 100
VARIABLES = (
    names.ENV_CONFIG, names.ENV_ENABLED, names.ENV_MAX_SCOPES, names.ENV_METRICS, names.ENV_SAMPLING,
    names.ENV_MEMORY_STUDY, names.ENV_COMPILED,
)  # fmt: skip
_FALSE = {"false", "0", "no", "off"}
_TRUE = {"true", "1", "yes", "on", ""}


@dataclass(frozen=True)
class Settings:
    """The library's settings, from a snapshot of the `OTEL_BUDGET_*` environment variables."""

    # Each value is parsed when first used, once per Settings: a bad one is logged then and its
    # default used, so a disabled install, load_config() or the CLI say nothing about variables
    # they never use.
    environ: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The `OTEL_BUDGET_*` variables of `environ` (default: `os.environ`)."""
        source = os.environ if environ is None else environ
        return cls({name: source[name] for name in VARIABLES if name in source})

    @property
    def config_path(self) -> str | None:
        """`OTEL_BUDGET_CONFIG`: the budgets file (default: none, the built-in defaults)."""
        return self.environ.get(names.ENV_CONFIG) or None

    @functools.cached_property
    def enabled(self) -> bool:
        """`OTEL_BUDGET_ENABLED` (default true); an unrecognised value is logged and counts as true."""
        value = self.environ.get(names.ENV_ENABLED, "").strip().lower()
        if value in _FALSE:
            return False
        if value not in _TRUE:
            logger.error(
                "otel-budget: %s=%r is not a boolean (valid: true, false, 1, 0, yes, no, on, off); staying enabled",
                names.ENV_ENABLED,
                value,
            )
        return True

    @functools.cached_property
    def compiled(self) -> bool:
        """`OTEL_BUDGET_COMPILED` (default true): the compiled span hot path (`_speedups`) where it is
        installed; false runs the pure-Python one. An unrecognised value is logged and counts as true."""
        value = self.environ.get(names.ENV_COMPILED, "").strip().lower()
        if value in _FALSE:
            return False
        if value not in _TRUE:
            logger.error(
                "otel-budget: %s=%r is not a boolean (valid: true, false, 1, 0, yes, no, on, off); using the "
                "compiled hot path where it is installed",
                names.ENV_COMPILED,
                value,
            )
        return True

    @functools.cached_property
    def max_open_scopes(self) -> int:
        """`OTEL_BUDGET_MAX_OPEN_SCOPES` (default 10 000); anything but a positive integer is logged."""
        raw = self.environ.get(names.ENV_MAX_SCOPES, "")
        try:
            value = int(raw) if raw else DEFAULT_MAX_OPEN_SCOPES
        except ValueError:
            value = 0
        if value < 1:
            logger.error(
                "otel-budget: %s=%r is not a positive integer; using %d", names.ENV_MAX_SCOPES, raw, DEFAULT_MAX_OPEN_SCOPES
            )
            return DEFAULT_MAX_OPEN_SCOPES
        return value

    @functools.cached_property
    def record_metrics(self) -> bool | frozenset[str]:
        """`OTEL_BUDGET_METRICS`: true (default: every histogram), false (none), or the metrics to record.

        A list (`duration_ms,db.queries`) records only those histograms, plus the `budget.violations`
        counter: each histogram costs an SDK `record` per scope (docs/benchmarks.md). Unknown names are
        logged with the valid choices and skipped; a value with no known name counts as true.
        """
        raw = self.environ.get(names.ENV_METRICS, "").strip()
        value = raw.lower()
        if value in _FALSE:
            return False
        if value in _TRUE:
            return True
        entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
        from otel_budget.config import choices_hint, valid_metrics  # here: config imports (via tally) _probes, which reads `compiled`

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

    @functools.cached_property
    def sampling(self) -> str:
        """`OTEL_BUDGET_SAMPLING`: `all` (default: every scope tallied, whatever the head sampler decides) or
        `follow` (only the scopes whose span the sampler records); anything else is logged, and counts as `all`."""
        raw = self.environ.get(names.ENV_SAMPLING, "")
        value = raw.strip().lower() or names.SAMPLING_ALL
        if value not in (names.SAMPLING_ALL, names.SAMPLING_FOLLOW):
            logger.error(
                "otel-budget: %s=%r is not a sampling mode (valid: %s, %s); using %s",
                names.ENV_SAMPLING,
                raw,
                names.SAMPLING_ALL,
                names.SAMPLING_FOLLOW,
                names.SAMPLING_ALL,
            )
            return names.SAMPLING_ALL
        return value

    @functools.cached_property
    def memory_study(self) -> int:
        """`OTEL_BUDGET_MEMORY_STUDY`: how many runs of a route/task to trace with tracemalloc after it overran
        `memory.growth_mb` (`_memory_study.MemoryStudy`). `off` (default), `on` (3 runs) or a number of runs
        from 1 to 100; anything else is logged, and the study stays off (tracing has a cost)."""
        raw = self.environ.get(names.ENV_MEMORY_STUDY, "")
        value = raw.strip().lower()
        if value in _FALSE or not value:
            return 0
        if value in ("true", "yes", "on"):
            return DEFAULT_STUDY_RUNS
        runs = int(value) if value.isdigit() else 0
        if not 1 <= runs <= MAX_STUDY_RUNS:
            logger.error(
                "otel-budget: %s=%r is not on, off or a number of runs from 1 to %d; memory study stays off",
                names.ENV_MEMORY_STUDY,
                raw,
                MAX_STUDY_RUNS,
            )
            return 0
        return runs


@functools.cache
def compiled_module() -> Any:
    """`otel_budget._speedups` (the compiled hot path and probes) where it is built and `OTEL_BUDGET_COMPILED`
    does not turn it off; else None. Decided once per process: `_probes` and `processor` ask at import."""
    if not Settings.from_env().compiled:
        return None
    try:
        from otel_budget import _speedups
    except ImportError:  # installed without a C compiler: the pure-Python path
        return None
    return _speedups
