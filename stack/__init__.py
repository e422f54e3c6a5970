"""The local service stack `make stack` runs (docs/stack.md), as a package the tests import.

Standard library only: the system python3 runs it before any virtualenv exists.
"""

from __future__ import annotations

from .builds import collector_bin
from .commands import main
from .processes import listener_pid, pid_alive, port_open
from .progress import StackError
from .services import BY_NAME, SERVICES, Service, scaled_copy
from .settings import CACHE_DIR, LOG_DIR, STACK_DIR

__all__ = [
    "BY_NAME",
    "CACHE_DIR",
    "LOG_DIR",
    "SERVICES",
    "STACK_DIR",
    "Service",
    "StackError",
    "collector_bin",
    "listener_pid",
    "main",
    "pid_alive",
    "port_open",
    "scaled_copy",
]
