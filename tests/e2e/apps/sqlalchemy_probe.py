"""The statements the framework apps run, through SQLAlchemy 2.0 and psycopg2, and SQLAlchemy's own count of them.

The ground truth is SQLAlchemy's `before_cursor_execute` event (one per statement handed to the driver) and
its pool's `connect` event, counted per request in a context variable; otel-budget's numbers are read from the
exported spans. The pool is opened before the first request, so no request pays the psycopg2 dialect's
connection set-up statements.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, event, text

POOL_SIZE = int(os.environ.get("FW_POOL_SIZE", "8"))
DSN = os.environ.get("FW_DSN", "postgresql+psycopg2://otel_budget:otel_budget@127.0.0.1:5432/shop")

engine = create_engine(DSN, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=30, pool_pre_ping=False)


@dataclass
class Seen:
    """What SQLAlchemy saw during one request."""

    statements: Counter[str] = field(default_factory=Counter)
    connects: int = 0

    def truth(self) -> dict[str, int]:
        return {
            "statements": sum(self.statements.values()),
            "repeated": max(self.statements.values(), default=0),
            "connects": self.connects,
        }


_seen: contextvars.ContextVar[Seen | None] = contextvars.ContextVar("fw_seen", default=None)


@event.listens_for(engine, "before_cursor_execute")
def _count_statement(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    seen = _seen.get()
    if seen is not None:
        seen.statements[statement] += 1


@event.listens_for(engine.pool, "connect")
def _count_connect(dbapi_connection: Any, record: Any) -> None:
    seen = _seen.get()
    if seen is not None:
        seen.connects += 1


def watch() -> Seen:
    """Start counting for the current request (its context, and the threads it hands work to with a copy)."""
    seen = Seen()
    _seen.set(seen)
    return seen


def distinct(n: int) -> None:
    """n statements of n different shapes, on one pooled connection."""
    with engine.connect() as conn:
        for k in range(n):
            conn.execute(text(f"SELECT {k} AS q{k}")).scalar_one()


def repeated(n: int) -> None:
    """The same statement n times (an N+1), each with its own parameter."""
    with engine.connect() as conn:
        for k in range(n):
            conn.execute(text("SELECT CAST(:k AS integer) AS same"), {"k": k}).scalar_one()


def open_pool() -> None:
    """Open every pooled connection before the first request (outside any request, so no scope sees it)."""
    barrier = threading.Barrier(POOL_SIZE)

    def hold() -> None:
        with engine.connect():
            barrier.wait(timeout=30)

    threads = [threading.Thread(target=hold) for _ in range(POOL_SIZE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
