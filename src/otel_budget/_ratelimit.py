"""Logging that cannot flood: each message at most once a minute, with a count of what was held back."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

__all__ = ["log_exception"]

INTERVAL_S = 60.0
_last: dict[str, tuple[float, int]] = {}  # message -> (last logged at, suppressed since)
_lock = threading.Lock()


def log_exception(
    logger: logging.Logger, message: str, *args: Any, level: int = logging.ERROR, exc_info: bool = True
) -> None:
    """Log `message` (with the current exception's traceback) unless it was logged in the last minute."""
    now = time.monotonic()
    with _lock:
        last, suppressed = _last.get(message, (-INTERVAL_S, 0))
        if now - last < INTERVAL_S:
            _last[message] = (last, suppressed + 1)
            return
        if len(_last) > 256:
            _last.clear()
        _last[message] = (now, 0)
    if suppressed:
        message += f" ({suppressed} more like this in the last {INTERVAL_S:.0f} s)"
    logger.log(level, message, *args, exc_info=exc_info)


def reset() -> None:
    """Forget what was logged (tests; a forked child)."""
    global _lock
    _lock = threading.Lock()  # after fork the parent's lock may be held by a thread that is gone
    _last.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset)
