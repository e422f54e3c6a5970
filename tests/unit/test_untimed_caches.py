"""The DB hook's caches: short paths per file, library and target per connection, the context getter."""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import context as context_api
from opentelemetry.trace import SpanKind

from otel_budget import _timeouts
from otel_budget._timeouts import _short_path, call_site
from otel_budget.config import parse_config


@pytest.fixture
def paths(monkeypatch):  # type: ignore[no-untyped-def]
    """A known `sys.path` (the same list object, changed in place by the tests) and empty caches of 8."""
    monkeypatch.setattr(sys, "path", ["/a", "/a/b/", "", "/c"])
    monkeypatch.setattr(_timeouts, "_caches", ([], {}, {}))
    monkeypatch.setattr(_timeouts, "MAX_PATHS", 8)
    monkeypatch.setattr(_timeouts, "MAX_SITES", 8)
    return sys.path


def _cached() -> dict[str, str]:
    return _timeouts._caches[1]


def _sites() -> list[str]:
    return [site for _, site in _timeouts._caches[2].values()]


def _generated(index: int, filename: str) -> Callable[[], str]:
    """A function of its own code object, compiled from `filename`, calling `call_site` on line `index + 1`."""
    namespace: dict[str, Any] = {"__name__": "generated", "call_site": call_site}
    exec(compile("\n" * index + "def f():\n    return call_site()", filename, "exec"), namespace)
    return namespace["f"]  # type: ignore[no-any-return]


def test_short_paths_bounded_and_right_after_the_cap(paths) -> None:  # type: ignore[no-untyped-def]
    """20 files with a cap of 8: 8 cached, every answer (first and second time) the longest entry's."""
    files = [f"/a/b/m{n}.py" for n in range(10)] + [f"/a/x{n}.py" for n in range(10)]
    expected = [f"m{n}.py" for n in range(10)] + [f"x{n}.py" for n in range(10)]
    assert [_short_path(name) for name in files] == expected
    assert [_short_path(name) for name in files] == expected
    assert len(_cached()) == 8 and _cached() == dict(zip(files[:8], expected[:8], strict=True))
    assert (_short_path("/ab/y.py"), _short_path("/c"), _short_path("/elsewhere/z.py")) == ("/ab/y.py", "/c", "/elsewhere/z.py")


def test_short_paths_follow_changes_of_sys_path(paths) -> None:  # type: ignore[no-untyped-def]
    """An entry removed, added or replaced in place: the next answer is the new path's, not the cached one."""
    assert _short_path("/a/b/m.py") == "m.py"
    paths.remove("/a/b/")
    assert _short_path("/a/b/m.py") == "b/m.py"
    paths.insert(0, "/a/b")
    assert _short_path("/a/b/m.py") == "m.py"
    paths[0] = "/q"
    assert _short_path("/a/b/m.py") == "b/m.py"
    assert _cached() == {"/a/b/m.py": "b/m.py"}  # a new cache for the new path


def test_call_sites_bounded_right_after_the_cap_and_when_code_goes(paths) -> None:  # type: ignore[no-untyped-def]
    """20 functions, each its own code: 8 sites cached; every answer right, also once codes die and ids are reused."""
    for round in range(3):
        functions = [_generated(index, f"/a/b/gen{index % 3}.py") for index in range(20)]
        expected = [f"gen{index % 3}.py:{index + 2}" for index in range(20)]
        assert [function() for function in functions] == expected
        assert [function() for function in functions] == expected, round
        assert len(_timeouts._caches[2]) == 8 and _sites() == expected[:8]
        del functions
        gc.collect()
    paths.remove("/a/b/")
    assert _generated(0, "/a/b/gen0.py")() == "b/gen0.py:2"  # a new `sys.path`: new caches
    assert _sites() == ["b/gen0.py:2"]


def test_library_modules_bounded_and_right_after_the_cap(paths, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Frames of library modules are skipped by a cache of 2 module names as they were without it."""
    monkeypatch.setattr(_timeouts, "_MODULES", {})
    monkeypatch.setattr(_timeouts, "MAX_MODULES", 2)

    def calling(module: str, callee: Callable[[], str], line: int) -> Callable[[], str]:
        namespace: dict[str, Any] = {"__name__": module, "callee": callee}
        exec(compile("\n" * (line - 2) + "def f():\n    return callee()", f"/a/{module}.py", "exec"), namespace)
        return namespace["f"]  # type: ignore[no-any-return]

    for module, library in (("requests.sessions", True), ("app", False), ("urllib3", True), ("shop.views", False)):
        inner = calling("psycopg2.extras", call_site, 5)
        outer = calling(module, calling("django.db", inner, 7), 9)
        site, line = outer(), sys._getframe().f_lineno  # a library's frames skipped up to this test's
        assert site == f"{module}.py:9" if not library else site.endswith(f"test_untimed_caches.py:{line}"), site
    assert _timeouts._MODULES == {"psycopg2.extras": True, "django.db": True}


def test_short_paths_from_threads(paths) -> None:  # type: ignore[no-untyped-def]
    """8 threads over 200 files each: every answer right, the cache at its cap (plus at most one per thread)."""
    wrong: list[str] = []

    def run(index: int) -> None:
        for n in range(200):
            if _short_path(f"/a/b/t{index}/{n}.py") != f"t{index}/{n}.py":
                wrong.append(f"{index}/{n}")

    threads = [threading.Thread(target=run, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert 8 <= len(_cached()) <= 8 + 8


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_caches_in_a_forked_child(paths) -> None:  # type: ignore[no-untyped-def]
    """A child forked with a full cache answers right, also once its `sys.path` changes; the parent's is its own."""
    assert _short_path("/a/b/m.py") == "m.py"
    pid = os.fork()
    if pid == 0:  # the child: no pytest here, only an exit status
        ok = _short_path("/a/b/m.py") == "m.py"
        paths.remove("/a/b/")
        ok = ok and _short_path("/a/b/m.py") == "b/m.py"
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (_short_path("/a/b/m.py"), _cached()) == ("m.py", {"/a/b/m.py": "m.py"})


class _Info:
    """psycopg2's `connection.info`, counting the reads of `dsn_parameters` (libpq parses its conninfo per read)."""

    def __init__(self, parameters: dict[str, str]) -> None:
        self.parameters, self.reads = parameters, 0

    @property
    def dsn_parameters(self) -> dict[str, str]:
        self.reads += 1
        return dict(self.parameters)


class _Psycopg3Info:
    def get_parameters(self) -> dict[str, str]:
        return {"host": "pg3", "port": "6432"}


class _Connection:
    __module__ = "psycopg2.extensions"

    def __init__(self, info: object) -> None:
        self.info = info


class _Psycopg3Connection:
    __module__ = "psycopg.connection"

    def __init__(self) -> None:
        self.info = _Psycopg3Info()


class _Cursor:
    def __init__(self, connection: object) -> None:
        self.connection = connection


def test_connection_read_once_and_its_details_in_every_scope(tracing) -> None:  # type: ignore[no-untyped-def]
    """3 scopes of 5 statements: `dsn_parameters` read once; each scope counts 1 and names host:port and call site."""
    tracing.processor.config = parse_config({"http": {"db": {"untimed_connections": 0}}}, source="t.toml")
    info = _Info({"host": "db.internal", "port": "5433", "options": ""})
    cursor = _Cursor(_Connection(info))
    execute = _timeouts._wrap_cursor(lambda tracer, cursor, statement: statement)
    lines = []
    for route in ("a/", "b/", "c/"):
        with tracing.request(route):
            lines.append(sys._getframe().f_lineno + 1)
            assert [execute(None, cursor, f"SELECT {n}") for n in range(5)] == [f"SELECT {n}" for n in range(5)]
    assert info.reads == 1
    results = tracing.results
    assert [result.values["db.untimed_connections"] for result in results] == [1, 1, 1]
    for result, line in zip(results, lines, strict=True):
        (violation,) = result.violations
        details = dict(violation.details)
        assert details.pop("call_site").endswith(f"test_untimed_caches.py:{line}"), violation.details
        assert details == {"library": "psycopg2", "target": "db.internal:5433"}


def test_timed_connection_has_no_describer_and_psycopg3_parameters(tracing) -> None:  # type: ignore[no-untyped-def]
    """A timed connection keeps no details; psycopg 3's `get_parameters()` gives the target."""
    timed = _Connection(_Info({"host": "db", "port": "5432", "connect_timeout": "3"}))
    assert _timeouts._connection_entry(timed) == [True, None, None]
    entry = _timeouts._connection_entry(_Psycopg3Connection())
    assert entry[:2] == [False, None]
    assert {key: value for key, value in entry[2]().items() if key != "call_site"} == {"library": "psycopg", "target": "pg3:6432"}


def test_over_the_cap_a_connection_is_worked_out_per_statement(monkeypatch, tracing) -> None:  # type: ignore[no-untyped-def]
    """With no room in the cache the verdict is read per statement, and the scope still counts the connection once."""
    monkeypatch.setattr(_timeouts, "MAX_CONNECTIONS", 0)
    info = _Info({"host": "db", "port": "5432"})
    cursor = _Cursor(_Connection(info))
    execute = _timeouts._wrap_cursor(lambda tracer, cursor, statement: statement)
    with tracing.request("a/"):
        for n in range(3):
            execute(None, cursor, f"SELECT {n}")
    assert id(cursor.connection) not in _timeouts._CONNECTIONS and info.reads == 3
    (result,) = tracing.results
    assert result.values["db.untimed_connections"] == 1


def test_wrapper_passes_every_argument_and_never_raises(tracing) -> None:  # type: ignore[no-untyped-def]
    """Positional and keyword arguments reach the original as given; a call without a cursor is the original's error."""
    seen: list[tuple[object, ...]] = []

    def original(*args: object, **kwargs: object) -> str:
        seen.append((args, kwargs))
        return "done"

    execute = _timeouts._wrap_cursor(original)
    cursor = _Cursor(_Connection(_Info({"host": "db"})))
    with tracing.request("a/"):
        assert execute("tracer", cursor, "method", "SELECT 1", (2,), extra=3) == "done"
        assert execute("tracer", cursor=cursor) == "done"
        assert execute() == "done"
    assert seen == [(("tracer", cursor, "method", "SELECT 1", (2,)), {"extra": 3}), (("tracer",), {"cursor": cursor}), ((), {})]
    assert tracing.results[0].values["db.untimed_connections"] == 1
    strict = _timeouts._wrap_cursor(lambda tracer, cursor, method: None)
    with pytest.raises(TypeError):
        strict("tracer")


def test_context_getter_is_the_current_context(tracing, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The getter gives `context.get_current()` itself, in a span and out; another runtime context gets the public function."""
    getter = _timeouts._current_context
    assert getter() is context_api.get_current()
    with tracing.tracer.start_as_current_span("GET a/", kind=SpanKind.SERVER):
        assert getter() is context_api.get_current()
        inside = getter()
    assert getter() is context_api.get_current() and getter() is not inside
    monkeypatch.setitem(sys.modules, "opentelemetry.context.contextvars_context", None)  # the module gone
    assert _timeouts._context_getter() is context_api.get_current
    monkeypatch.undo()
    assert _timeouts._context_getter() is not context_api.get_current  # the ContextVar's own `get`
    monkeypatch.setattr(context_api, "_RUNTIME_CONTEXT", object())
    assert _timeouts._context_getter() is context_api.get_current
