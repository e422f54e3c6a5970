"""The budgets file: parsing, validation and rule lookup."""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_budget import names
from otel_budget.tally import CompiledLimits, compile_limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BudgetConfig",
    "BudgetRule",
    "ConfigError",
    "ConfigProblem",
    "DEFAULT_LIMITS",
    "Override",
    "choices_hint",
    "load_config",
    "parse_config",
    "valid_metrics",
    "validate_limits",
]

BUILTIN_SOURCE = "<built-in defaults>"
# With no file: measure everything, enforce only the N+1 threshold and the zen's "every external call has
# a timeout". A file's sections start from these (and may lift them).
DEFAULT_LIMITS: Mapping[str, float] = {names.DB_REPEATED_QUERIES: 5, names.EXTERNAL_UNTIMED_CALLS: 0}

SECTIONS = {names.RULE_HTTP: "route", names.RULE_CELERY: "task", names.RULE_SCOPE: None}
HTTP_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
_OVERRIDE_KEYS = {"route": ("match", "method"), "task": ("match",)}
# A budgets file is a few hundred bytes; anything this big is a mistake.
MAX_FILE_BYTES = 1024 * 1024
# Largest limit accepted: beyond this a float loses integer precision.
MAX_LIMIT = 2.0**53


def valid_metrics() -> tuple[str, ...]:
    """Every metric name a budget may name, sorted."""
    per_system = [
        metric(system)
        for system in names.DB_SYSTEMS
        for metric in (names.db_queries_metric, names.db_duration_metric)
    ]
    return tuple(sorted((*names.FIXED_METRICS, *per_system)))


_VALID_METRICS = frozenset(valid_metrics())
# `db_queries=` keyword arguments for in-code budgets.
_KEYWORD_METRICS = {metric.replace(".", "_"): metric for metric in _VALID_METRICS}


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a budgets file."""

    key: str
    message: str


class ConfigError(ValueError):
    """A budgets file or in-code budget that cannot be used; lists every problem found."""

    def __init__(self, source: str, problems: Iterable[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [f"{source}: {_printable(p.key)}: {p.message}" if p.key else f"{source}: {p.message}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class BudgetRule:
    """The limits in force for one scope, and which rule set each of them."""

    name: str
    limits: Mapping[str, float]
    sources: Mapping[str, str]
    # The limits as the tally compares them, compiled once here so that the hot path only reads them.
    compiled: CompiledLimits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", compile_limits(self.limits))

    def overridden(self, name: str, limits: Mapping[str, float]) -> BudgetRule:
        """This rule with `limits` replacing what they name, credited to rule `name`."""
        if not limits:
            return self
        merged = {**self.limits, **limits}
        sources = {**self.sources, **dict.fromkeys(limits, name)}
        return BudgetRule(name=name, limits=merged, sources=sources)


@dataclass(frozen=True)
class Override:
    """A `[[http.route]]` or `[[celery.task]]` table."""

    match: str
    method: str | None
    limits: Mapping[str, float]
    pattern: re.Pattern[str] = field(repr=False, compare=False)

    @property
    def rule_name(self) -> str:
        return self.match

    def matches(self, name: str, method: str | None) -> bool:
        if self.method is not None and (method or "").upper() != self.method:
            return False
        return self.pattern.match(name) is not None


@dataclass(frozen=True)
class BudgetConfig:
    """Budgets for HTTP requests, Celery tasks and explicit scopes."""

    source: str = BUILTIN_SOURCE
    sections: Mapping[str, BudgetRule] = field(default_factory=dict)
    routes: tuple[Override, ...] = ()
    tasks: tuple[Override, ...] = ()
    _cache: dict[tuple[str, str, str | None], BudgetRule] = field(default_factory=dict, repr=False, compare=False)

    def section(self, kind: str) -> BudgetRule:
        rule = self.sections.get(kind)
        if rule is None:
            limits = dict(DEFAULT_LIMITS)
            rule = BudgetRule(name=kind, limits=limits, sources=dict.fromkeys(limits, kind))
        return rule

    def rule_for(self, kind: str, name: str | None, method: str | None = None) -> BudgetRule:
        """The rule for a scope of `kind` (`http`, `celery`, `scope`) named `name` (route or task)."""
        key = (kind, name or "", method)
        rule = self._cache.get(key)
        if rule is None:
            rule = self._resolve(kind, name, method)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key] = rule
        return rule

    def _resolve(self, kind: str, name: str | None, method: str | None) -> BudgetRule:
        base = self.section(kind)
        overrides = self.routes if kind == names.RULE_HTTP else self.tasks if kind == names.RULE_CELERY else ()
        prefix = names.ROUTE_RULE_PREFIX if kind == names.RULE_HTTP else names.TASK_RULE_PREFIX
        if name is None:
            return base
        for override in overrides:
            if override.matches(name, method):
                return base.overridden(prefix + override.match, override.limits)
        return base


def load_config(path: str | os.PathLike[str] | None = None) -> BudgetConfig:
    """Read the budgets file at `path` (default: `$OTEL_BUDGET_CONFIG`; none: built-in defaults).

    Raises:
        ConfigError: the file is missing, not TOML, or not a valid budgets file.
    """
    if path is None:
        from otel_budget.settings import Settings  # settings.py names its choices with this module's metrics

        path = Settings.from_env().config_path
    if path is None:
        return BudgetConfig()
    source = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to must not hang the service's start.
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, a device (/dev/zero), a FIFO
                raise ConfigError(source, [ConfigProblem("", "not a regular file")])
            raw = fh.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(source, [ConfigProblem("", f"larger than {MAX_FILE_BYTES // 1024} KiB")])
        data = tomllib.loads(raw.decode("utf-8"))
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(source, [ConfigProblem("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [ConfigProblem("", "not a regular file")]) from None
    except OSError as exc:
        raise ConfigError(source, [ConfigProblem("", f"cannot read: {exc.strerror}")]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [ConfigProblem("", f"not valid TOML: {exc}")]) from None
    except (RecursionError, ValueError) as exc:  # nested deeper than the stack; an integer of over 4300 digits
        raise ConfigError(source, [ConfigProblem("", f"not usable TOML: {exc}")]) from None
    try:
        return parse_config(data, source=source)
    except RecursionError:
        raise ConfigError(source, [ConfigProblem("", "keys nested too deeply")]) from None


def parse_config(data: Mapping[str, Any], *, source: str = "<string>") -> BudgetConfig:
    """Validate parsed TOML `data` into a `BudgetConfig`, collecting every problem."""
    problems: list[ConfigProblem] = []
    sections: dict[str, BudgetRule] = {}
    overrides: dict[str, list[Override]] = {"route": [], "task": []}
    for section, body in data.items():
        if section not in SECTIONS:
            problems.append(ConfigProblem(section, "unknown section" + choices_hint(section, SECTIONS)))
            continue
        if not isinstance(body, dict):
            problems.append(ConfigProblem(section, f"must be a table ([{section}]), got {_type(body)}"))
            continue
        sub = SECTIONS[section]
        limits = _parse_limits(body, section, problems, allowed_tables=(sub,) if sub else ())
        limits = {**DEFAULT_LIMITS, **limits}
        sources = dict.fromkeys(limits, section)
        sections[section] = BudgetRule(name=section, limits=limits, sources=sources)
        if sub and sub in body:
            overrides[sub] = _parse_overrides(body[sub], f"{section}.{sub}", sub, problems)
    if problems:
        raise ConfigError(source, problems)
    return BudgetConfig(source=source, sections=sections, routes=tuple(overrides["route"]), tasks=tuple(overrides["task"]))


def validate_limits(limits: Mapping[str, Any], *, source: str = "<code>") -> dict[str, float]:
    """Check in-code limits (`{"db.queries": 10}` or `db_queries=10`) and return them by metric name.

    Raises:
        ConfigError: an unknown metric or a bad value.
    """
    problems: list[ConfigProblem] = []
    result: dict[str, float] = {}
    for key, value in limits.items():
        metric = _KEYWORD_METRICS.get(key, key)
        if metric not in _VALID_METRICS:
            problems.append(ConfigProblem(key, "unknown metric" + choices_hint(key, _VALID_METRICS, keyword="." not in key)))
            continue
        checked = _check_value(metric, value, key, problems)
        if checked is not None:
            result[metric] = checked
    if problems:
        raise ConfigError(source, problems)
    return result


def _parse_limits(
    body: Mapping[str, Any], prefix: str, problems: list[ConfigProblem], *, allowed_tables: tuple[str, ...] = ()
) -> dict[str, float]:
    limits: dict[str, float] = {}
    for dotted, value in _flatten(body, allowed_tables):
        key = f"{prefix}.{dotted}"
        if dotted not in _VALID_METRICS:
            problems.append(ConfigProblem(key, "unknown metric" + choices_hint(dotted, _VALID_METRICS)))
            continue
        checked = _check_value(dotted, value, key, problems)
        if checked is not None:
            limits[dotted] = checked
    return limits


def _flatten(body: Mapping[str, Any], skip: tuple[str, ...], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """TOML dotted keys arrive as nested tables: yield (`db.queries`, value) pairs."""
    for key, value in body.items():
        if not prefix and key in skip:
            continue
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, skip, dotted + ".")
        else:
            yield dotted, value


def _check_value(metric: str, value: Any, key: str, problems: list[ConfigProblem]) -> float | None:
    whole = metric in names.COUNT_METRICS or metric.endswith(".queries")
    kind = "a non-negative integer" if whole else "a non-negative number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(ConfigProblem(key, f"must be {kind}, got {_type(value)} {value!r}"))
        return None
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(ConfigProblem(key, f"must be {kind}, got {value!r}"))
        return None
    if value < 0:
        problems.append(ConfigProblem(key, f"must be {kind}, got negative {value!r}"))
        return None
    if whole and not float(value).is_integer():
        problems.append(ConfigProblem(key, f"must be {kind} (a count), got {value!r}"))
        return None
    if value > MAX_LIMIT:
        problems.append(ConfigProblem(key, f"must be at most {MAX_LIMIT:.0f}, got {value!r}"))
        return None
    return int(value) if whole else float(value)


def _parse_overrides(items: Any, key: str, sub: str, problems: list[ConfigProblem]) -> list[Override]:
    if not isinstance(items, list):
        problems.append(ConfigProblem(key, f"must be an array of tables ([[{key}]]), got {_type(items)}"))
        return []
    result = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            problems.append(ConfigProblem(where, f"must be a table, got {_type(item)}"))
            continue
        override = _parse_override(item, where, sub, problems)
        if override is not None:
            result.append(override)
    return result


def _parse_override(item: Mapping[str, Any], where: str, sub: str, problems: list[ConfigProblem]) -> Override | None:
    allowed = _OVERRIDE_KEYS[sub]
    before = len(problems)
    match = item.get("match")
    pattern = None
    if not isinstance(match, str) or not match:
        got = "nothing" if match is None else f"{_type(match)} {match!r}"
        problems.append(ConfigProblem(f"{where}.match", f"required: a non-empty glob string, got {got}"))
    else:
        pattern = _compile_glob(match, f"{where}.match", problems)
    method = item.get("method")
    if "method" in item and "method" not in allowed:
        problems.append(ConfigProblem(f"{where}.method", "only [[http.route]] overrides take a method"))
        method = None
    elif method is not None:
        if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
            problems.append(
                ConfigProblem(f"{where}.method", f"unknown HTTP method {method!r} (valid: {', '.join(HTTP_METHODS)})")
            )
        else:
            method = method.upper()
    rest = {k: v for k, v in item.items() if k not in allowed and k != "method"}
    limits = _parse_limits(rest, where, problems)
    if len(problems) > before or pattern is None:
        return None
    return Override(match=str(match), method=method, limits=limits, pattern=pattern)


def _compile_glob(glob: str, key: str, problems: list[ConfigProblem]) -> re.Pattern[str] | None:
    depth = 0
    for char in glob:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        problems.append(ConfigProblem(key, f"bad glob {glob!r}: unclosed '[' (globs use *, ? and [abc])"))
        return None
    return re.compile(fnmatch.translate(glob))


def choices_hint(word: str, valid: Iterable[str], *, booleans: bool = False, keyword: bool = False) -> str:
    """`; did you mean 'x'? (valid: ...)`, with the per-system metrics folded into one phrase.

    Args:
        keyword: name the metrics as keyword arguments (`db_queries`), as the caller wrote them.
    """
    valid = sorted(valid)
    names = [v.replace(".", "_") for v in valid] if keyword else valid
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    shown = [n for v, n in zip(valid, names) if v.count(".") < 2 or v.startswith(("db.postgresql", "db.mongodb"))]
    per_system = "db_<system>_queries / db_<system>_duration_ms" if keyword else "db.<system>.queries / db.<system>.duration_ms"
    extra = f" (and {per_system} for other systems)" if len(shown) < len(valid) else ""
    also = "true, false, or a comma-separated list of: " if booleans else ""
    return f"{hint} (valid: {also}{', '.join(shown)}{extra})"


def _printable(key: str) -> str:
    """A key with a line break or control character is quoted, so each problem stays on one line."""
    if len(key.splitlines()) > 1 or any(ord(char) < 32 or ord(char) == 127 for char in key):
        return repr(key)
    return key


def _type(value: Any) -> str:
    return {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )
