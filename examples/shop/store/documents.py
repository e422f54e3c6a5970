"""The shop's MongoDB (FerretDB) side: product content, the search index, the e-mail log."""

from __future__ import annotations

import threading
from functools import cache

from django.conf import settings
from pymongo import MongoClient, monitoring
from pymongo.database import Database


class CommandCounter(monitoring.CommandListener):
    """Counts the MongoDB commands each thread sends: the ground truth for `db.mongodb.queries`."""

    def __init__(self) -> None:
        self._local = threading.local()

    def count(self) -> int:
        """Commands started so far by the calling thread."""
        return getattr(self._local, "started", 0)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self._local.started = self.count() + 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


command_counter = CommandCounter()


@cache
def mongo() -> Database:
    """The shop's database; one client per process (created lazily, so after a fork)."""
    client: MongoClient = MongoClient(
        settings.MONGO_URL,
        event_listeners=[command_counter],
        serverSelectionTimeoutMS=3000,
        connectTimeoutMS=3000,
        appname="shop",
    )
    return client[settings.MONGO_DB]
