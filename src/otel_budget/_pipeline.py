"""A provider's span processors called as one: the SDK's loop makes one call per hook, not one per processor.

The SDK's `SynchronousMultiSpanProcessor` calls each processor's `on_start`, `_on_ending` and `on_end` from a
Python loop: per span, three attribute lookups and three calls per processor, whatever the processor does
(the batch exporter's `on_start` and `_on_ending` do nothing). With ours beside the exporter's that is
~3 000 instructions per span before either does any work: a third of the cost budget of issue 14.

`fuse(provider)` replaces the tuple of processors in the provider's multi-processor by one `Pipeline`
(`_speedups.Pipeline`, C) holding them in the same order. Per hook it calls each member's bound method,
runs a compiled `BudgetSpanProcessor`'s path in place (no call through Python), and skips the methods whose
body is `pass`. What each processor sees is unchanged: the same spans, the same order, an exception from one
stops the later ones as the SDK's loop does. Processors added afterwards are added after the pipeline, by
the SDK, and called after it. Only the SDK's own `SynchronousMultiSpanProcessor` is fused, and only on the
compiled path; anything else (another multi-processor, the pure-Python path) is left as it is.

A member's hooks are read once, when it is fused: a hook set on a member's instance later is not seen.
"""

from __future__ import annotations

import dis
import logging
import time
import types
from collections.abc import Iterable
from inspect import getattr_static
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor

from otel_budget.settings import compiled_module

__all__ = ["Pipeline", "fuse", "fused", "members"]

logger = logging.getLogger(__name__)

_HOOKS = ("on_start", "_on_ending", "on_end")
_speedups = compiled_module()


def does_nothing(function: Any) -> bool:
    """`function` is a plain Python function whose body is `pass` (or a docstring): calling it is a no-op."""
    if not isinstance(function, types.FunctionType):
        return False
    steps = [(step.opname, step.argval) for step in dis.get_instructions(function) if step.opname not in ("RESUME", "NOP")]
    return steps in ([("LOAD_CONST", None), ("RETURN_VALUE", None)], [("RETURN_CONST", None)])


def _fast_path(processor: Any) -> Any:
    """The `FastPath` whose methods are `processor`'s three hooks (a compiled BudgetSpanProcessor), or None."""
    own = getattr(processor, "__dict__", {})
    paths = {getattr(own.get(hook), "__self__", None) for hook in _HOOKS}
    if len(paths) != 1:
        return None
    path = paths.pop()
    return path if _speedups is not None and isinstance(path, _speedups.FastPath) else None


def _hook(processor: Any, name: str) -> Any:
    """What the pipeline calls for `processor.<name>`: the bound method, or None when it does nothing."""
    own = getattr(processor, "__dict__", {})
    if name not in own and does_nothing(getattr_static(type(processor), name, None)):
        return None
    return getattr(processor, name)


def members(multi: Any) -> list[Any]:
    """The span processors of an SDK multi-processor, a fused pipeline's members in its place."""
    found: list[Any] = []
    for processor in getattr(multi, "_span_processors", ()):
        found.extend(processor.processors if isinstance(processor, Pipeline) else (processor,))
    return found


if _speedups is not None:

    class Pipeline(_speedups.Pipeline, SpanProcessor):  # type: ignore[misc,name-defined]
        """`processors` called as one span processor: hooks in C (`_speedups.Pipeline`), the rest here."""

        def __init__(self, processors: Iterable[Any]) -> None:
            processors = tuple(processors)
            fast = tuple(_fast_path(processor) for processor in processors)
            hooks = [
                tuple(None if path is not None else _hook(processor, name) for processor, path in zip(processors, fast))
                for name in _HOOKS
            ]
            super().__init__(processors, *hooks, fast)

        def shutdown(self) -> None:
            for processor in self.processors:
                processor.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            """As the SDK's loop: each member in turn within what is left of `timeout_millis`; False once the
            time is up, or when any member did not flush (the later ones are still flushed)."""
            deadline_ns = time.time_ns() + timeout_millis * 1_000_000
            all_flushed = True
            for processor in self.processors:
                now_ns = time.time_ns()
                if now_ns >= deadline_ns:
                    return False
                if not processor.force_flush((deadline_ns - now_ns) // 1_000_000):
                    all_flushed = False
            return all_flushed

        def __repr__(self) -> str:
            return f"Pipeline({list(self.processors)!r})"

else:

    class Pipeline(SpanProcessor):  # type: ignore[no-redef]
        """Without the compiled module nothing is fused; the class is there for `isinstance`."""

        processors: tuple[Any, ...] = ()


def fused(provider: Any) -> bool:
    """The provider's processors are called through a `Pipeline`."""
    multi = getattr(provider, "_active_span_processor", None)
    return any(isinstance(processor, Pipeline) for processor in getattr(multi, "_span_processors", ()))


def fuse(provider: Any) -> bool:
    """Call the provider's span processors through one `Pipeline` when one of them is a compiled
    BudgetSpanProcessor; True when they are (now or already)."""
    multi = getattr(provider, "_active_span_processor", None)
    if _speedups is None or type(multi) is not SynchronousMultiSpanProcessor:
        return False
    try:
        with multi._lock:  # noqa: SLF001 - add_span_processor's lock: no processor is added meanwhile
            current = multi._span_processors  # noqa: SLF001
            processors = members(multi)
            if not isinstance(current, tuple) or not any(_fast_path(processor) is not None for processor in processors):
                return False
            if len(current) == 1 and isinstance(current[0], Pipeline):
                return True
            multi._span_processors = (Pipeline(processors),)  # noqa: SLF001 - the SDK reads it per hook
    except Exception:
        logger.exception("otel-budget: could not call the span processors as one; the SDK calls each in turn")
        return False
    return True
