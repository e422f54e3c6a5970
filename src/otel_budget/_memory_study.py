"""Memory growth explained (`OTEL_BUDGET_MEMORY_STUDY`): after a `memory.growth_mb` overrun, the next runs
of that route/task are traced with `tracemalloc`, and each names its top allocation sites (`budget.memory.top`).

tracemalloc is process-wide, so one studied scope is traced at a time per process, and tracing runs only
while it does: started at its start (when nothing traced before), stopped at its end. With the study off
the processor holds no `MemoryStudy` at all. Costs: docs/benchmarks.md ("Memory study").
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import tracemalloc
from typing import TYPE_CHECKING

from otel_budget import names
from otel_budget._ratelimit import log_exception
from otel_budget._timeouts import _short_path
from otel_budget.names import ScopeKind
from otel_budget.results import ScopeResult

if TYPE_CHECKING:
    from otel_budget.tally import ScopeTally

__all__ = ["MAX_TOP_CHARS", "TOP_SITES", "MemoryStudy", "top_sites"]

logger = logging.getLogger(__name__)

TOP_SITES = 5  # allocation sites named per studied run
MAX_TOP_CHARS = 400  # `budget.memory.top` is at most this long (whole sites only)
COOLDOWN_S = 600.0  # after a study of a route/task ends, a new overrun starts the next one only this much later
FRAMES = 1  # tracemalloc frames per allocation: the allocating line
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Files that are the machinery, not the scope's code: tracemalloc itself, imports, otel-budget. Left out of
# the grouped lines (a few hundred), not of the traces (thousands): `Snapshot.filter_traces` costs ~40 µs
# a trace with five filters.
_MACHINERY = (tracemalloc.__file__, "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", "<unknown>")

class MemoryStudy:
    """Which routes/tasks are to be studied, and the one scope of this process being traced now.

    Args:
        runs: runs of a route/task traced after one of its runs overran `memory.growth_mb`.
        top: allocation sites named per studied run.
        cooldown_s: after a route/task was studied, the next overrun schedules a new study only this much later.
        max_keys: routes/tasks remembered (pending studies and cool-downs), the scope-name cap.
    """

    def __init__(
        self, runs: int, *, top: int = TOP_SITES, cooldown_s: float = COOLDOWN_S, max_keys: int = names.MAX_SCOPE_NAMES
    ) -> None:
        self.runs = runs
        self.top = top
        self.cooldown_s = cooldown_s
        self.max_keys = max_keys
        self._pending: dict[str, int] = {}  # route/task key -> studied runs still to come
        self._studied: dict[str, float] = {}  # key -> when its last study ended (time.monotonic), oldest first
        self._lock = threading.Lock()
        self._active: ScopeTally | None = None  # the scope traced now
        self._active_key = ""
        self._before: tracemalloc.Snapshot | None = None  # at its start, when tracing was on already
        self._we_trace = False  # we started tracemalloc (and stop it)

    @property
    def pending(self) -> dict[str, int]:
        """route/task key -> studied runs still to come (a copy)."""
        return dict(self._pending)

    @property
    def tracing(self) -> bool:
        """A scope of this process is being traced for its allocations."""
        return self._active is not None

    def begin(self, scope: ScopeTally) -> None:
        """At a scope's start: traced if its route/task has a study pending and no other scope is traced."""
        active = self._active
        if active is not None and active.span is None:  # dropped unfinished (evicted, abandoned): stop tracing
            with self._lock:
                if self._active is active:
                    self._stop()
        if not self._pending:
            return
        key = _start_key(scope.kind, scope.name)
        if key not in self._pending:
            return
        with self._lock:
            if self._active is not None or key not in self._pending:
                return  # one studied scope at a time: this run is not studied, a later one will be
            self._active, self._active_key = scope, key
            self._we_trace = not tracemalloc.is_tracing()
            if self._we_trace:
                tracemalloc.start(FRAMES)
                self._before = None
            else:  # someone else traces already: what they traced before this scope is subtracted
                self._before = tracemalloc.take_snapshot()

    def finish(self, scope: ScopeTally, result: ScopeResult) -> ScopeResult:
        """At a scope's end: a studied run gets its top allocation sites; an overrun schedules a study."""
        if self._active is scope:
            with self._lock:
                if self._active is scope:
                    return self._studied_run(result)
        if any(violation.metric == names.MEMORY_GROWTH_MB for violation in result.violations):
            self.schedule(_result_key(result))
        return result

    def after_fork(self) -> None:
        """In a forked child: the parent's traced scope never ends here, and its tracing is not ours to pay."""
        self._lock = threading.Lock()
        if self._active is not None:
            self._active = None
            if self._we_trace:
                tracemalloc.stop()
            self._we_trace, self._before = False, None

    # -- under the lock -------------------------------------------------------------------------------
    def _studied_run(self, result: ScopeResult) -> ScopeResult:
        key = self._active_key
        try:
            top = top_sites(tracemalloc.take_snapshot(), self._before, self.top)
        except Exception:  # e.g. someone stopped tracemalloc meanwhile: the scope is judged, without sites
            log_exception(logger, "otel-budget: could not read this run's allocations; no budget.memory.top")
            return result
        finally:
            self._stop()
        if _result_key(result) != key:  # not the route it looked like at its start: not counted, not told
            return result
        left = self._pending.get(key, 0) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)
            self._remember(key)
        return _with_top(result, top)

    def _stop(self) -> None:
        if self._we_trace:
            tracemalloc.stop()  # frees its traces: the cost is paid only while a studied scope runs
        self._active, self._active_key, self._before, self._we_trace = None, "", None, False

    def schedule(self, key: str) -> None:
        """Study the next runs of `key` (`METHOD route`, `celery task`, `scope name`), unless it was studied
        less than `cooldown_s` ago or `max_keys` studies are pending already."""
        if key == names.SCOPE_NAME_OVERFLOW or key.endswith(" " + names.SCOPE_NAME_OVERFLOW):
            return  # not one route/task
        with self._lock:
            studied = self._studied.get(key)
            if studied is not None and time.monotonic() - studied < self.cooldown_s:
                return
            if key not in self._pending and len(self._pending) < self.max_keys:
                self._pending[key] = self.runs

    def _remember(self, key: str) -> None:
        studied = self._studied
        studied.pop(key, None)
        while len(studied) >= self.max_keys:
            studied.pop(next(iter(studied)))
        studied[key] = time.monotonic()


def top_sites(snapshot: tracemalloc.Snapshot, before: tracemalloc.Snapshot | None, top: int = TOP_SITES) -> str:
    """The `top` lines whose allocations still alive grew most, as `file:line +N KiB; ...` (at most
    `MAX_TOP_CHARS`); lines under 1 KiB are left out."""
    if before is not None:
        grown = [(stat.size_diff, stat.traceback[0]) for stat in snapshot.compare_to(before, "lineno")]
    else:
        grown = [(stat.size, stat.traceback[0]) for stat in snapshot.statistics("lineno")]
    grown = [(size, frame) for size, frame in grown if not _machinery(frame.filename)]
    grown.sort(key=lambda pair: pair[0], reverse=True)
    sites: list[str] = []
    length = 0
    for size, frame in grown[:top]:
        kib = round(size / 1024)
        if kib < 1:
            break
        site = f"{_short_path(frame.filename)}:{frame.lineno} +{kib} KiB"
        length += len(site) + (2 if sites else 0)
        if length > MAX_TOP_CHARS:
            break
        sites.append(site)
    return "; ".join(sites)


def _machinery(filename: str) -> bool:
    return filename in _MACHINERY or filename.startswith(_PACKAGE_DIR)


def _with_top(result: ScopeResult, top: str) -> ScopeResult:
    """`result` with `budget.memory.top`: on the scope span, and on its `memory.growth_mb` event if it has one."""
    violations = tuple(
        dataclasses.replace(v, details={**(v.details or {}), names.DETAIL_MEMORY_TOP: top})
        if v.metric == names.MEMORY_GROWTH_MB and top
        else v
        for v in result.violations
    )
    return dataclasses.replace(result, violations=violations, memory_top=top or None)


def _start_key(kind: ScopeKind, name: str) -> str:
    """A scope's key at its start: a request's span name is `METHOD route` where the instrumentation names it
    so (Django's, Flask's, FastAPI's), a task's its name."""
    return name if kind is ScopeKind.HTTP else f"{kind} {name}"


def _result_key(result: ScopeResult) -> str:
    if result.kind is ScopeKind.HTTP:
        return f"{result.method} {result.name}" if result.method else result.name
    return f"{result.kind} {result.name}"
