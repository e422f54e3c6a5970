"""The budget span processor: the hot path.

Per span it does one dict lookup at start and, at end, a few additions on the scope's tally.
A scope (HTTP request, Celery task, explicit scope) is finished just before its span ends,
so its summary attributes and `budget.exceeded` events land on the exported span itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from otel_budget import _probes, names
from otel_budget.names import (
    CPU_MS,
    DB_DURATION_MS,
    DB_QUERIES,
    DB_REPEATED_QUERIES,
    DURATION_MS,
    END_ONLY_METRICS,
    EXTERNAL_CALLS,
    EXTERNAL_DURATION_MS,
    HTTP_METHOD,
    MEMORY_GROWTH_MB,
    MEMORY_PEAK_GROWTH_MB,
    TASKS_ENQUEUED,
)
from otel_budget._metrics import BudgetMetrics
from otel_budget._ratelimit import log_exception
from otel_budget.config import BudgetConfig, BudgetRule, choices_hint, valid_metrics
from otel_budget.normalize import SQL_CACHE as _SQL_CACHE
from otel_budget.normalize import normalize_mongo, normalize_sql, shorten
from otel_budget.results import ScopeResult, Violation

__all__ = ["BudgetSpanProcessor", "ScopeTally"]

logger = logging.getLogger(__name__)

INF = float("inf")
MIB = 1024.0 * 1024.0
_CLIENT = SpanKind.CLIENT
_PRODUCER = SpanKind.PRODUCER
_SERVER = SpanKind.SERVER
_CONSUMER = SpanKind.CONSUMER
_SQL_SYSTEMS = frozenset(
    {"postgresql", "mysql", "mariadb", "sqlite", "mssql", "oracle", "other_sql", "cockroachdb", "db2", "h2",
     "clickhouse", "trino", "hive", "sqlserver", "oracle.db", "ibm.db2", "microsoft.sql_server", "spanner",
     "gcp.spanner"}
)
_MAX_STATEMENTS = 512  # distinct normalised statements remembered per scope
_RULE_HTTP = names.RULE_HTTP
_HTTP_ROUTE = names.HTTP_ROUTE
_SCOPE_NAME = names.SCOPE_NAME
_DRAIN_EVERY = 16  # CLIENT spans queued per scope before they are counted (it bounds the spans we hold)
_running_loop = asyncio._get_running_loop  # the C function; ~30 ns
_rss_bytes = _probes.rss_bytes
_cpu_and_peak = _probes.cpu_and_peak
_get_ident = threading.get_ident
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_NO_SYSTEM_LIMITS: Mapping[str, tuple[float, float]] = MappingProxyType({})
# What a rule's limits mean for the hot path, computed once per rule (see `_compile`).
_Compiled = tuple[tuple[float, float, float, float, float, float], Mapping[str, tuple[float, float]]]
_LIMIT_SLOTS = (
    ("lim_queries", names.DB_QUERIES, 1.0),
    ("lim_db_ns", names.DB_DURATION_MS, 1e6),
    ("lim_repeat", names.DB_REPEATED_QUERIES, 1.0),
    ("lim_external", names.EXTERNAL_CALLS, 1.0),
    ("lim_external_ns", names.EXTERNAL_DURATION_MS, 1e6),
    ("lim_tasks", names.TASKS_ENQUEUED, 1.0),
)

Listener = Callable[[ScopeResult], None]


class ScopeTally:
    """Running totals of one open scope."""

    __slots__ = (
        "kind", "name", "span", "span_id", "parent", "closed", "lock", "rule", "rule_final", "code_limits",
        "start_ns", "rss_start", "peak_start", "cpu_start", "thread_id",
        "db_queries", "db_ns", "systems", "statements", "max_repeat", "max_statement",
        "external_calls", "external_ns", "tasks_enqueued", "crossed", "open_spans", "pending",
        "lim_queries", "lim_db_ns", "lim_repeat", "lim_external", "lim_external_ns", "lim_tasks", "lim_systems",
    )  # fmt: skip

    def __init__(self, kind: str, name: str, span: Span, parent: ScopeTally | None) -> None:
        self.kind = kind
        self.name = name
        self.span: Span | None = span
        self.span_id: int = span.get_span_context().span_id
        self.parent = parent
        self.closed = False
        self.lock = threading.Lock()
        self.rule: BudgetRule | None = None
        self.rule_final = False
        self.code_limits: dict[str, float] | None = None  # dicts that most scopes never need start as None
        self.start_ns: int = span.start_time or time.time_ns()
        self.rss_start = _rss_bytes()
        # Thread CPU time means nothing for a coroutine sharing its thread with others.
        self.thread_id = _get_ident() if _running_loop() is None else 0
        self.cpu_start, self.peak_start = _cpu_and_peak()
        self.db_queries = 0
        self.db_ns = 0
        self.systems: dict[str, list[int]] = {}  # system -> [queries, ns]
        self.statements: dict[str, int] = {}
        self.max_repeat = 0
        self.max_statement: str | None = None
        self.external_calls = 0
        self.external_ns = 0
        self.tasks_enqueued = 0
        self.crossed: dict[str, int] | None = None  # metric -> time the limit was crossed
        # Ids of its spans still open, dropped from the map at the end; made with the first child
        # (an empty set is 216 bytes, a fifth of a scope's state).
        self.open_spans: set[int] | None = None
        # CLIENT spans ended but not yet counted (see `drain`); made with `open_spans`.
        self.pending: list[ReadableSpan] | None = None
        self.lim_queries = self.lim_db_ns = self.lim_repeat = INF
        self.lim_external = self.lim_external_ns = self.lim_tasks = INF
        self.lim_systems = _NO_SYSTEM_LIMITS

    def drain(self) -> None:
        """Count the CLIENT spans queued by `on_end` since the last drain, in the order they ended.

        `on_end` only appends a span to `pending`; the counting happens here, a batch at a time, under
        one lock and with the totals in local variables, which is cheaper per query than a call and a
        lock each. Each limit is still compared after each span, so a limit crossed by a span counts
        as crossed at that span's end.
        """
        pending = self.pending
        if not pending:
            return
        with self.lock:
            # Other threads may append meanwhile (without the lock): take what is there, drop only that.
            batch = pending[:]
            del pending[: len(batch)]
            queries = self.db_queries
            db_ns = self.db_ns
            max_repeat = self.max_repeat
            lim_queries, lim_db_ns, lim_repeat = self.lim_queries, self.lim_db_ns, self.lim_repeat
            systems = self.systems
            statements = self.statements
            lim_systems = self.lim_systems
            for span in batch:
                try:
                    attributes = span._attributes
                    if type(attributes) is BoundedAttributes:
                        attributes = attributes._dict
                    else:
                        attributes = _attributes(span)
                    end_ns = span._end_time or 0
                    ns = end_ns - (span._start_time or end_ns)
                    system = attributes.get("db.system.name") or attributes.get("db.system")
                    if not system:
                        if "http.request.method" in attributes or "http.method" in attributes:
                            self._count_external(ns, end_ns)
                        continue
                    if type(system) is not str:
                        system = "other"
                    statement = attributes.get("db.query.text") or attributes.get("db.statement")
                    # A statement seen before: its normalised text straight from the cache, without a call.
                    key = _SQL_CACHE.get(statement) if type(statement) is str and system in _SQL_SYSTEMS else None
                    if key is None:
                        key = _statement_key(system, attributes, span._name)
                except Exception:
                    log_exception(logger, "otel-budget: could not count a span; it is left out of its scope's tally")
                    continue
                queries += 1
                db_ns += ns
                per_system = systems.get(system)
                if per_system is None:
                    per_system = systems[system] = [0, 0]
                per_system[0] += 1
                per_system[1] += ns
                repeats = statements.get(key, 0) + 1
                if repeats > 1 or len(statements) < _MAX_STATEMENTS:
                    statements[key] = repeats
                if repeats > max_repeat:
                    max_repeat = repeats
                    self.max_statement = key
                if queries > lim_queries:
                    self._cross(names.DB_QUERIES, end_ns)
                    lim_queries = INF
                if db_ns > lim_db_ns:
                    self._cross(names.DB_DURATION_MS, end_ns)
                    lim_db_ns = INF
                if repeats > lim_repeat:
                    self._cross(names.DB_REPEATED_QUERIES, end_ns)
                    lim_repeat = INF
                if lim_systems and system in lim_systems:
                    self._cross_system(system, per_system, end_ns)
            self.db_queries = queries
            self.db_ns = db_ns
            self.max_repeat = max_repeat
            self.lim_queries, self.lim_db_ns, self.lim_repeat = lim_queries, lim_db_ns, lim_repeat

    def _count_external(self, ns: int, end_ns: int) -> None:
        """An HTTP CLIENT span (under the lock, from `drain`)."""
        self.external_calls += 1
        self.external_ns += ns
        if self.external_calls > self.lim_external:
            self._cross(names.EXTERNAL_CALLS, end_ns)
            self.lim_external = INF
        if self.external_ns > self.lim_external_ns:
            self._cross(names.EXTERNAL_DURATION_MS, end_ns)
            self.lim_external_ns = INF

    def count_task(self, end_ns: int) -> None:
        with self.lock:
            self.tasks_enqueued += 1
            if self.tasks_enqueued > self.lim_tasks:
                self._cross(names.TASKS_ENQUEUED, end_ns)
                self.lim_tasks = INF

    def apply_rule(self, rule: BudgetRule, now_ns: int) -> None:
        """Put `rule`'s limits in force; a limit newly exceeded by what is counted counts as crossed `now_ns`."""
        scalars, systems = _compile(rule.limits)
        with self.lock:
            old = self.rule.limits if self.rule is not None else _EMPTY
            self.rule = rule
            crossed = self.crossed
            if crossed:
                limits = rule.limits
                for metric in [m for m in crossed if limits.get(m) != old.get(m)]:
                    del crossed[metric]
            (self.lim_queries, self.lim_db_ns, self.lim_repeat,
             self.lim_external, self.lim_external_ns, self.lim_tasks) = scalars  # fmt: skip
            if crossed:
                for attr, metric, _ in _LIMIT_SLOTS:
                    if metric in crossed:
                        setattr(self, attr, INF)
            self.lim_systems = systems
            if self.db_queries or self.external_calls or self.tasks_enqueued:
                self._recheck(now_ns)

    def recheck(self, now_ns: int) -> None:
        """Compare what is counted with the limits in force (after counts were added in bulk)."""
        with self.lock:
            self._recheck(now_ns)

    def _recheck(self, now_ns: int) -> None:
        for attr, metric, value in (
            ("lim_queries", names.DB_QUERIES, self.db_queries),
            ("lim_db_ns", names.DB_DURATION_MS, self.db_ns),
            ("lim_repeat", names.DB_REPEATED_QUERIES, self.max_repeat),
            ("lim_external", names.EXTERNAL_CALLS, self.external_calls),
            ("lim_external_ns", names.EXTERNAL_DURATION_MS, self.external_ns),
            ("lim_tasks", names.TASKS_ENQUEUED, self.tasks_enqueued),
        ):
            if value > getattr(self, attr):
                self._cross(metric, now_ns)
                setattr(self, attr, INF)
        for system, per_system in self.systems.items():
            if system in self.lim_systems:
                self._cross_system(system, per_system, now_ns)

    def _cross(self, metric: str, at_ns: int) -> None:
        if self.crossed is None:
            self.crossed = {}
        self.crossed.setdefault(metric, at_ns)

    def _cross_system(self, system: str, per_system: list[int], at_ns: int) -> None:
        limit_queries, limit_ns = self.lim_systems[system]
        if per_system[0] > limit_queries:
            self._cross(names.db_queries_metric(system), at_ns)
        if per_system[1] > limit_ns:
            self._cross(names.db_duration_metric(system), at_ns)

    def merge_into(self, outer: ScopeTally, end_ns: int) -> None:
        """Add a nested scope's counts to the scope around it (after what the outer one has queued)."""
        outer.drain()
        with outer.lock:
            for system, (queries, ns) in self.systems.items():
                outer_system = outer.systems.setdefault(system, [0, 0])
                outer_system[0] += queries
                outer_system[1] += ns
            outer.db_queries += self.db_queries
            outer.db_ns += self.db_ns
            for key, count in self.statements.items():
                repeats = outer.statements.get(key, 0) + count
                outer.statements[key] = repeats
                if repeats > outer.max_repeat:
                    outer.max_repeat, outer.max_statement = repeats, key
            outer.external_calls += self.external_calls
            outer.external_ns += self.external_ns
            outer.tasks_enqueued += self.tasks_enqueued
        if outer.rule is not None:
            outer.recheck(end_ns)


class _EndScope:
    """Installed as the scope span's own `end`: finishes the tally while the span can still be written."""

    __slots__ = ("processor", "tally", "span", "original")

    def __init__(
        self, processor: BudgetSpanProcessor, tally: ScopeTally, span: Span, original: Callable[..., None] | None
    ) -> None:
        self.processor = processor
        self.tally = tally
        self.span = span
        self.original = original  # an `end` someone set on the instance before us; usually the class's

    def __call__(self, end_time: int | None = None) -> None:
        tally = self.tally
        span = self.span
        span.__dict__.pop("end", None)
        end_ns = end_time if end_time is not None else time.time_ns()
        if not tally.closed:
            try:
                self.processor._finish(tally, end_ns, writable=True)
            except Exception:
                log_exception(logger, "otel-budget: could not finish a scope; its span is exported without budgets")
        if self.original is not None:
            self.original(end_ns)
        else:
            type(span).end(span, end_ns)


class BudgetSpanProcessor(SpanProcessor):
    """Tallies every span under a scope and checks the scope against its budgets when it ends.

    Args:
        config: the budgets; default: built-in defaults (N+1 only).
        config_error: why the configured file could not be used; shown on every scope span.
        max_open_scopes: scopes kept open at once; beyond it the oldest is evicted (and counted).
        record_metrics: record the `budget.*` histograms and the `budget.violations` counter; or the
            names of the metrics whose histograms to record (the counter is recorded too).
        meter_provider: where those go (default: the global MeterProvider).
    """

    def __init__(
        self,
        *,
        config: BudgetConfig | None = None,
        config_error: str | None = None,
        max_open_scopes: int = 10_000,
        record_metrics: bool | Collection[str] = True,
        meter_provider: Any = None,
    ) -> None:
        self.config = config or BudgetConfig()
        self.config_error = config_error
        self.max_open_scopes = max(1, max_open_scopes)
        self.evicted_scopes = 0
        self._spans: dict[int, ScopeTally] = {}  # open span id -> its scope's tally
        self._scopes: dict[int, ScopeTally] = {}  # open scope span id -> tally, oldest first
        self._evict_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._overlay: Mapping[str, float] | None = None
        if record_metrics is False:
            self._metrics: BudgetMetrics | None = None
        else:
            histograms = None if record_metrics is True else _metric_names(record_metrics)
            self._metrics = BudgetMetrics(meter_provider, histograms)
        _PROCESSORS.add(self)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_after_fork_in_child, weakref.ref(self)))

    # -- public API ---------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call `listener(result)` with every finished scope's `ScopeResult`."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def tally_for(self, span_id: int) -> ScopeTally | None:
        """The open scope that the span `span_id` belongs to."""
        return self._spans.get(span_id)

    @property
    def open_scopes(self) -> int:
        return len(self._scopes)

    def set_overlay(self, limits: Mapping[str, float] | None) -> None:
        """Limits applied on top of every scope's rule as rule `code`, under the scope's own in-code limits (the pytest plugin's per-test budgets); None removes them."""
        self._overlay = dict(limits) if limits else None

    def set_code_limits(self, tally: ScopeTally, limits: Mapping[str, float]) -> None:
        """In-code budgets (decorator, context manager): they win over the file."""
        tally.code_limits = {**(tally.code_limits or {}), **limits}
        tally.drain()
        self._resolve(tally, time.time_ns())

    # -- SpanProcessor --------------------------------------------------------------------------------
    # This is the whole per-span cost: on_start one dict lookup (one insert inside a scope), on_end
    # one pop and, for a counted span, a few additions under the scope's lock. The SDK's span fields
    # are read directly (`_parent`, `_kind`, `_context`, `_attributes`): each public property costs a
    # call, and `span.attributes` a new MappingProxy per read. A SpanContext is, by its declared type,
    # the tuple (trace_id, span_id, is_remote, ...): indexing it saves a property call per field.
    def on_start(self, span: Span, parent_context: context_api.Context | None = None) -> None:
        try:
            parent = span._parent
            attributes = span._attributes
            scope_name = (
                attributes._dict if type(attributes) is BoundedAttributes else _attributes(span)
            ).get(_SCOPE_NAME)
            if parent is None or parent[2]:  # no parent or a remote one: a new scope?
                kind = span._kind
                if kind is _SERVER:
                    self._open(span, names.RULE_HTTP, span._name, None)
                elif kind is _CONSUMER:
                    name = span._name
                    self._open(span, names.RULE_CELERY, name[4:] if name.startswith("run/") else name, None)
                elif scope_name is not None:
                    self._open(span, names.RULE_SCOPE, str(scope_name), None)
                return
            tally = self._spans.get(parent[1])
            if scope_name is not None:
                self._open(span, names.RULE_SCOPE, str(scope_name), tally)
            elif tally is not None and not tally.closed:
                span_id = span._context[1]  # type: ignore[index]
                self._spans[span_id] = tally
                open_spans = tally.open_spans
                if open_spans is None:
                    with tally.lock:  # two first children in two threads: one set, one list
                        if tally.open_spans is None:
                            tally.pending = []
                            tally.open_spans = set()
                        open_spans = tally.open_spans
                open_spans.add(span_id)
        except Exception:
            log_exception(logger, "otel-budget: on_start failed; this span is not counted")

    def _on_ending(self, span: Span) -> None:
        # Today (SDK 1.45) the span is already frozen here and `_EndScope` has done the work.
        # Should the SDK make it writable (open-telemetry/opentelemetry-python#5613), finish here.
        if span._end_time is not None:  # frozen (every span, with SDK 1.45): nothing to do here
            return
        try:
            tally = self._scopes.get(span._context[1])  # type: ignore[index]
            if tally is not None and not tally.closed:
                self._finish(tally, time.time_ns(), writable=True)
        except Exception:
            log_exception(logger, "otel-budget: _on_ending failed")

    def on_end(self, span: ReadableSpan) -> None:
        try:
            span_id = span._context[1]  # type: ignore[index]
            tally = self._spans.pop(span_id, None)
            if tally is None or tally.closed:
                return
            if tally.span_id == span_id:  # the scope span ended without our `end`: read-only now
                self._finish(tally, span._end_time or time.time_ns(), writable=False)
                return
            if tally.open_spans is not None:
                tally.open_spans.discard(span_id)
            kind = span._kind
            if kind is _CLIENT:
                pending = tally.pending
                if pending is not None:  # None: its scope was evicted while it ran
                    pending.append(span)  # counted by `drain`, a batch at a time
                    if len(pending) >= _DRAIN_EVERY:
                        if not tally.rule_final:
                            self._resolve(tally, span._end_time or 0)
                        tally.drain()
            elif kind is _PRODUCER:
                if _attributes(span).get(names.CELERY_ACTION) == "apply_async" or span._name.startswith("apply_async/"):
                    tally.count_task(span._end_time or 0)
        except Exception:
            log_exception(logger, "otel-budget: on_end failed; this span is not counted")

    def shutdown(self) -> None:
        _PROCESSORS.discard(self)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # -- internals ------------------------------------------------------------------------------------
    def _open(self, span: Span, kind: str, name: str, parent: ScopeTally | None) -> None:
        if len(self._scopes) >= self.max_open_scopes:
            self._evict_oldest()
        tally = ScopeTally(kind, name, span, parent)
        span_id = tally.span_id
        self._resolve(tally, tally.start_ns)
        span.__dict__["end"] = _EndScope(self, tally, span, span.__dict__.get("end"))
        self._scopes[span_id] = tally
        self._spans[span_id] = tally

    def _resolve(self, tally: ScopeTally, now_ns: int) -> None:
        """Find the rule for `tally`; for a request, final once Django has set `http.route`."""
        name: str | None = tally.name
        method = None
        if tally.kind == _RULE_HTTP and tally.span is not None:
            attributes = _attributes(tally.span)
            route = attributes.get(_HTTP_ROUTE)
            method = _first(attributes, HTTP_METHOD)
            if route is not None and type(route) is not str:
                route = str(route)
            name = route
            tally.rule_final = route is not None
        else:
            tally.rule_final = True
        rule = self.config.rule_for(tally.kind, name, method if method is None or type(method) is str else str(method))
        if self._overlay:
            rule = rule.overridden(names.RULE_CODE, self._overlay)
        if tally.code_limits:
            rule = rule.overridden(names.RULE_CODE, tally.code_limits)
        current = tally.rule
        if rule is current:  # the usual case: the rule cache hands back the same object
            return
        if current is None or rule.limits != current.limits:
            tally.apply_rule(rule, now_ns)
        else:
            tally.rule = rule

    def _forget(self, tally: ScopeTally) -> None:
        """Drop a closed scope and its spans still open (they will never be counted) from the maps."""
        tally.closed = True
        self._scopes.pop(tally.span_id, None)
        spans = self._spans
        spans.pop(tally.span_id, None)
        if tally.open_spans:
            for span_id in list(tally.open_spans):
                spans.pop(span_id, None)
            tally.open_spans.clear()

    def _finish(self, tally: ScopeTally, end_ns: int, *, writable: bool) -> None:
        self._forget(tally)
        span = tally.span
        try:
            if span is None:
                return
            if not tally.rule_final or tally.kind == names.RULE_HTTP:
                self._resolve(tally, end_ns)
            tally.drain()
            result = self._result(tally, span, end_ns)
            if writable:
                self._write(span, result)
            if tally.parent is not None and not tally.parent.closed:
                tally.merge_into(tally.parent, end_ns)
            if self._metrics is not None:
                self._metrics.record(result)
            for listener in self._listeners:
                try:
                    listener(result)
                except Exception:
                    log_exception(logger, "otel-budget: a scope listener failed")
        finally:
            tally.span = None
            tally.pending = None

    def _result(self, tally: ScopeTally, span: Span, end_ns: int) -> ScopeResult:
        rule = tally.rule
        assert rule is not None
        cpu_end, peak_end = _cpu_and_peak()
        values: dict[str, float] = {
            DURATION_MS: _ms(end_ns - tally.start_ns),
            MEMORY_GROWTH_MB: _mib(_rss_bytes() - tally.rss_start),
            MEMORY_PEAK_GROWTH_MB: _mib(peak_end - tally.peak_start),
            DB_QUERIES: tally.db_queries,
            DB_DURATION_MS: _ms(tally.db_ns),
            DB_REPEATED_QUERIES: tally.max_repeat,
            EXTERNAL_CALLS: tally.external_calls,
            EXTERNAL_DURATION_MS: _ms(tally.external_ns),
            TASKS_ENQUEUED: tally.tasks_enqueued,
        }
        if tally.thread_id and tally.thread_id == _get_ident():
            values[CPU_MS] = _ms(cpu_end - tally.cpu_start)
        for system, (queries, ns) in tally.systems.items():
            queries_metric, duration_metric = _system_metrics(system)
            values[queries_metric] = queries
            values[duration_metric] = _ms(ns)
        for system in tally.lim_systems:  # a budgeted system not touched: 0, not missing
            queries_metric, duration_metric = _system_metrics(system)
            values.setdefault(queries_metric, 0)
            values.setdefault(duration_metric, 0.0)
        statement = shorten(tally.max_statement) if tally.max_statement else None
        violations = []
        for metric, limit in rule.limits.items():
            actual = values.get(metric, 0)
            if actual > limit:
                violations.append(
                    Violation(
                        metric=metric,
                        limit=limit,
                        actual=actual,
                        rule=rule.sources.get(metric, rule.name),
                        timestamp_ns=end_ns
                        if metric in END_ONLY_METRICS
                        else (tally.crossed or _EMPTY).get(metric, end_ns),
                        statement=statement if metric == DB_REPEATED_QUERIES else None,
                    )
                )
        attributes = _attributes(span)
        method = _first(attributes, HTTP_METHOD) if tally.kind == _RULE_HTTP else None
        name = tally.name
        if tally.kind == _RULE_HTTP and attributes.get(_HTTP_ROUTE) is not None:
            name = str(attributes[_HTTP_ROUTE])
        context = span.get_span_context()
        return ScopeResult(
            kind=tally.kind,
            name=name,
            method=str(method) if method is not None else None,
            rule=rule.name,
            values=values,
            violations=tuple(violations),
            trace_id=context.trace_id,
            span_id=context.span_id,
            repeated_statement=statement,
        )

    def _write(self, span: Span, result: ScopeResult) -> None:
        keys = _ATTRIBUTE_KEYS
        summary: dict[str, Any] = {
            keys.get(metric) or names.PREFIX + metric: value for metric, value in result.values.items()
        }
        summary[names.ATTR_VIOLATIONS] = len(result.violations)
        summary[names.ATTR_RULE] = result.rule
        if self.config_error:
            summary[names.ATTR_CONFIG_ERROR] = self.config_error
        if not _set_clean_attributes(span, summary):
            span.set_attributes(summary)
        if not result.violations:
            return
        identity: dict[str, Any]
        if result.kind == names.RULE_HTTP:
            identity = {names.HTTP_ROUTE: result.name, names.HTTP_REQUEST_METHOD: result.method or ""}
        elif result.kind == names.RULE_CELERY:
            identity = {names.CELERY_TASK_NAME: result.name}
        else:
            identity = {names.SCOPE_NAME: result.name}
        for violation in result.violations:
            event: dict[str, Any] = {
                names.EVENT_METRIC: violation.metric,
                names.EVENT_LIMIT: violation.limit,
                names.EVENT_ACTUAL: violation.actual,
                names.EVENT_RULE: violation.rule,
                **identity,
            }
            if violation.statement is not None:
                event[names.EVENT_STATEMENT] = violation.statement
            span.add_event(names.EVENT_EXCEEDED, event, timestamp=violation.timestamp_ns)

    def _evict_oldest(self) -> None:
        with self._evict_lock:  # two threads at the cap must not evict (or count) the same scope
            try:
                tally = self._scopes.pop(next(iter(self._scopes)), None)
            except (StopIteration, RuntimeError):  # empty, or changed under us: nothing to evict now
                return
            if tally is None:
                return
            self.evicted_scopes += 1
        self._forget(tally)
        tally.pending = None
        span = tally.span
        if span is not None:
            span.__dict__.pop("end", None)
            tally.span = None
        if self._metrics is not None:
            self._metrics.scope_evicted()
        log_exception(
            logger,
            "otel-budget: %d open scopes (the cap, OTEL_BUDGET_MAX_OPEN_SCOPES); evicted the oldest "
            "(%d evicted so far) - scopes whose span never ends?",
            self.max_open_scopes,
            self.evicted_scopes,
            level=logging.WARNING,
            exc_info=False,
        )

    def _after_fork(self) -> None:
        """A forked child inherits the parent's open scopes but will never end them."""
        self._spans = {}
        self._scopes = {}
        self._evict_lock = threading.Lock()  # another thread may have held it at the fork


def _after_fork_in_child(ref: weakref.ref[BudgetSpanProcessor]) -> None:
    processor = ref()
    if processor is not None:
        processor._after_fork()


_COMPILED: dict[int, tuple[Mapping[str, float], _Compiled]] = {}


def _compile(limits: Mapping[str, float]) -> _Compiled:
    """A rule's limits as the hot path compares them (times in ns, `inf` when unset); cached per rule."""
    entry = _COMPILED.get(id(limits))
    if entry is not None and entry[0] is limits:  # the mapping is kept alive, so its id is not reused
        return entry[1]
    scalars = tuple(limits.get(metric, INF) * scale for _, metric, scale in _LIMIT_SLOTS)
    systems: dict[str, tuple[float, float]] = {}
    for metric in limits:
        if metric.startswith("db.") and metric.count(".") >= 2:
            system = metric[3:].rsplit(".", 1)[0]
            systems[system] = (
                limits.get(names.db_queries_metric(system), INF),
                limits.get(names.db_duration_metric(system), INF) * 1e6,
            )
    compiled: _Compiled = (scalars, MappingProxyType(systems) if systems else _NO_SYSTEM_LIMITS)  # type: ignore[assignment]
    if len(_COMPILED) >= 1024:
        _COMPILED.clear()
    _COMPILED[id(limits)] = (limits, compiled)
    return compiled


def _metric_names(wanted: Collection[str]) -> frozenset[str]:
    """`record_metrics` given as names: each one checked, like a budgets file's keys."""
    chosen = frozenset([wanted] if isinstance(wanted, str) else wanted)
    known = frozenset(valid_metrics())
    unknown = sorted(chosen - known)
    if unknown:
        raise ValueError(f"record_metrics: {unknown[0]!r} is not a metric" + choices_hint(unknown[0], known))
    return chosen


_ATTRIBUTE_KEYS: dict[str, str] = {metric: names.PREFIX + metric for metric in names.FIXED_METRICS}
_SYSTEM_METRICS: dict[str, tuple[str, str]] = {}


def _system_metrics(system: str) -> tuple[str, str]:
    """`db.<system>.queries` and `db.<system>.duration_ms`, made once per system."""
    pair = _SYSTEM_METRICS.get(system)
    if pair is None:
        pair = (names.db_queries_metric(system), names.db_duration_metric(system))
        if len(_SYSTEM_METRICS) < 256:  # `db.system` comes from instrumentations: a few values, but bounded
            _SYSTEM_METRICS[system] = pair
            _ATTRIBUTE_KEYS[pair[0]] = names.PREFIX + pair[0]
            _ATTRIBUTE_KEYS[pair[1]] = names.PREFIX + pair[1]
    return pair


def _set_clean_attributes(span: Span, attributes: dict[str, Any]) -> bool:
    """Add our summary to an SDK span's attributes in one `dict.update`; False: use `set_attributes`.

    `set_attributes` validates and copies every value, one at a time (a fifth of a scope's cost here).
    Ours are already clean (str, int, float), so when the span's limits cannot be reached (no value
    length limit, room for all of them) they go straight in, under the same two locks the SDK takes.
    """
    bounded = span._attributes
    if type(bounded) is not BoundedAttributes or bounded.max_value_len is not None:
        return False
    if bounded.maxlen is not None and len(bounded._dict) + len(attributes) > bounded.maxlen:
        return False  # the SDK drops the oldest and counts them: let it
    with span._lock:
        if span._end_time is not None or bounded._immutable:
            return False
        with bounded._lock:
            bounded._dict.update(attributes)
    return True


def _attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """A span's attributes, read-only, without the new MappingProxy that `span.attributes` makes per call."""
    attributes = span._attributes
    if type(attributes) is BoundedAttributes:  # the SDK's spans: a dict inside
        return attributes._dict
    return span.attributes or _EMPTY


def _ms(ns: int) -> float:
    """Nanoseconds as milliseconds to the µs (`round(x)` is several times cheaper than `round(x, 3)`)."""
    return round(ns / 1000) / 1000


def _mib(size: int) -> float:
    """Bytes as MiB, to three decimals."""
    return round(size / (MIB / 1000)) / 1000


def _first(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return value
    return None


def _statement_key(system: str, attributes: Mapping[str, Any], span_name: str) -> str:
    statement = attributes.get("db.query.text") or attributes.get("db.statement")
    if statement and system in _SQL_SYSTEMS:
        return normalize_sql(statement if type(statement) is str else str(statement))
    if system == "mongodb":
        text = str(statement or "")
        operation = str(_first(attributes, names.DB_OPERATION) or text.split(" ", 1)[0] or span_name)
        collection = str(_first(attributes, names.DB_COLLECTION) or "")
        return normalize_mongo(operation, collection, text)
    operation = _first(attributes, names.DB_OPERATION) or (str(statement).split(" ", 1)[0] if statement else span_name)
    return f"{system} {operation}"


_PROCESSORS: weakref.WeakSet[BudgetSpanProcessor] = weakref.WeakSet()


def current_tally() -> tuple[BudgetSpanProcessor, ScopeTally] | None:
    """The processor and open scope tally that the current span belongs to, if any."""
    span_id = trace.get_current_span().get_span_context().span_id
    if not span_id:
        return None
    for processor in list(_PROCESSORS):
        tally = processor.tally_for(span_id)
        if tally is not None:
            return processor, tally
    return None
