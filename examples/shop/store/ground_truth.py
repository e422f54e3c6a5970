"""Independent counts of what a request or task sent to its databases.

PostgreSQL: Django's own query capture (`CaptureQueriesContext`), which also logs the
`BEGIN` / `COMMIT` / `ROLLBACK` that Django asks psycopg2 for; psycopg2 sends those
without a cursor, so no span, so otel-budget does not count them (DESIGN.md).
MongoDB: a pymongo `CommandListener` on the shop's client.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connection
from django.test.utils import CaptureQueriesContext

from store.documents import command_counter

TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})


@dataclass
class GroundTruth:
    """What Django and pymongo saw while it was open."""

    django_captured: int = 0  # every entry of Django's capture
    transaction_control: int = 0  # of which BEGIN / COMMIT / ROLLBACK
    mongo_commands: int = 0
    statements: list[str] = field(default_factory=list, repr=False)

    @property
    def pg_statements(self) -> int:
        """Statements executed through a cursor: what the DB client spans should count."""
        return self.django_captured - self.transaction_control

    def as_dict(self) -> dict[str, int]:
        return {
            "django_captured": self.django_captured,
            "transaction_control": self.transaction_control,
            "pg_statements": self.pg_statements,
            "mongo_commands": self.mongo_commands,
        }

    def headers(self) -> dict[str, str]:
        return {
            "X-Ground-Truth-Django-Captured": str(self.django_captured),
            "X-Ground-Truth-Transaction-Control": str(self.transaction_control),
            "X-Ground-Truth-PG-Statements": str(self.pg_statements),
            "X-Ground-Truth-Mongo-Commands": str(self.mongo_commands),
        }


@contextmanager
def capture() -> Iterator[GroundTruth]:
    """Count PostgreSQL statements (Django's capture) and MongoDB commands sent by this thread."""
    truth = GroundTruth()
    mongo_before = command_counter.count()
    with CaptureQueriesContext(connection) as queries:
        try:
            yield truth
        finally:
            truth.mongo_commands = command_counter.count() - mongo_before
    truth.statements = [query["sql"] for query in queries.captured_queries]
    truth.django_captured = len(truth.statements)
    truth.transaction_control = sum(sql.strip().upper() in TRANSACTION_CONTROL for sql in truth.statements)
