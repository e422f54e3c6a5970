"""A small Celery app whose tasks get killed: the worker of tests/e2e/test_e2e_killed_tasks.py.

Its own Redis database (13) and queues, so it never takes another suite's tasks (nor they its).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER = "redis://127.0.0.1:6379/13"
PID_KEY = "otel-budget-killed:pid:{task_id}"

app = Celery("killed_tasks_app", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="killtest.sleep_past_limit", time_limit=2)
def sleep_past_limit(seconds: float = 10.0) -> float:
    """Killed by its hard time limit (2 s) in a prefork pool; in a solo pool it runs to its end."""
    time.sleep(seconds)
    return seconds


@app.task(name="killtest.sleep_until_killed", bind=True)
def sleep_until_killed(self: object, seconds: float = 30.0) -> float:
    """Says which pool process runs it (Redis key), then waits to be killed with SIGKILL."""
    task_id = self.request.id  # type: ignore[attr-defined]
    redis.Redis.from_url(BROKER).set(PID_KEY.format(task_id=task_id), os.getpid(), ex=600)
    time.sleep(seconds)
    return seconds


@app.task(name="killtest.quick")
def quick() -> int:
    """A normal task: the pool still works after its children were killed."""
    return os.getpid()
