"""Which external calls and DB connections have no timeout: light hooks on the libraries that tell a scope.

The spans the instrumentations make do not say whether a call had a timeout, so `install` wraps one
function per client library, at the level where the timeout in force is known:

    HTTP (inside the CLIENT span)   urllib3 `HTTPConnectionPool._make_request` (requests and urllib3),
                                    httpcore `ConnectionPool.handle_request` (httpx, sync and async),
                                    urllib `AbstractHTTPHandler.do_open`
    DB (once per statement)         dbapi `CursorTracer.traced_execution[_async]` (psycopg2, psycopg),
                                    pymongo `Pool.checkout`, redis-py `ConnectionPool.get_connection`
                                    (sync and asyncio)

A timed call costs the wrapper and one comparison; an untimed one finds its scope through the current
span (`processor.untimed_call` / `untimed_connection`). Nothing here runs per span: the DB path of the
processor is untouched. The hooks never raise into the host.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import re
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace

from otel_budget import names, processor
from otel_budget._ratelimit import log_exception

__all__ = ["call_site", "install", "installed", "uninstall"]

logger = logging.getLogger(__name__)

# Top-level packages whose frames are not the call site: the HTTP/DB client libraries, ours, OpenTelemetry's.
_LIBRARY_PACKAGES = frozenset(
    {
        "requests", "urllib3", "httpx", "httpcore", "h11", "h2", "anyio", "sniffio", "urllib", "http", "socket",
        "contextlib", "functools", "wrapt", "otel_budget", "opentelemetry", "psycopg2", "psycopg", "pymongo",
        "redis", "kombu", "celery", "django",
    }
)  # fmt: skip
_INSTRUMENTATION_PREFIX = "opentelemetry.instrumentation."
_STATEMENT_TIMEOUT = re.compile(r"statement_timeout\s*=\s*'?([^\s']+)")


def call_site(frame: Any = None) -> str:
    """`file:line` of the first frame outside the client libraries, otel-budget and OpenTelemetry."""
    frame = frame or sys._getframe(1)
    modules = _MODULES
    while frame is not None:
        module = frame.f_globals.get("__name__") or ""
        library = modules.get(module)
        if library is None:
            library = module.partition(".")[0] in _LIBRARY_PACKAGES
            if len(modules) < MAX_MODULES:
                modules[module] = library
        if not library:
            return _site(frame)
        frame = frame.f_back
    return "?"


# module name -> whether its frames are a library's (not the call site): a dict lookup per frame walked
# instead of a `partition` and the hash of its new string. At most MAX_MODULES names (then worked out).
MAX_MODULES = 4096
_MODULES: dict[str, bool] = {}


# What naming a call site costs, cached for one `sys.path` (a copy of it: any change to `sys.path` starts
# new caches): a file's short path (the loop over `sys.path` with its string work), and a frame
# position's whole `file:line` (CPython works out `f_lineno` from the code's line table, scanned from the
# start per read: ~11 000 instructions in the benchmark's loop). At most MAX_PATHS files, MAX_SITES sites.
MAX_PATHS = 1024
MAX_SITES = 1024
_Caches = tuple[list[str], dict[str, str], dict[tuple[int, int], tuple[Any, str]]]
_caches: _Caches = ([], {}, {})


def _current_caches() -> _Caches:
    global _caches
    caches = _caches
    if caches[0] != sys.path:  # elementwise, by identity first: a few hundred instructions
        caches = _caches = (list(sys.path), {}, {})
    return caches


def _site(frame: Any) -> str:
    """`frame`'s `file:line`, cached by (code, instruction offset); the code is held, so its id stays its own."""
    made_for, paths, sites = _current_caches()
    code = frame.f_code
    key = (id(code), frame.f_lasti)
    found = sites.get(key)
    if found is not None and found[0] is code:
        return found[1]
    site = f"{_cached_short_path(code.co_filename, made_for, paths)}:{frame.f_lineno}"
    if len(sites) < MAX_SITES:
        sites[key] = (code, site)
    return site


def _short_path(filename: str) -> str:
    """The file as imported: relative to the longest `sys.path` entry that holds it."""
    made_for, paths, _ = _current_caches()
    return _cached_short_path(filename, made_for, paths)


def _cached_short_path(filename: str, made_for: list[str], paths: dict[str, str]) -> str:
    short = paths.get(filename)
    if short is None:
        short = _relative(filename, made_for)  # from the copy, so that an entry always matches its cache
        if len(paths) < MAX_PATHS:
            paths[filename] = short
    return short


def _relative(filename: str, path: list[str]) -> str:
    best = ""
    for entry in path:
        if entry and filename.startswith(entry.rstrip("/") + "/") and len(entry) > len(best):
            best = entry.rstrip("/") + "/"
    return filename[len(best) :] if best else filename


def _unbounded(value: Any) -> bool:
    """A timeout value that lets a socket wait forever: None, or "the default" while the socket default is None."""
    if value is None:
        return True
    if isinstance(value, (int, float)):
        return False
    return socket.getdefaulttimeout() is None  # a library's "default timeout" sentinel


def _target(host: Any, port: Any, scheme: Any = "http") -> str:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if isinstance(scheme, bytes):
        scheme = scheme.decode("ascii", "replace")
    if not port:
        port = 443 if scheme in ("https", "wss") else 80
    return f"{host}:{port}"


def _describer(library: str, target: Callable[[], str]) -> Callable[[], Mapping[str, str]]:
    """The details of an untimed call, made only when the scope keeps them (the library from the current span)."""

    def describe() -> Mapping[str, str]:
        span = trace.get_current_span()
        scope = getattr(span, "instrumentation_scope", None)
        scope_name = getattr(scope, "name", "") or ""
        found = scope_name[len(_INSTRUMENTATION_PREFIX) :] if scope_name.startswith(_INSTRUMENTATION_PREFIX) else ""
        return {
            names.DETAIL_LIBRARY: found or library,
            names.DETAIL_TARGET: target(),
            names.DETAIL_CALL_SITE: call_site(),
        }

    return describe


def _guarded(check: Callable[..., None]) -> Callable[..., None]:
    """`check` that never raises into the host."""

    @functools.wraps(check)
    def guarded(*args: Any) -> None:
        try:
            check(*args)
        except Exception:
            log_exception(logger, "otel-budget: could not check a timeout; this call is not counted as untimed")

    return guarded


# -- HTTP: the checks ---------------------------------------------------------------------------------
@_guarded
def _check_urllib3(pool: Any, timeout: Any) -> None:
    if hasattr(timeout, "total"):  # urllib3.Timeout: unbounded when neither `total` nor `read` bound it
        if not (_unbounded(timeout.total) and _unbounded(getattr(timeout, "_read", None))):
            return
    elif not _unbounded(timeout):
        return
    processor.untimed_call(_describer("urllib3", lambda: _target(pool.host, pool.port, pool.scheme)))


@_guarded
def _check_httpcore(request: Any) -> None:
    timeout = request.extensions.get("timeout")
    if timeout and timeout.get("read") is not None:
        return
    url = request.url
    processor.untimed_call(_describer("httpx", lambda: _target(url.host, url.port, url.scheme)))


@_guarded
def _check_urllib(request: Any) -> None:
    if not _unbounded(getattr(request, "timeout", None)):
        return

    def target() -> str:
        host, _, port = str(request.host).rpartition(":")
        if not host or not port.isdigit():  # no port given
            host, port = str(request.host), ""
        return _target(host, port, request.type)

    processor.untimed_call(_describer("urllib", target))


# -- DB: which connections have no timeout, remembered per connection -----------------------------------
# id(connection) -> [timed?, the context of its last statement counted, its describer (untimed only)]: a
# statement on a known connection costs a dict lookup (and, untimed, one `context.get_current()`); the
# first statement pays for the verdict, and for the library and `host:port` of an untimed connection
# (libpq parses its whole conninfo per read of `dsn_parameters`: read once per connection, not per scope).
# An entry goes with its connection (a weakref callback), and at most MAX_CONNECTIONS are kept: beyond
# that a connection's verdict is worked out per statement, as it was before the cache.
MAX_CONNECTIONS = 4096
_CONNECTIONS: dict[int, list[Any]] = {}
_REFS: dict[int, weakref.ref[Any]] = {}  # id(connection or pool) -> the weakref whose callback drops its entry
_POOLS: dict[int, list[Any]] = {}  # id(pool) -> [the context it was last counted from] (`_counted_here`)


def _context_getter() -> Callable[[], Any]:
    """`context.get_current`, or, with OpenTelemetry's default runtime context, the `ContextVar.get` it calls.

    The same object either way (`ContextVarsRuntimeContext.get_current` is `self._current_context.get()`),
    without its two Python calls: ~650 instructions of the per-statement test. Any other runtime context
    (`OTEL_PYTHON_CONTEXT`), or another shape of the private attributes, gets the public function.
    """
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    except ImportError:
        return context_api.get_current
    runtime = getattr(context_api, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(variable, contextvars.ContextVar):
        return variable.get
    return context_api.get_current


_current_context = _context_getter()


def _postgres_parameters(connection: Any) -> Mapping[str, Any]:
    """The connection's parameters: psycopg2's `info.dsn_parameters`, psycopg's `info.get_parameters()`."""
    info = connection.info
    try:
        parameters: Mapping[str, Any] = info.dsn_parameters  # a property: read once (`hasattr` would read it)
    except AttributeError:
        parameters = info.get_parameters()
    return parameters


def _postgres_timed(parameters: Mapping[str, Any]) -> bool:
    connect_timeout = str(parameters.get("connect_timeout") or "0")
    statement = _STATEMENT_TIMEOUT.search(str(parameters.get("options") or ""))
    return connect_timeout not in ("", "0") or (statement is not None and statement.group(1) not in ("0", "0ms"))


def _postgres_target(parameters: Mapping[str, Any]) -> str:
    return _target(parameters.get("host") or "localhost", parameters.get("port") or 5432)


def _forget_connection(key: int) -> Callable[[Any], None]:
    def forget(_: Any) -> None:
        _CONNECTIONS.pop(key, None)
        _POOLS.pop(key, None)
        _REFS.pop(key, None)

    return forget


def _connection_entry(connection: Any) -> list[Any]:
    """The `[timed?, last context, describe]` of a connection seen for the first time (cached while there is room)."""
    library = type(connection).__module__.partition(".")[0]
    entry: list[Any] = [True, None, None]
    if library in ("psycopg2", "psycopg"):
        parameters = _postgres_parameters(connection)
        if not _postgres_timed(parameters):
            entry[0], entry[2] = False, _db_describer(library, _postgres_target(parameters))
    _keep(_CONNECTIONS, connection, entry)
    return entry


def _keep(table: dict[int, list[Any]], owner: Any, entry: list[Any]) -> None:
    """`table[id(owner)] = entry` while there is room, dropped with `owner` (a weakref callback); an object
    whose class has no weakrefs is not kept."""
    key = id(owner)
    if len(table) < MAX_CONNECTIONS:
        try:
            _REFS[key] = weakref.ref(owner, _forget_connection(key))
        except TypeError:
            return
        table[key] = entry


def _check_cursor(cursor: Any) -> None:
    """Per statement: counts the cursor's connection, once per scope, if it has no timeout. Never raises.

    `_wrap_cursor`'s wrapper makes the same first test inline, so the usual statement makes no call here.
    """
    try:
        connection = getattr(cursor, "connection", None)
        if connection is None:
            return
        entry = _CONNECTIONS.get(id(connection))
        if entry is None:
            entry = _connection_entry(connection)
        if entry[0]:
            return  # timed
        context = _current_context()
        if entry[1] is context:
            return  # counted already from this very context (the usual statement)
        entry[1] = context
        processor.untimed_connection(connection, entry[2])
    except Exception:
        log_exception(logger, "otel-budget: could not check a timeout; this call is not counted as untimed")


def _counted_here(pool: Any) -> bool:
    """The untimed `pool` was counted from the context current now (the usual operation after a scope's first):
    True, nothing to do. Else the context is remembered and False: count it (`untimed_connection` counts a
    pool once per scope). One `[last context]` per pool, kept as the cursors' are (`_connection_entry`)."""
    entry = _POOLS.get(id(pool))
    context = _current_context()
    if entry is None:
        entry = [None]
        _keep(_POOLS, pool, entry)
    elif entry[0] is context:
        return True
    entry[0] = context
    return False


@_guarded
def _check_mongo_pool(pool: Any) -> None:
    if pool.opts.socket_timeout is not None:
        return
    csot = sys.modules.get("pymongo._csot")
    if csot is not None and csot.get_timeout() is not None:  # timeoutMS (client-wide or `pymongo.timeout()`)
        return
    if not _counted_here(pool):
        processor.untimed_connection(pool, _pool_describer("pymongo", lambda: _target(*pool.address)))


@_guarded
def _check_redis_pool(pool: Any) -> None:
    kwargs = pool.connection_kwargs
    if kwargs.get("socket_timeout") is not None or _counted_here(pool):
        return
    target = (lambda: str(kwargs["path"])) if kwargs.get("path") else (lambda: _target(kwargs.get("host"), kwargs.get("port")))
    processor.untimed_connection(pool, _pool_describer("redis", target))


def _db_describer(library: str, target: str) -> Callable[[], Mapping[str, str]]:
    """The details of an untimed connection: its library and target (known), and the call site (now)."""

    def describe() -> Mapping[str, str]:
        return {names.DETAIL_LIBRARY: library, names.DETAIL_TARGET: target, names.DETAIL_CALL_SITE: call_site()}

    return describe


def _pool_describer(library: str, target: Callable[[], str]) -> Callable[[], Mapping[str, str]]:
    """The same for a pool checked per operation, its target worked out only if the details are kept."""
    return lambda: {names.DETAIL_LIBRARY: library, names.DETAIL_TARGET: target(), names.DETAIL_CALL_SITE: call_site()}


# -- the wrappers, and the patches that own them -----------------------------------------------------
def _wrap_urllib3(original: Callable[..., Any]) -> Callable[..., Any]:
    def _make_request(pool: Any, *args: Any, **kwargs: Any) -> Any:
        _check_urllib3(pool, kwargs["timeout"] if "timeout" in kwargs else args[6] if len(args) > 6 else None)
        return original(pool, *args, **kwargs)

    return _make_request


def _wrap_httpcore(original: Callable[..., Any]) -> Callable[..., Any]:
    def handle_request(pool: Any, request: Any) -> Any:
        _check_httpcore(request)
        return original(pool, request)

    return handle_request


def _wrap_httpcore_async(original: Callable[..., Any]) -> Callable[..., Any]:
    async def handle_async_request(pool: Any, request: Any) -> Any:
        _check_httpcore(request)
        return await original(pool, request)

    return handle_async_request


def _wrap_urllib(original: Callable[..., Any]) -> Callable[..., Any]:
    def do_open(handler: Any, http_class: Any, request: Any, **http_conn_args: Any) -> Any:
        _check_urllib(request)
        return original(handler, http_class, request, **http_conn_args)

    return do_open


def _wrap_cursor(original: Callable[..., Any]) -> Callable[..., Any]:
    connections, current_context = _CONNECTIONS.get, _current_context

    # `*args` as they come (tracer, cursor, query method, ...): passed on without a new tuple.
    def traced_execution(*args: Any, **kwargs: Any) -> Any:
        try:
            entry = connections(id(args[1].connection))
        except Exception:  # no cursor, or one without a connection: `_check_cursor` sees to it
            entry = None
        if entry is None or not (entry[0] or entry[1] is current_context()):  # else: timed, or counted here
            _check_cursor(args[1] if len(args) > 1 else kwargs.get("cursor"))
        return original(*args, **kwargs)

    return traced_execution


def _wrap_pool(check: Callable[[Any], None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def checked(pool: Any, *args: Any, **kwargs: Any) -> Any:
            check(pool)
            return original(pool, *args, **kwargs)

        return checked

    return wrap


class _Patch:
    """One method of a library class replaced by our wrapper; `remove` puts the original back."""

    def __init__(self, module: str, owner: str, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        self.module, self.owner_name, self.name, self.wrap = module, owner, name, wrap
        self.owner: Any = None
        self.original: Any = None
        self.wrapper: Any = None

    def install(self) -> bool:
        try:
            owner = getattr(importlib.import_module(self.module), self.owner_name)
        except (ImportError, AttributeError):
            return False  # the library is not installed (or has another shape): nothing to watch
        original = owner.__dict__.get(self.name)
        if original is None:
            return False
        self.owner, self.original = owner, original
        self.wrapper = self.wrap(original)
        setattr(owner, self.name, self.wrapper)
        return True

    def remove(self) -> None:
        if self.owner is not None and self.owner.__dict__.get(self.name) is self.wrapper:
            setattr(self.owner, self.name, self.original)
        self.owner = None


_PATCHES = (
    _Patch("urllib3.connectionpool", "HTTPConnectionPool", "_make_request", _wrap_urllib3),
    _Patch("httpcore", "ConnectionPool", "handle_request", _wrap_httpcore),
    _Patch("httpcore", "AsyncConnectionPool", "handle_async_request", _wrap_httpcore_async),
    _Patch("urllib.request", "AbstractHTTPHandler", "do_open", _wrap_urllib),
    # The async variants return a coroutine or an async context manager: the check is made at the call.
    _Patch("opentelemetry.instrumentation.dbapi", "CursorTracer", "traced_execution", _wrap_cursor),
    _Patch("opentelemetry.instrumentation.dbapi", "CursorTracer", "traced_execution_async", _wrap_cursor),
    _Patch("pymongo.synchronous.pool", "Pool", "checkout", _wrap_pool(_check_mongo_pool)),
    _Patch("pymongo.asynchronous.pool", "Pool", "checkout", _wrap_pool(_check_mongo_pool)),
    _Patch("redis.connection", "ConnectionPool", "get_connection", _wrap_pool(_check_redis_pool)),
    _Patch("redis.connection", "BlockingConnectionPool", "get_connection", _wrap_pool(_check_redis_pool)),
    _Patch("redis.asyncio.connection", "ConnectionPool", "get_connection", _wrap_pool(_check_redis_pool)),
    _Patch("redis.asyncio.connection", "BlockingConnectionPool", "get_connection", _wrap_pool(_check_redis_pool)),
)
_installed: list[_Patch] = []
_waiting: dict[str, list[_Patch]] = {}  # module not imported yet -> its patches, put on when it is imported
_waiting_lock = threading.RLock()


class _PatchingLoader(importlib.abc.Loader):
    """The loader of a hooked library's module, with its patches put on right after the module ran."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        module.__spec__.loader = module.__loader__ = self._loader  # the library's own loader from now on
        _install_waiting(self._name)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...: the library's loader's
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """On `sys.meta_path` while some hooked library is not imported yet: it lets the other finders find the
    module and wraps its loader, so the patches go on when (and only if) the application imports it."""

    def __init__(self) -> None:
        self._finding = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _waiting or getattr(self._finding, "name", None) == fullname:
            return None
        self._finding.name = fullname  # the other finders, not this one again
        try:
            spec = importlib.util.find_spec(fullname)
        except (ImportError, ValueError):
            return None
        finally:
            self._finding.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _PatchingLoader(spec.loader, fullname)
        return spec


_FINDER = _PostImportFinder()


def _install_waiting(module: str) -> None:
    try:
        with _waiting_lock:
            patches = _waiting.pop(module, [])
            _installed.extend(patch for patch in patches if patch.install())
            if not _waiting and _FINDER in sys.meta_path:
                sys.meta_path.remove(_FINDER)
    except Exception:  # never into the application's import
        log_exception(logger, "otel-budget: could not put the timeout hooks on %s", module)


def install() -> list[str]:
    """Put the hooks on the client libraries (idempotent); the `module.Class.method` names hooked so far.

    A library already imported is hooked now; one not imported yet is hooked when the application imports
    it (`_PostImportFinder`): otel-budget itself imports none of them (a process that never uses pymongo
    or httpx does not load them because of us).
    """
    with _waiting_lock:
        if not _installed and not _waiting:
            for patch in _PATCHES:
                if patch.module in sys.modules:
                    if patch.install():
                        _installed.append(patch)
                else:
                    _waiting.setdefault(patch.module, []).append(patch)
            if _waiting and _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            logger.debug("otel-budget: timeout hooks on %s", ", ".join(installed()))
    return installed()


def installed() -> list[str]:
    return [f"{patch.module}.{patch.owner_name}.{patch.name}" for patch in _installed]


def uninstall() -> None:
    """Take every hook off again (and stop waiting for the libraries not imported yet)."""
    with _waiting_lock:
        _waiting.clear()
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
        while _installed:
            _installed.pop().remove()
