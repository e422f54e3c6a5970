"""The example shop's settings plus `reliability_app`: diagnostic and fault-injection views and tasks.

Used only by tests/reliability; the shop's own code runs unchanged underneath.
"""

from __future__ import annotations

import os

from shop.settings import *  # noqa: F403 - the shop, unchanged
from shop.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "reliability_app"]
ROOT_URLCONF = "reliability_app.urls"

# One line per record with the pid: the tests count log lines per process.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"pid": {"format": "%(asctime)s pid=%(process)d %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "pid"}},
    "root": {"handlers": ["console"], "level": os.environ.get("SHOP_LOG_LEVEL", "INFO")},
}
