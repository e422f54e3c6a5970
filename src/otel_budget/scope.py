"""In-code budgets: a decorator for Django views and Celery tasks, and an explicit scope."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

from opentelemetry import trace

from otel_budget import names
from otel_budget._ratelimit import log_exception
from otel_budget.config import validate_limits
from otel_budget.processor import current_tally

__all__ = ["budget", "budget_scope", "set_budget"]

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def set_budget(limits: Mapping[str, float] | None = None, /, **keyword_limits: float) -> bool:
    """Override budgets for the scope the current span belongs to; True if there was one.

    `set_budget(db_queries=50)` or `set_budget({"db.queries": 50})`.

    Raises:
        ConfigError: an unknown metric or a bad value.
    """
    checked = validate_limits({**(limits or {}), **keyword_limits})
    return _apply(checked)


def _apply(checked: Mapping[str, float]) -> bool:
    try:
        found = current_tally()
        if found is None:
            return False
        processor, tally = found
        processor.set_code_limits(tally, checked)
        return True
    except Exception:
        log_exception(logger, "otel-budget: could not apply in-code budgets")
        return False


def budget(limits: Mapping[str, float] | None = None, /, **keyword_limits: float) -> Callable[[F], F]:
    """Decorate a Django view (sync or async) or a Celery task function with its own budgets.

    The limits are checked when the module is imported and win over the budgets file. On a Celery
    task, `@budget` goes below `@shared_task` / `@app.task`, directly on the function.

    Raises:
        ConfigError: an unknown metric or a bad value.
        TypeError: (when decorating) `@budget` is above a Celery task decorator.
    """
    checked = validate_limits({**(limits or {}), **keyword_limits}, source="@budget")

    def decorate(func: F) -> F:
        _refuse_celery_task(func)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                _apply(checked)
                return await func(*args, **kwargs)

            setattr(async_wrapper, names.CODE_LIMITS_ATTR, checked)
            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _apply(checked)
            return func(*args, **kwargs)

        setattr(wrapper, names.CODE_LIMITS_ATTR, checked)  # read by killed.py: a killed task's code rule
        return cast(F, wrapper)

    return decorate


def _refuse_celery_task(func: object) -> None:
    """`@budget` above `@shared_task`/`@app.task` would hide the task's `delay`/`apply` behind a function.

    Celery's task objects and lazy task proxies are recognised by their classes (`celery.*`), without
    touching attributes (which would evaluate a proxy and finalize the app at import time).
    """
    if not any(cls.__module__.split(".")[0] == "celery" for cls in type(func).__mro__):
        return
    name = getattr(type(func), "__name__", "task")
    raise TypeError(
        f"@budget(...) was applied to a Celery task ({name}), not to its function: put @budget below "
        "@shared_task / @app.task, directly on the function:\n"
        "    @shared_task\n    @budget(db_queries=3)\n    def my_task(): ..."
    )


@contextlib.contextmanager
def budget_scope(
    name: str,
    limits: Mapping[str, float] | None = None,
    /,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    **keyword_limits: float,
) -> Iterator[trace.Span]:
    """Measure the enclosed code as one scope, e.g. a management command or a cron job.

    Usable as `with budget_scope("nightly-import", db_queries=500):` or as a decorator.
    Limits not given come from the `[scope]` section of the budgets file. Nested inside
    another scope, its counts are also added to the outer one.

    Args:
        tracer_provider: where the scope's span is made (default: the global provider).

    Raises:
        ConfigError: an unknown metric or a bad value.
    """
    checked = validate_limits({**(limits or {}), **keyword_limits}, source=f"budget_scope({name!r})")
    tracer = trace.get_tracer(names.METER_NAME, tracer_provider=tracer_provider)
    with tracer.start_as_current_span(name, attributes={names.SCOPE_NAME: name}) as span:
        if checked:
            _apply(checked)
        yield span


