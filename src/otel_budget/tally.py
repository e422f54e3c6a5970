"""Running totals of one open scope, driven by one table of counted metrics.

`COUNTED` lists every metric counted span by span (one slot each in `ScopeTally.counts`, one limit in
`CompiledLimits.scalars`). Adding such a metric is one row here plus, in `processor.py`, the span that
feeds it (`tally.add(slot_of(METRIC), amount, at_ns)`). The per-system DB counts (`db.<system>.*`)
and the repeated-statement tally are kept beside the table: their keys are only known at run time.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from otel_budget import _probes, _sdkspan, names
from otel_budget._ratelimit import log_exception
from otel_budget.names import ScopeKind
from otel_budget.normalize import SQL_CACHES, normalize_mongo, normalize_sql
from otel_budget.settings import compiled_module

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, Span

    from otel_budget.config import BudgetRule

__all__ = ["COUNTED", "CompiledLimits", "Counted", "ScopeTally", "compile_limits", "slot_of"]

logger = logging.getLogger(__name__)

INF = float("inf")
NS_PER_MS = 1e6
MIB = 1024.0 * 1024.0
MAX_STATEMENTS = 512  # distinct normalised statements remembered per scope
DRAIN_EVERY = 16  # CLIENT spans queued per scope before they are counted (it bounds the spans we hold)
MAX_UNTIMED_KEYS = 512  # untimed calls (span ids) and connections (ids) a scope remembers, to count each once
MAX_UNTIMED_DETAILS = 16  # untimed calls/connections per metric whose details (library, target, call site) are kept


@dataclass(frozen=True)
class Counted:
    """A metric counted span by span: its name, how a limit in its unit compares with the count, how scopes nest."""

    metric: str
    scale: float = 1.0  # count units per limit unit: 1e6 for times counted in ns and limited in ms
    merged: bool = True  # a nested scope's count is added to its outer scope's (else merged by `merge_into`)

    @property
    def timed(self) -> bool:
        """Counted in ns, reported in ms."""
        return self.scale == NS_PER_MS


COUNTED: tuple[Counted, ...] = (
    Counted(names.DB_QUERIES),
    Counted(names.DB_DURATION_MS, NS_PER_MS),
    Counted(names.DB_REPEATED_QUERIES, merged=False),  # the most repeats of one statement, merged per statement
    Counted(names.DB_REPEATED_DURATION_MS, NS_PER_MS, merged=False),  # that statement's DB time, merged per statement
    Counted(names.EXTERNAL_CALLS),
    Counted(names.EXTERNAL_DURATION_MS, NS_PER_MS),
    Counted(names.TASKS_ENQUEUED),
    Counted(names.EXTERNAL_UNTIMED_CALLS),  # fed by `add_untimed` (the hooks in `_timeouts.py`)
    Counted(names.DB_UNTIMED_CONNECTIONS, merged=False),  # once per connection: merged by `merge_into`
)
_SLOTS = {row.metric: slot for slot, row in enumerate(COUNTED)}
_METRICS = tuple(row.metric for row in COUNTED)
_TIMED = tuple(row.timed for row in COUNTED)
_ZEROS = [0] * len(COUNTED)  # copied as a new scope's counts
_NO_LIMITS = (INF,) * len(COUNTED)  # a new scope's limits until its rule is applied (never written: see `_cross`)


def slot_of(metric: str) -> int:
    """The slot of a counted metric in `ScopeTally.counts` and `CompiledLimits.scalars`."""
    return _SLOTS[metric]


DB_QUERIES = slot_of(names.DB_QUERIES)
DB_NS = slot_of(names.DB_DURATION_MS)
REPEATS = slot_of(names.DB_REPEATED_QUERIES)
REPEATED_NS = slot_of(names.DB_REPEATED_DURATION_MS)
EXTERNAL_CALLS = slot_of(names.EXTERNAL_CALLS)
EXTERNAL_NS = slot_of(names.EXTERNAL_DURATION_MS)

_NO_SYSTEM_LIMITS: Mapping[str, tuple[float, float]] = MappingProxyType({})
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_running_loop = asyncio._get_running_loop  # the C function; ~30 ns
_HTTP = ScopeKind.HTTP
_rss_bytes = _probes.rss_bytes
_cpu_and_peak = _probes.cpu_and_peak
_get_ident = threading.get_ident
_span_facts = _sdkspan.counted
_NOT_QUERY_SPANS = names.NOT_QUERY_SPANS
_DB_SYSTEM_NAME, _DB_SYSTEM_OLD = names.DB_SYSTEM
_DB_QUERY_TEXT, _DB_STATEMENT_OLD = names.DB_STATEMENT
_HTTP_METHOD_NEW, _HTTP_METHOD_OLD = names.HTTP_METHOD


@dataclass(frozen=True)
class CompiledLimits:
    """A rule's limits as the hot path compares them: one per `COUNTED` slot (`inf` when unset), per DB system."""

    scalars: tuple[float, ...]
    systems: Mapping[str, tuple[float, float]]  # system -> (queries, ns)


def compile_limits(limits: Mapping[str, float]) -> CompiledLimits:
    """`limits` (metric -> limit, in the metric's unit) in the units and slots that the tally counts in."""
    scalars = tuple(limits.get(row.metric, INF) * row.scale for row in COUNTED)
    systems: dict[str, tuple[float, float]] = {}
    for metric in limits:
        if metric.startswith("db.") and metric.count(".") >= 2:
            system = metric[3:].rsplit(".", 1)[0]
            systems[system] = (
                limits.get(names.db_queries_metric(system), INF),
                limits.get(names.db_duration_metric(system), INF) * NS_PER_MS,
            )
    return CompiledLimits(scalars, MappingProxyType(systems) if systems else _NO_SYSTEM_LIMITS)


class ScopeTally:
    """Running totals of one open scope, its limits in force and the spans it still has open."""

    __slots__ = (
        "kind", "name", "span", "span_id", "parent", "closed", "lock", "rule", "rule_final", "code_limits",
        "start_ns", "rss_start", "peak_start", "cpu_start", "thread_id", "counts", "limits", "lim_systems",
        "systems", "statements", "max_statement", "crossed", "open_spans", "pending", "held", "held_overflow",
        "untimed_keys", "untimed", "last_db", "last_db_start", "last_http", "last_http_start", "route", "route_spans",
        "method",
    )  # fmt: skip

    def __init__(self, kind: ScopeKind, name: str, span: Span, parent: ScopeTally | None, span_id: int = 0) -> None:
        self.kind = kind
        self.name = name
        self.span: Span | None = span
        self.span_id: int = span_id or span.get_span_context().span_id  # `span_id`: the caller read it already
        self.parent = parent
        self.closed = False
        self.lock = threading.Lock()
        self.rule: BudgetRule | None = None
        self.rule_final = False
        self.code_limits: dict[str, float] | None = None  # dicts that most scopes never need start as None
        self.start_ns: int = span.start_time or time.time_ns()
        self.rss_start = _rss_bytes()
        # Thread CPU time means nothing for a coroutine sharing its thread with others, nor for a request
        # served by an ASGI server (Django's ASGI handler runs its middleware in a `sync_to_async` thread).
        on_loop = _running_loop() is not None or (kind is _HTTP and _in_sync_to_async_thread())
        self.thread_id = 0 if on_loop else _get_ident()
        self.cpu_start, self.peak_start = _cpu_and_peak()
        self.counts = _ZEROS.copy()
        # The rule's compiled limits, shared until one is crossed (then a list of this scope's own, with `inf` there).
        self.limits: tuple[float, ...] | list[float] = _NO_LIMITS
        self.lim_systems = _NO_SYSTEM_LIMITS
        self.systems: dict[str, list[int]] = {}  # system -> [queries, ns]
        # normalised statement -> [executions, DB time in ns] (at most MAX_STATEMENTS keys): one entry per
        # statement, updated in place when it runs again
        self.statements: dict[str, list[int]] = {}
        self.max_statement: str | None = None
        self.crossed: dict[str, int] | None = None  # metric -> time the limit was crossed
        # Ids of its spans still open, dropped from the processor's map at the end; made with the first
        # child (an empty set is 216 bytes, a fifth of a scope's state).
        self.open_spans: set[int] | None = None
        # CLIENT spans ended but not yet counted (see `drain`); made with `open_spans`. `processor.on_end` appends
        # to it (inlined there, no call per span): it discards the span from `open_spans`, then appends.
        self.pending: list[ReadableSpan] | None = None
        # An unsampled scope's ended spans, exported if it ends over budget (`_held.HeldSpans`); else None.
        self.held: list[ReadableSpan] | None = None
        self.held_overflow = 0  # its spans not held (a cap was reached)
        # Untimed calls and connections counted (slot, key), and the details of the first few per slot, by
        # their 1-based rank (the event names the one that crossed the limit); made with the first one.
        self.untimed_keys: set[tuple[int, int]] | None = None
        self.untimed: dict[int, list[tuple[int, Mapping[str, str]]]] | None = None
        # The last DB and HTTP client span counted (or skipped as an outer layer of it), and its start time
        # (`None` before it started): see `drain`. The span itself, not its facts: they are read again only in
        # the rare case where the next span started before it (`layered_spans`).
        self.last_db: ReadableSpan | None = None
        self.last_db_start: int | None = None
        self.last_http: ReadableSpan | None = None
        self.last_http_start: int | None = None
        # A request's route, once found on its span or a framework span inside it (`processor._resolve`);
        # the SERVER/INTERNAL spans inside it still open that may yet carry it (Django's span under ASGI's).
        self.route: str | None = None
        self.route_spans: dict[int, Span] | None = None
        self.method: str | None = None  # a request's method, once read from its span (`processor._method`)

    # -- child spans ----------------------------------------------------------------------------------
    def adopt(self, span_id: int) -> None:
        """A span started inside this scope."""
        open_spans = self.open_spans
        if open_spans is None:
            with self.lock:  # two first children in two threads: one set, one list
                if self.open_spans is None:
                    self.open_spans = set()
                    self.pending = []  # last: `on_end` finds `open_spans` made once it finds this
                open_spans = self.open_spans
        open_spans.add(span_id)

    def close(self, span_id: int) -> None:
        """A span of this scope ended."""
        if self.open_spans is not None:
            self.open_spans.discard(span_id)

    def release(self) -> list[int]:
        """Close the scope for good: the ids of its spans still open (they will never be counted)."""
        self.closed = True
        open_spans = self.open_spans
        if not open_spans:
            return []
        still_open = list(open_spans)
        open_spans.clear()
        return still_open

    # -- counting ---------------------------------------------------------------------------------------
    def drain(self) -> None:
        """Count the CLIENT spans queued since the last drain, in the order they ended (`count_batch`)."""
        pending = self.pending
        if not pending:
            return
        with self.lock:
            # Other threads may append meanwhile (without the lock): take what is there, drop only that.
            batch = pending[:]
            del pending[: len(batch)]
            _count_batch(self, batch)

    def count_python(self, batch: list[ReadableSpan]) -> None:
        """Count `batch` (CLIENT spans, in the order they ended) under `self.lock`: the Python `count_batch`.

        `on_end` only queues a span; the counting happens here, a batch at a time, with the totals in
        local variables, which is cheaper per query than a call and a lock each. Each limit is still
        compared after each span, so a limit crossed by a span counts as crossed at that span's end. This
        loop is the one place where the `COUNTED` table is unrolled by hand (a loop over the table per span
        would cost more than the counting itself), and `_speedups.c`'s `count` its compiled twin, step for step.
        """
        counts = self.counts
        queries, db_ns, max_repeat = counts[DB_QUERIES], counts[DB_NS], counts[REPEATS]
        repeated_ns = counts[REPEATED_NS]
        limits = self.limits
        lim_queries, lim_db_ns, lim_repeat = limits[DB_QUERIES], limits[DB_NS], limits[REPEATS]
        lim_repeated_ns = limits[REPEATED_NS]
        systems = self.systems
        statements = self.statements
        key_ns = 0
        lim_systems = self.lim_systems
        last_db, last_db_start = self.last_db, self.last_db_start
        for span, facts in zip(batch, _span_facts(batch)):
            try:
                attributes, start_ns, end_ns, name, _, _ = facts
                end_ns = end_ns or 0
                start_ns = start_ns or end_ns
                ns = end_ns - start_ns
                system = attributes.get(_DB_SYSTEM_NAME) or attributes.get(_DB_SYSTEM_OLD)
                if not system:
                    if _HTTP_METHOD_NEW in attributes or _HTTP_METHOD_OLD in attributes:
                        last, last_start = self.last_http, self.last_http_start
                        self.last_http, self.last_http_start = span, facts[1]
                        if last is not None and start_ns <= (last_start or 0) and layered_spans(span, last):
                            continue  # an outer layer of the call just counted (requests over urllib3)
                        self._add(EXTERNAL_CALLS, 1, end_ns)
                        self._add(EXTERNAL_NS, ns, end_ns)
                    continue
                # One round trip, one count: a DB span around the one just counted is an outer layer
                # (SQLAlchemy over psycopg2); the first one to end, closest to the wire, was counted.
                outer = last_db is not None and start_ns <= (last_db_start or 0) and layered_spans(span, last_db)
                last_db, last_db_start = span, facts[1]
                if outer:
                    continue
                if name in _NOT_QUERY_SPANS:  # a connection or pool span, not a statement
                    continue
                if type(system) is not str:
                    system = "other"
                statement = attributes.get(_DB_QUERY_TEXT) or attributes.get(_DB_STATEMENT_OLD)
                # A statement seen before: its normalised text straight from its dialect's cache, without a call.
                cache = SQL_CACHES.get(system)
                key = cache.get(statement) if cache is not None and type(statement) is str else None
                if key is None:
                    key = statement_key(system, attributes, name)
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
            seen = statements.get(key)
            if seen is not None:  # run before: its entry updated in place
                repeats = seen[0] = seen[0] + 1
                key_ns = seen[1] = seen[1] + ns
            else:
                repeats = 1
                if len(statements) < MAX_STATEMENTS:
                    statements[key] = [1, ns]
                    key_ns = ns
            # The most repeated statement changes only when a statement's count goes past the highest
            # (on a tie the first to reach it stays), and its time grows only when it runs again, which
            # passes the highest count: its time is taken here, and compared with its limit here only.
            # (`key_ns` is this span's statement's: a statement not remembered has `repeats == 1`,
            # which is past `max_repeat` only for the scope's first statement, always remembered.)
            if repeats > max_repeat:
                max_repeat = repeats
                self.max_statement = key
                repeated_ns = key_ns
                if repeated_ns > lim_repeated_ns:
                    self._cross(REPEATED_NS, end_ns)
                    lim_repeated_ns = INF
            if queries > lim_queries:
                self._cross(DB_QUERIES, end_ns)
                lim_queries = INF
            if db_ns > lim_db_ns:
                self._cross(DB_NS, end_ns)
                lim_db_ns = INF
            if repeats > lim_repeat:
                self._cross(REPEATS, end_ns)
                lim_repeat = INF
            if lim_systems and system in lim_systems:
                self._cross_system(system, per_system, end_ns)
        counts[DB_QUERIES], counts[DB_NS], counts[REPEATS] = queries, db_ns, max_repeat
        counts[REPEATED_NS] = repeated_ns
        self.last_db, self.last_db_start = last_db, last_db_start

    def add(self, slot: int, amount: int, at_ns: int) -> None:
        """Add `amount` to a counted metric (a span that is not a DB or HTTP client span, such as an enqueued task)."""
        with self.lock:
            self._add(slot, amount, at_ns)

    def add_untimed(self, slot: int, key: int, describe: Callable[[], Mapping[str, str]], at_ns: int) -> None:
        """One untimed call (`key`: its span id) or connection (its `id`), counted once per key in this scope.

        `describe()` gives its details (a walk up the stack for the call site); it is called only where
        the metric may have a limit in this scope (its rule has one, or is not final yet), and then for
        the first few and for the one that crosses the limit in force: a scope that only measures the
        metric (`db.untimed_connections` by default) pays for a count only.
        """
        keys = self.untimed_keys
        if keys is not None and (slot, key) in keys:  # seen (the usual case per statement): no lock
            return
        with self.lock:
            keys = self.untimed_keys
            if keys is None:
                keys = self.untimed_keys = set()
                self.untimed = {}
            if (slot, key) in keys:
                return
            if len(keys) < MAX_UNTIMED_KEYS:
                keys.add((slot, key))
            rank = self.counts[slot] + 1
            kept = self.untimed.setdefault(slot, [])  # type: ignore[union-attr]  # made with `untimed_keys`
            rule = self.rule
            limited = rule is None or not self.rule_final or _METRICS[slot] in rule.limits
            if limited and (len(kept) < MAX_UNTIMED_DETAILS or rank > self.limits[slot]):
                kept.append((rank, describe()))
            self._add(slot, 1, at_ns)

    def untimed_details(self, limits: Mapping[str, float]) -> dict[str, Mapping[str, str]]:
        """metric -> the details of the untimed call/connection that took it over `limits` (or the nearest kept)."""
        found: dict[str, Mapping[str, str]] = {}
        for slot, kept in (self.untimed or {}).items():
            metric = COUNTED[slot].metric
            limit = limits.get(metric)
            if limit is None or not kept:
                continue
            crossing = int(limit) + 1  # the rank of the call that went over the limit
            before = [details for rank, details in kept if rank <= crossing]
            found[metric] = before[-1] if before else kept[0][1]
        return found

    def _add(self, slot: int, amount: int, at_ns: int) -> None:
        counts = self.counts
        counts[slot] += amount
        if counts[slot] > self.limits[slot]:
            self._cross(slot, at_ns)

    def _cross(self, slot: int, at_ns: int) -> None:
        """The limit of `slot` is crossed at `at_ns`: noted once, and not compared again."""
        limits = self.limits
        if not isinstance(limits, list):  # shared with the rule until now
            limits = self.limits = list(limits)
        limits[slot] = INF
        self._crossed(COUNTED[slot].metric, at_ns)

    def _crossed(self, metric: str, at_ns: int) -> None:
        if self.crossed is None:
            self.crossed = {}
        self.crossed.setdefault(metric, at_ns)

    def _cross_system(self, system: str, per_system: list[int], at_ns: int) -> None:
        limit_queries, limit_ns = self.lim_systems[system]
        if per_system[0] > limit_queries:
            self._crossed(names.db_queries_metric(system), at_ns)
        if per_system[1] > limit_ns:
            self._crossed(names.db_duration_metric(system), at_ns)

    # -- limits -----------------------------------------------------------------------------------------
    def apply_rule(self, rule: BudgetRule, now_ns: int) -> None:
        """Put `rule`'s limits in force; a limit newly exceeded by what is counted counts as crossed `now_ns`."""
        compiled = rule.compiled
        with self.lock:
            old = self.rule.limits if self.rule is not None else _EMPTY
            self.rule = rule
            crossed = self.crossed
            scalars: tuple[float, ...] | list[float] = compiled.scalars
            if crossed:
                limits = rule.limits
                for metric in [m for m in crossed if limits.get(m) != old.get(m)]:
                    del crossed[metric]
                if crossed:  # still crossed: not compared again
                    scalars = [INF if row.metric in crossed else limit for row, limit in zip(COUNTED, scalars)]
            self.limits = scalars
            self.lim_systems = compiled.systems
            if any(self.counts):
                self._recheck(now_ns)

    def recheck(self, now_ns: int) -> None:
        """Compare what is counted with the limits in force (after counts were added in bulk)."""
        with self.lock:
            self._recheck(now_ns)

    def _recheck(self, now_ns: int) -> None:
        counts = self.counts
        for slot, limit in enumerate(self.limits):
            if counts[slot] > limit:
                self._cross(slot, now_ns)
        for system, per_system in self.systems.items():
            if system in self.lim_systems:
                self._cross_system(system, per_system, now_ns)

    # -- nesting and the end ----------------------------------------------------------------------------
    def merge_into(self, outer: ScopeTally, end_ns: int) -> None:
        """Add a nested scope's counts to the scope around it (after what the outer one has queued)."""
        outer.drain()
        with outer.lock:
            for system, (queries, ns) in self.systems.items():
                outer_system = outer.systems.setdefault(system, [0, 0])
                outer_system[0] += queries
                outer_system[1] += ns
            outer_counts, counts = outer.counts, self.counts
            for slot, row in enumerate(COUNTED):
                if row.merged:
                    outer_counts[slot] += counts[slot]
            outer_statements = outer.statements
            for key, (count, ns) in self.statements.items():
                entry = outer_statements.get(key)
                if entry is not None:
                    repeats = entry[0] = entry[0] + count
                    key_ns = entry[1] = entry[1] + ns
                elif len(outer_statements) < MAX_STATEMENTS:  # bounded as in `drain`
                    outer_statements[key] = [count, ns]
                    repeats, key_ns = count, ns
                else:  # not remembered: it still counts as the most repeated if it is
                    repeats, key_ns = count, ns
                if repeats > outer_counts[REPEATS]:  # as in `drain`: on a tie the outer scope's statement stays
                    outer_counts[REPEATS], outer.max_statement = repeats, key
                    outer_counts[REPEATED_NS] = key_ns
            self._merge_untimed(outer)
        if outer.rule is not None:
            outer.recheck(end_ns)

    def _merge_untimed(self, outer: ScopeTally) -> None:
        """A connection used by the nested and the outer scope counts once in the outer one (under its lock)."""
        if not self.untimed_keys:
            return
        if outer.untimed_keys is None:
            outer.untimed_keys, outer.untimed = set(), {}
        for slot, key in self.untimed_keys:
            if (slot, key) not in outer.untimed_keys:
                if len(outer.untimed_keys) < MAX_UNTIMED_KEYS:
                    outer.untimed_keys.add((slot, key))
                if not COUNTED[slot].merged:
                    outer.counts[slot] += 1

    def measure(self, end_ns: int) -> dict[str, float]:
        """Every metric of the scope as it ends at `end_ns`: probes read now, counts as counted."""
        cpu_end, peak_end = _cpu_and_peak()
        values: dict[str, float] = {
            names.DURATION_MS: _ms(end_ns - self.start_ns),
            names.MEMORY_GROWTH_MB: _mib(_rss_bytes() - self.rss_start),
            names.MEMORY_PEAK_GROWTH_MB: _mib(peak_end - self.peak_start),
        }
        _put_counts(values, _METRICS, _TIMED, self.counts, _ms)
        if self.thread_id and self.thread_id == _get_ident():
            values[names.CPU_MS] = _ms(cpu_end - self.cpu_start)
        for system, (queries, ns) in self.systems.items():
            queries_metric, duration_metric = system_metrics(system)
            values[queries_metric] = queries
            values[duration_metric] = _ms(ns)
        for system in self.lim_systems:  # a budgeted system not touched: 0, not missing
            queries_metric, duration_metric = system_metrics(system)
            values.setdefault(queries_metric, 0)
            values.setdefault(duration_metric, 0.0)
        return values


def _in_sync_to_async_thread() -> bool:
    """This thread runs sync code for an event loop (asgiref's `sync_to_async`, as Django's ASGI handler does)."""
    sync = sys.modules.get("asgiref.sync")
    return sync is not None and getattr(getattr(sync, "SyncToAsync", None), "threadlocal", None) is not None and (
        getattr(sync.SyncToAsync.threadlocal, "main_event_loop", None) is not None
    )


def layered_spans(outer: ReadableSpan, inner: ReadableSpan) -> bool:
    """`layered` for two spans: `outer`, ended after `inner`, the last one counted (its facts read again here,
    the rare case of a span that started before the one counted last). The compiled count calls it too."""
    outer_facts, inner_facts = _sdkspan.counted([outer, inner])
    return layered(outer, outer_facts, inner_facts)


def layered(span: ReadableSpan, outer: _sdkspan.Counted, inner: _sdkspan.Counted) -> bool:
    """`outer` (the facts of `span`, ended after `inner`) is another layer of `inner`'s round trip: it spans it
    in time and is its parent, or, from an instrumentation that does not make its span current while the
    driver runs (SQLAlchemy's: both spans have the request's as parent), its sibling with the same statement."""
    attributes, start_ns, end_ns, _, parent_id, span_id = outer
    if (end_ns or 0) < (inner[2] or 0) or (start_ns or 0) > (inner[1] or 0):
        return False
    if inner[4] == span_id:
        return True
    if inner[4] != parent_id or _sdkspan.scope_name(span) not in names.SIBLING_LAYERS:
        return False
    keys = names.DB_STATEMENT + names.HTTP_URL
    mine, theirs = first(attributes, keys), first(inner[0], keys)
    if mine is None or theirs is None:
        return False
    if mine == theirs:
        return True
    # sqlcommenter may have commented one layer's text and not the other's: compared without comments.
    system = str(first(attributes, names.DB_SYSTEM) or "other_sql")
    return type(mine) is str and type(theirs) is str and normalize_sql(mine, system) == normalize_sql(theirs, system)


_SYSTEM_METRICS: dict[str, tuple[str, str]] = {}


def system_metrics(system: str) -> tuple[str, str]:
    """`db.<system>.queries` and `db.<system>.duration_ms`, made once per system."""
    pair = _SYSTEM_METRICS.get(system)
    if pair is None:
        pair = (names.db_queries_metric(system), names.db_duration_metric(system))
        if len(_SYSTEM_METRICS) < 256:  # `db.system` comes from instrumentations: a few values, but bounded
            _SYSTEM_METRICS[system] = pair
    return pair


def statement_key(system: str, attributes: Mapping[str, Any], span_name: str) -> str:
    """What repeats are counted on: the normalised statement (no literal values), or the operation."""
    statement = attributes.get(_DB_QUERY_TEXT) or attributes.get(_DB_STATEMENT_OLD)
    if statement and system in SQL_CACHES:  # SQL, and CQL: read by the system's dialect
        return normalize_sql(statement if type(statement) is str else str(statement), system)
    if system == "mongodb":
        text = str(statement or "")
        operation = str(first(attributes, names.DB_OPERATION) or text.split(" ", 1)[0] or span_name)
        collection = str(first(attributes, names.DB_COLLECTION) or "")
        return normalize_mongo(operation, collection, text)
    operation = first(attributes, names.DB_OPERATION) or (str(statement).split(" ", 1)[0] if statement else span_name)
    return f"{system} {operation}"


def first(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of `keys` that `attributes` has (the stable convention's name, then the old one)."""
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return value
    return None


def _ms(ns: int) -> float:
    """Nanoseconds as milliseconds to the µs (`round(x)` is several times cheaper than `round(x, 3)`)."""
    return round(ns / 1000) / 1000


def _mib(size: int) -> float:
    """Bytes as MiB, to three decimals."""
    return round(size / (MIB / 1000)) / 1000


def put_counts(
    values: dict[str, float], metrics: tuple[str, ...], timed: tuple[bool, ...], counts: list[int],
    ms: Callable[[int], float],
) -> None:
    """`values[metric]` for each counted metric: its count, or `ms(count)` for a time counted in ns.
    `_speedups.put_counts` is its compiled twin."""
    for metric, is_timed, count in zip(metrics, timed, counts):
        values[metric] = ms(count) if is_timed else count


_speedups = compiled_module()
_put_counts: Callable[..., None] = getattr(_speedups, "put_counts", put_counts) if _speedups else put_counts


# What `drain` counts a batch with: `count_python`, or its compiled twin (`_speedups.count`, chosen by
# `processor.py` at import, `compiled_count`).
_count_batch: Callable[[ScopeTally, list[Any]], None] = ScopeTally.count_python


def compiled_count(count: Callable[[ScopeTally, list[Any]], None] | None) -> None:
    """Count batches with `count` (the compiled `_speedups.count`), or with `ScopeTally.count_python` (None)."""
    global _count_batch
    _count_batch = count if count is not None else ScopeTally.count_python
