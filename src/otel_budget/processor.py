"""The budget span processor: the hot path, span routing only.

Per span it does one dict lookup at start and, at end, hands the span to its scope's tally. A scope
(HTTP request, Celery task, explicit scope) is finished just before its span ends, so its summary
attributes and `budget.exceeded` events land on the exported span itself.

    on_start ─ which scope? ─> ScopeTally.adopt            (tally.py)
    on_end ─── CLIENT span ──> ScopeTally.pending / drain  (tally.py: counts against compiled limits)
    scope span's end ────────> ScopeTally.measure ─> verdict.judge ─> ScopeResult
                                 ─> sinks.write_to_span (spanformat.encode), _metrics, sinks.Listeners
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from otel_budget import _sdkspan, _timeouts, names, normalize, tally, verdict
from otel_budget._held import DEFAULT_MAX_HELD, DEFAULT_MAX_HELD_PER_SCOPE, HeldSpans
from otel_budget._metrics import BudgetMetrics
from otel_budget._ratelimit import log_exception
from otel_budget.config import BudgetConfig, BudgetRule, choices_hint, valid_metrics
from otel_budget.names import ScopeKind
from otel_budget.normalize import SQL_CACHES
from otel_budget.results import ScopeResult
from otel_budget.settings import compiled_module
from otel_budget.sinks import Listener, Listeners, write_to_span
from otel_budget.tally import ScopeTally, first

if TYPE_CHECKING:
    from otel_budget._memory_study import MemoryStudy

__all__ = ["BudgetSpanProcessor", "ScopeTally", "current_tally", "untimed_call", "untimed_connection"]

logger = logging.getLogger(__name__)

_CLIENT = SpanKind.CLIENT
_PRODUCER = SpanKind.PRODUCER
_SERVER = SpanKind.SERVER
_CONSUMER = SpanKind.CONSUMER
_INTERNAL = SpanKind.INTERNAL
_HTTP = ScopeKind.HTTP
_CELERY = ScopeKind.CELERY
_HTTP_ROUTE = names.HTTP_ROUTE
_HTTP_METHOD = names.HTTP_METHOD
_SCOPE_NAME = names.SCOPE_NAME
_KILLED = names.ATTR_KILLED
_TASKS_ENQUEUED = tally.slot_of(names.TASKS_ENQUEUED)
_UNTIMED_CALLS = tally.slot_of(names.EXTERNAL_UNTIMED_CALLS)
_UNTIMED_CONNECTIONS = tally.slot_of(names.DB_UNTIMED_CONNECTIONS)
_DRAIN_EVERY = tally.DRAIN_EVERY
_MAX_ROUTE_SPANS = 8  # open SERVER/INTERNAL spans watched per request for its route
_kind_of = _sdkspan.kind
_id_of = _sdkspan.span_id
_name_of = _sdkspan.name
_attributes = _sdkspan.attributes
_times = _sdkspan.times
_started = _sdkspan.started
_ON_ENDING_FROZEN = _sdkspan.ON_ENDING_FROZEN
_ended = _sdkspan.ended
_sampled = _sdkspan.sampled
_trace_id_of = _sdkspan.trace_id


class _EndScope:
    """Installed as the scope span's own `end`: finishes the tally while the span can still be written.

    It owns the patch: `install` puts it on the span instance, `remove` takes it off (at the end, or
    when the scope is evicted), restoring whatever `end` the instance had before.
    """

    __slots__ = ("processor", "tally", "span", "original")

    def __init__(self, processor: BudgetSpanProcessor, tally: ScopeTally, span: Span) -> None:
        self.processor = processor
        self.tally = tally
        self.span = span
        self.original: Callable[..., None] | None = None  # an `end` set on the instance before us; usually none

    # Through getattr/setattr/delattr, never the span's `__dict__`: reading that makes CPython build the
    # instance's dict out of its inline values, and every later attribute access of the SDK's code on that
    # span is slower for it (~48 000 instructions per scope in the per-scope benchmark; docs/benchmarks.md).
    def install(self) -> None:
        span = self.span
        found = getattr(span, "end", None)
        self.original = None if getattr(found, "__func__", None) is type(span).end else found
        setattr(span, "end", self)  # an instance attribute, shadowing the method

    def remove(self) -> None:
        span = self.span
        if getattr(span, "end", None) is self:
            if self.original is not None:
                setattr(span, "end", self.original)
            else:
                delattr(span, "end")

    def __call__(self, end_time: int | None = None) -> None:
        tally = self.tally
        span = self.span
        self.remove()
        end_ns = end_time if end_time is not None else time.time_ns()
        result = None
        if not tally.closed:
            try:
                if tally.kind is _CELERY and self.processor._pool_child and isinstance(sys.exc_info()[1], SystemExit):
                    self.processor._abandon(tally)  # the pool is killing us: its main process reports it (killed.py)
                else:
                    result = self.processor._finish(tally, end_ns, writable=True)
            except Exception:
                log_exception(logger, "otel-budget: could not finish a scope; its span is exported without budgets")
        if self.original is not None:
            self.original(end_ns)
        else:
            type(span).end(span, end_ns)
        if tally.held is not None:  # an unsampled scope: export its trace if it is over budget
            self.processor._settle(tally, span, result)


class BudgetSpanProcessor(SpanProcessor):
    """Tallies every span under a scope and checks the scope against its budgets when it ends.

    Making one also puts the timeout hooks on the installed HTTP and DB client libraries, once per
    process (`_timeouts.install`): they feed `external.untimed_calls` and `db.untimed_connections`.

    Args:
        config: the budgets; default: built-in defaults (N+1 only).
        config_error: why the configured file could not be used; shown on every scope span.
        max_open_scopes: scopes kept open at once; beyond it the oldest is evicted (and counted).
        record_metrics: record the `budget.*` histograms and the `budget.violations` counter; or the
            names of the metrics whose histograms to record (the counter is recorded too).
        meter_provider: where those go (default: the global MeterProvider).
        sampling: `all`: the spans of a scope recorded but not sampled (`sampling.ScopeSampler`) are held and,
            if it ends over budget, exported; `follow`: they are not.
        max_held_spans, max_held_spans_per_scope: caps on those held spans, in total and per scope.
        memory_study: after a route/task overran `memory.growth_mb`, trace this many of its next runs with
            tracemalloc and name their top allocation sites (`budget.memory.top`); 0 (default): never trace.
    """

    def __init__(
        self,
        *,
        config: BudgetConfig | None = None,
        config_error: str | None = None,
        max_open_scopes: int = 10_000,
        record_metrics: bool | Collection[str] = True,
        meter_provider: Any = None,
        sampling: str = names.SAMPLING_ALL,
        max_held_spans: int = DEFAULT_MAX_HELD,
        max_held_spans_per_scope: int = DEFAULT_MAX_HELD_PER_SCOPE,
        memory_study: int = 0,
    ) -> None:
        self.config = config or BudgetConfig()
        self.config_error = config_error
        self.max_open_scopes = max(1, max_open_scopes)
        self.evicted_scopes = 0
        self._spans: dict[int, ScopeTally] = {}  # open span id -> its scope's tally (never rebound)
        self._scopes: dict[int, ScopeTally] = {}  # open scope span id -> tally, oldest first
        self._evict_lock = threading.Lock()
        self._listeners = Listeners()
        self._pool_child = False  # a Celery pool process: see `leave_killed_tasks_to_main_process`
        self._overlay: Mapping[str, float] | None = None
        self._held = (
            HeldSpans(per_scope=max_held_spans_per_scope, total=max_held_spans)
            if sampling != names.SAMPLING_FOLLOW
            else None
        )
        self._names: set[str] = set()  # distinct scope names reported, at most names.MAX_SCOPE_NAMES
        self._study: MemoryStudy | None = None  # None (the study off): one attribute test per scope start and end
        if memory_study > 0:
            from otel_budget._memory_study import MemoryStudy  # tracemalloc (and pickle) only when asked for

            self._study = MemoryStudy(memory_study)
        if record_metrics is False:
            self._metrics: BudgetMetrics | None = None
        else:
            histograms = None if record_metrics is True else _metric_names(record_metrics)
            self._metrics = BudgetMetrics(meter_provider, histograms)
        self.compiled = _install_compiled(self)
        _PROCESSORS.add(self)
        _LIVE[:] = [ref for ref in _LIVE if ref() is not None] + [weakref.ref(self)]
        _timeouts.install()  # the hooks that feed the untimed metrics: process-wide, once
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=functools.partial(_after_fork_in_child, weakref.ref(self)))

    # -- public API ---------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call `listener(result)` with every finished scope's `ScopeResult`."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def tally_for(self, span_id: int) -> ScopeTally | None:
        """The open scope that the span `span_id` belongs to."""
        return self._spans.get(span_id)

    @property
    def open_scopes(self) -> int:
        return len(self._scopes)

    def set_code_limits(self, tally: ScopeTally, limits: Mapping[str, float]) -> None:
        """In-code budgets (decorator, context manager): they win over the file."""
        tally.code_limits = {**(tally.code_limits or {}), **limits}
        tally.drain()
        self._resolve(tally, time.time_ns())

    def set_overlay(self, limits: Mapping[str, float] | None) -> None:
        """Limits applied on top of every scope's rule as rule `code`, under the scope's own in-code limits
        (the pytest plugin's per-test budgets); None removes them."""
        self._overlay = dict(limits) if limits else None

    def rule_for(
        self, kind: ScopeKind, name: str | None, method: str | None = None, code_limits: Mapping[str, float] | None = None
    ) -> BudgetRule:
        """The rule of a scope: the budgets file's, under the overlay, under the scope's in-code limits."""
        rule = self.config.rule_for(kind, name, method)
        if self._overlay:
            rule = rule.overridden(names.RULE_CODE, self._overlay)
        if code_limits:
            rule = rule.overridden(names.RULE_CODE, code_limits)
        return rule

    def publish(self, result: ScopeResult) -> None:
        """A finished scope to the metrics and the listeners (its span is written by whoever ends it)."""
        if self._metrics is not None:
            self._metrics.record(result)
        self._listeners(result)

    def leave_killed_tasks_to_main_process(self) -> None:
        """In a Celery pool process: a task whose span ends while SystemExit propagates (the pool's SIGTERM
        at a hard time limit) is not finished here, so it is not counted twice: the worker's main process
        reports it killed (killed.py). Nor are the main process's counts of killed tasks, copied by the fork."""
        self._pool_child = True
        if self._metrics is not None and not self._metrics.drop_inherited():
            log_exception(
                logger,
                "otel-budget: could not drop the metrics this pool process inherited; tasks its main process "
                "reported killed before the fork may be counted again",
                level=logging.WARNING,
                exc_info=False,
            )

    # -- SpanProcessor --------------------------------------------------------------------------------
    # This is the whole per-span cost: on_start one dict lookup (one insert inside a scope), on_end one pop
    # and, for a counted span, an append to its tally's queue (counted 16 at a time). The span's fields come
    # from one `_sdkspan` call at start and one at end; `ScopeTally`'s per-span bookkeeping is inlined below
    # (`adopt` once the scope has children, what `queue` was): one Python call less per span start and end.
    def on_start(self, span: Span, parent_context: context_api.Context | None = None) -> None:
        try:
            parent, scope_name, span_id = _started(span, _SCOPE_NAME)
            if parent is None or parent[2]:  # no parent or a remote one: a new scope?
                kind = _kind_of(span)
                if kind is _SERVER:
                    self._open(span, _HTTP, _name_of(span), None, span_id)
                elif kind is _CONSUMER:
                    if _attributes(span).get(_KILLED):  # a killed task's report (killed.py): judged already
                        return
                    name = _name_of(span)
                    self._open(span, ScopeKind.CELERY, name[4:] if name.startswith("run/") else name, None)
                elif scope_name is not None:
                    self._open(span, ScopeKind.SCOPE, str(scope_name), None)
                return
            owner = self._spans.get(parent[1])
            if scope_name is not None:
                self._open(span, ScopeKind.SCOPE, str(scope_name), owner)
            elif owner is not None and not owner.closed:
                self._spans[span_id] = owner
                open_spans = owner.open_spans
                if open_spans is not None:  # `owner.adopt(span_id)` once the set is made
                    open_spans.add(span_id)
                else:
                    owner.adopt(span_id)
                if not owner.rule_final:  # a request whose route is not known yet
                    self._unrouted_child(owner, span_id, span)
        except Exception:
            log_exception(logger, "otel-budget: on_start failed; this span is not counted")

    def _on_ending(self, span: Span) -> None:
        # Today (SDK 1.45) the span is already frozen here and `_EndScope` has done the work: checked
        # once at import (`_sdkspan.ON_ENDING_FROZEN`). Should the SDK make it writable
        # (open-telemetry/opentelemetry-python#5613), the scope is finished here.
        if _ON_ENDING_FROZEN:
            return
        try:
            if _times(span)[1] is not None:  # this span is frozen after all: `_EndScope` did the work
                return
            owner = self._scopes.get(_id_of(span))
            if owner is not None and not owner.closed:
                self._finish(owner, time.time_ns(), writable=True)
        except Exception:
            log_exception(logger, "otel-budget: _on_ending failed")

    def on_end(self, span: ReadableSpan) -> None:
        try:
            span_id, kind = _ended(span)
            owner = self._spans.pop(span_id, None)
            if owner is None or owner.closed:
                return
            if owner.span_id == span_id:  # the scope span ended without our `end`: read-only now
                result = self._finish(owner, _times(span)[1] or time.time_ns(), writable=False)
                if owner.held is not None:
                    self._settle(owner, span, result)
                return
            if owner.held is not None:  # a span of an unsampled scope
                self._held.hold(owner, span)  # type: ignore[union-attr]  # `held` is only set by `_held`
            if kind is _CLIENT:  # queued for the tally's next `drain`
                pending = owner.pending
                if pending is None:  # its scope was evicted while the span ran
                    return
                owner.open_spans.discard(span_id)  # type: ignore[union-attr]  # made with `pending`
                pending.append(span)
                if len(pending) >= _DRAIN_EVERY:  # a batch is waiting: count it
                    if not owner.rule_final:
                        self._resolve(owner, _times(span)[1] or 0)
                    owner.drain()
                return
            owner.close(span_id)
            if owner.route_spans is not None and owner.route_spans.pop(span_id, None) is not None:
                self._route_span_ended(owner, span)
            if kind is _PRODUCER:
                if _attributes(span).get(names.CELERY_ACTION) == "apply_async" or _name_of(span).startswith(
                    "apply_async/"
                ):
                    owner.add(_TASKS_ENQUEUED, 1, _times(span)[1] or 0)
        except Exception:
            log_exception(logger, "otel-budget: on_end failed; this span is not counted")

    def shutdown(self) -> None:
        _PROCESSORS.discard(self)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # -- scopes ---------------------------------------------------------------------------------------
    def _open(self, span: Span, kind: ScopeKind, name: str, parent: ScopeTally | None, span_id: int = 0) -> None:
        if len(self._scopes) >= self.max_open_scopes:
            self._evict_oldest()
        opened = ScopeTally(kind, name, span, parent, span_id)
        span_id = opened.span_id
        if self._held is not None and not _sampled(span):
            self._held.start(opened, span)
        self._resolve(opened, opened.start_ns)
        _EndScope(self, opened, span).install()
        self._scopes[span_id] = opened
        self._spans[span_id] = opened
        if self._study is not None:
            self._study.begin(opened)

    def _unrouted_child(self, scope: ScopeTally, span_id: int, span: Span) -> None:
        """A span started in a request with no route yet: the route may be on the scope span by now (Django
        under WSGI: resolved once, so later spans skip this), or this may be the framework's own span."""
        if self._resolve_if_routed(scope, _times(span)[0] or time.time_ns()):
            return
        kind = _kind_of(span)
        if kind is _INTERNAL or kind is _SERVER:
            self._watch_route(scope, span_id, span)

    def _resolve_if_routed(self, scope: ScopeTally, now_ns: int) -> bool:
        """The request's own span has its route by now (set after it started): its rule resolved; True if so."""
        if scope.span is not None and _attributes(scope.span).get(_HTTP_ROUTE) is not None:
            self._resolve(scope, now_ns)
            return True
        return False

    def _watch_route(self, scope: ScopeTally, span_id: int, span: Span) -> None:
        """A SERVER/INTERNAL span inside a request with no route yet: the framework's own span may carry it
        (Django's under ASGI's sets it in `process_view`; Flask's at start)."""
        if _attributes(span).get(_HTTP_ROUTE) is not None:
            scope.route_spans = {span_id: span}
            self._resolve(scope, time.time_ns())
            return
        watched = scope.route_spans
        if watched is None:
            watched = scope.route_spans = {}
        if len(watched) < _MAX_ROUTE_SPANS:
            watched[span_id] = span

    def _route_span_ended(self, scope: ScopeTally, span: ReadableSpan) -> None:
        """A watched span ended: its route, if it got one, is the request's (it cannot change any more)."""
        if not scope.rule_final and _attributes(span).get(_HTTP_ROUTE) is not None:
            scope.route_spans = {0: span}  # type: ignore[dict-item]  # read like the open ones
            self._resolve(scope, _times(span)[1] or time.time_ns())

    def _route(self, scope: ScopeTally, attributes: Mapping[str, Any]) -> str | None:
        """The request's route: on its own span (Django under WSGI, FastAPI), or on a framework span inside it."""
        route = attributes.get(_HTTP_ROUTE)
        if route is None and scope.route_spans:
            for span in list(scope.route_spans.values()):
                route = _attributes(span).get(_HTTP_ROUTE)
                if route is not None:
                    break
        if route is None:
            return None
        scope.route_spans = None
        scope.route = route if type(route) is str else str(route)
        return scope.route

    def _resolve(self, scope: ScopeTally, now_ns: int) -> None:
        """Find the rule for `scope`; for a request, final once the framework has set `http.route`."""
        name: str | None = scope.name
        method = None
        final = True
        if scope.kind is _HTTP and scope.span is not None:
            method = scope.method or _method(scope, scope.span)
            name = scope.route or self._route(scope, _attributes(scope.span))
            final = name is not None
        rule = self.rule_for(scope.kind, name, method, scope.code_limits)
        # Final only once its rule was found: a rule that cannot be built (a limit that is not a number, put
        # in by code) is tried again, last at the scope's end, which then leaves the span without budgets.
        scope.rule_final = final
        current = scope.rule
        if rule is current:  # the usual case: the rule cache hands back the same object
            return
        if current is None or rule.limits != current.limits:
            scope.apply_rule(rule, now_ns)
        else:
            scope.rule = rule

    def _forget(self, scope: ScopeTally) -> None:
        """Drop a closed scope and its spans still open (they will never be counted) from the maps."""
        still_open = scope.release()
        self._scopes.pop(scope.span_id, None)
        spans = self._spans
        spans.pop(scope.span_id, None)
        for span_id in still_open:
            spans.pop(span_id, None)

    def _abandon(self, scope: ScopeTally) -> None:
        """Drop an open scope unfinished: its span is exported without budgets."""
        self._forget(scope)
        scope.span = None
        scope.pending = None

    def _finish(self, scope: ScopeTally, end_ns: int, *, writable: bool) -> ScopeResult | None:
        self._forget(scope)
        span = scope.span
        try:
            if span is None:
                return None
            if not scope.rule_final:
                self._resolve(scope, end_ns)
            scope.drain()
            result = self._result(scope, span, end_ns)
            if self._study is not None:
                result = self._study.finish(scope, result)
            if writable:
                if scope.route is not None and _HTTP_ROUTE not in _attributes(span):
                    span.set_attribute(_HTTP_ROUTE, scope.route)  # found on a framework span inside it
                write_to_span(span, result)
            if scope.parent is not None and not scope.parent.closed:
                scope.merge_into(scope.parent, end_ns)
            self.publish(result)
            return result
        finally:
            scope.span = None
            scope.pending = None

    def _settle(self, scope: ScopeTally, span: ReadableSpan, result: ScopeResult | None) -> None:
        """An unsampled scope's span ended: its held spans exported if it is over budget, else let go."""
        try:
            assert self._held is not None
            dropped = self._held.settle(scope, span, result is not None and bool(result.violations))
            if dropped and self._metrics is not None:
                self._metrics.spans_dropped(dropped)
        except Exception:
            log_exception(logger, "otel-budget: could not export an over-budget trace that was not sampled")

    def _result(self, scope: ScopeTally, span: Span, end_ns: int) -> ScopeResult:
        rule = scope.rule
        assert rule is not None
        values = scope.measure(end_ns)
        name, method = scope.name, None
        if scope.kind is _HTTP:
            method = scope.method or _method(scope, span)
            # Never a raw path: a request that matched no route is `<method> unmatched`.
            name = scope.route or names.unmatched_scope_name(method)
        return verdict.judge(
            kind=scope.kind,
            name=self._bounded_name(name),
            method=method,
            rule=rule,
            values=values,
            crossed=scope.crossed,
            end_ns=end_ns,
            max_statement=scope.max_statement,
            trace_id=_trace_id_of(span),
            span_id=scope.span_id,
            config_error=self.config_error,
            details=scope.untimed_details(rule.limits) if scope.untimed else None,
        )

    def _bounded_name(self, name: str) -> str:
        """`name`, or the overflow name once `MAX_SCOPE_NAMES` others were seen: metric attributes stay bounded."""
        seen = self._names
        if name in seen:
            return name
        if len(seen) >= names.MAX_SCOPE_NAMES:
            return names.SCOPE_NAME_OVERFLOW
        seen.add(name)
        return name

    def _evict_oldest(self) -> None:
        with self._evict_lock:  # two threads at the cap must not evict (or count) the same scope
            try:
                oldest = self._scopes.pop(next(iter(self._scopes)), None)
            except (StopIteration, RuntimeError):  # empty, or changed under us: nothing to evict now
                return
            if oldest is None:
                return
            self.evicted_scopes += 1
        self._forget(oldest)
        oldest.pending = None
        if self._held is not None:
            self._held.release(oldest)
        span = oldest.span
        if span is not None:
            end = getattr(span, "end", None)
            if isinstance(end, _EndScope):
                end.remove()
            oldest.span = None
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
        self._spans.clear()  # in place: the compiled path holds this dict
        self._scopes = {}
        self._evict_lock = threading.Lock()  # another thread may have held it at the fork
        if self._held is not None:
            self._held.after_fork()
        if self._study is not None:
            self._study.after_fork()


def _method(scope: ScopeTally, span: Span) -> str | None:
    """A request's method (`http.request.method`, or the old `http.method`), read from its span until found."""
    found = first(_attributes(span), _HTTP_METHOD)
    if found is None:
        return None
    method = scope.method = found if type(found) is str else str(found)
    return method


def _after_fork_in_child(ref: weakref.ref[BudgetSpanProcessor]) -> None:
    processor = ref()
    if processor is not None:
        processor._after_fork()


def _install_compiled(processor: BudgetSpanProcessor) -> bool:
    """Put the compiled `on_start`/`_on_ending`/`on_end` on `processor` when they are loaded and it does not
    override ours (a subclass that does keeps its own). They handle the usual child span and call the
    methods above for everything else."""
    cls = BudgetSpanProcessor
    if _COMPILED is None or any(
        getattr(type(processor), method) is not getattr(cls, method) for method in ("on_start", "_on_ending", "on_end")
    ):
        return False
    fast = _COMPILED.FastPath(processor)
    processor.__dict__.update(on_start=fast.on_start, _on_ending=fast._on_ending, on_end=fast.on_end)
    return True


def _compiled_failed(message: str, error: BaseException) -> None:
    """The compiled path caught `error` where the Python one catches an `Exception`: logged alike."""
    try:
        raise error
    except Exception:
        log_exception(logger, message)


def _load_compiled() -> Any:
    """`_speedups` configured, or None: not built (no compiler at install), an SDK of another shape, or
    `OTEL_BUDGET_COMPILED=false`. Then the Python above is the whole hot path."""
    _speedups = compiled_module() if _sdkspan.SHAPE_OK else None
    if _speedups is None:
        return None
    _speedups.configure(
        {
            "bounded_type": BoundedAttributes, "client": _CLIENT, "scope_name": _SCOPE_NAME,
            "db_system_new": names.DB_SYSTEM[0], "db_system_old": names.DB_SYSTEM[1],
            "query_new": names.DB_STATEMENT[0], "query_old": names.DB_STATEMENT[1],
            "http_new": names.HTTP_METHOD[0], "http_old": names.HTTP_METHOD[1],
            "sql_caches": SQL_CACHES, "not_query": names.NOT_QUERY_SPANS, "statement_key": tally.statement_key,
            "layered": tally.layered_spans, "failed": _compiled_failed,
            "on_start": BudgetSpanProcessor.on_start, "on_end": BudgetSpanProcessor.on_end,
            "on_ending": BudgetSpanProcessor._on_ending, "globals": globals(),
            "db_queries": tally.DB_QUERIES, "db_ns": tally.DB_NS, "repeats": tally.REPEATS,
            "repeated_ns": tally.REPEATED_NS, "external_calls": tally.EXTERNAL_CALLS, "external_ns": tally.EXTERNAL_NS,
            "max_statements": tally.MAX_STATEMENTS, "drain_every": _DRAIN_EVERY, "tally_type": ScopeTally,
            "no_system_limits": tally._NO_SYSTEM_LIMITS, "mongo_keys": normalize.MONGO_KEYS,
            "mongo_keys_max": normalize.MONGO_KEYS_MAX, "cache_max_statement": normalize.CACHE_MAX_STATEMENT,
            "operation_new": names.DB_OPERATION[0], "operation_old": names.DB_OPERATION[1],
            "collection_new": names.DB_COLLECTION[0], "collection_old": names.DB_COLLECTION[1],
        }
    )  # fmt: skip
    tally.compiled_count(_speedups.count)
    return _speedups


def _metric_names(wanted: Collection[str]) -> frozenset[str]:
    """`record_metrics` given as names: each one checked, like a budgets file's keys."""
    chosen = frozenset([wanted] if isinstance(wanted, str) else wanted)
    known = frozenset(valid_metrics())
    unknown = sorted(chosen - known)
    if unknown:
        raise ValueError(f"record_metrics: {unknown[0]!r} is not a metric" + choices_hint(unknown[0], known))
    return chosen


_COMPILED = _load_compiled()
_PROCESSORS: weakref.WeakSet[BudgetSpanProcessor] = weakref.WeakSet()
# The same as a plain list, for the per-statement lookups of `_untimed` (iterating a WeakSet costs ~10x more).
_LIVE: list[weakref.ref[BudgetSpanProcessor]] = []


def current_tally() -> tuple[BudgetSpanProcessor, ScopeTally] | None:
    """The processor and open scope tally that the current span belongs to, if any."""
    span_id = trace.get_current_span().get_span_context().span_id
    if not span_id:
        return None
    for processor in list(_PROCESSORS):
        found = processor.tally_for(span_id)
        if found is not None:
            return processor, found
    return None


# -- untimed calls and connections (the hooks in `_timeouts.py` call these) ------------------------------
def untimed_call(describe: Callable[[], Mapping[str, str]]) -> None:
    """The HTTP client span now current makes its request with no timeout: counted once in its scope.

    Only a CLIENT span counts (so only calls `external.calls` counts): a call from a library that is not
    instrumented has its caller's span as the current one.
    """
    span = trace.get_current_span()
    if isinstance(span, ReadableSpan) and _kind_of(span) is _CLIENT:
        _untimed(span, _UNTIMED_CALLS, _id_of(span), describe)


def untimed_connection(connection: object, describe: Callable[[], Mapping[str, str]]) -> None:
    """The current span's scope uses `connection`, which has no timeout: counted once per scope."""
    span = trace.get_current_span()
    if isinstance(span, ReadableSpan):
        _untimed(span, _UNTIMED_CONNECTIONS, id(connection), describe)


def _untimed(span: ReadableSpan, slot: int, key: int, describe: Callable[[], Mapping[str, str]]) -> None:
    span_id = _id_of(span)
    for ref in _LIVE:
        processor = ref()
        owner = processor._spans.get(span_id) if processor is not None else None
        if processor is not None and owner is not None and not owner.closed:
            now_ns = time.time_ns()
            if not owner.rule_final:  # routed since its last span started (a driver's first check)
                processor._resolve_if_routed(owner, now_ns)
            owner.add_untimed(slot, key, describe, now_ns)
            return
