"""Fail (never skip) a test whose stack services are down: shared by the test directories."""

from __future__ import annotations

import socket
from collections.abc import Mapping

import pytest

__all__ = ["require_reachable"]


def require_reachable(services: Mapping[str, tuple[str, int]]) -> None:
    """`pytest.fail` naming every service of `services` (name -> (host, port)) that does not accept a connection."""
    down = []
    for name, (host, port) in services.items():
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            down.append(f"{name} is not reachable at {host}:{port} ({exc.strerror or exc})")
    if down:
        pytest.fail("; ".join(down) + "; start the service stack: make stack", pytrace=False)
