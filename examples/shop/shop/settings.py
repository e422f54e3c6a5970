"""Settings for the example shop, read from the environment.

The defaults point at the local service stack (`make stack`): PostgreSQL, FerretDB
(MongoDB wire protocol) and Redis on 127.0.0.1.
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


SECRET_KEY = env("DJANGO_SECRET_KEY", "example-shop-not-secret")
DEBUG = env("DJANGO_DEBUG", "false").lower() in {"1", "true", "yes", "on"}
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")

INSTALLED_APPS = ["django.contrib.contenttypes", "store"]

MIDDLEWARE = [
    "store.middleware.ground_truth_middleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": env("SHOP_DB_NAME", "shop"),
        "USER": env("SHOP_DB_USER", "otel_budget"),
        "PASSWORD": env("SHOP_DB_PASSWORD", "otel_budget"),
        "HOST": env("SHOP_DB_HOST", "127.0.0.1"),
        "PORT": env("SHOP_DB_PORT", "5432"),
        "CONN_MAX_AGE": int(env("SHOP_DB_CONN_MAX_AGE", "60")),
        # The session starts in UTC, so Django never sends its own `SET TIME ZONE`
        # on a new connection (one statement per connection that Django does not log).
        "OPTIONS": {"options": "-c timezone=UTC"},
    }
}

MONGO_URL = env("SHOP_MONGO_URL", "mongodb://127.0.0.1:27017")
MONGO_DB = env("SHOP_MONGO_DB", "shop")
# The partner's shipping-quote API (examples/shop/fake_partner.py on loopback).
PARTNER_URL = env("SHOP_PARTNER_URL", "http://127.0.0.1:8010")
PARTNER_TIMEOUT_S = float(env("SHOP_PARTNER_TIMEOUT_S", "2"))

CELERY_BROKER_URL = env("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("SHOP_LOG_LEVEL", "INFO")},
}
