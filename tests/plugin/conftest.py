"""A small Django + Celery project on the stack's PostgreSQL and FerretDB, for pytester runs."""

from __future__ import annotations

import textwrap

import pytest

from tests.stack_services import require_reachable

SERVICES = {"PostgreSQL": ("127.0.0.1", 5432), "FerretDB": ("127.0.0.1", 27017)}

SETTINGS = """
import os

SECRET_KEY = "plugin-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["books"]
MIDDLEWARE = []
ROOT_URLCONF = "testproj.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": 5432,
        "NAME": "shop",
        "USER": "otel_budget",
        "PASSWORD": "otel_budget",
        # One test database per run: other suites may run against the same server at once.
        "TEST": {"NAME": f"test_otel_budget_plugin_{os.getpid()}"},
    }
}
MONGO_URL = "mongodb://127.0.0.1:27017/"
MONGO_DB = f"otel_budget_plugin_{os.getpid()}"
"""

URLS = """
from django.urls import path

from books import views

urlpatterns = [
    path("books/", views.book_list),
    path("books/<int:pk>/reviews/", views.book_reviews),
    path("reviews/", views.all_reviews),
]
"""

CELERY_APP = """
from celery import Celery

app = Celery("testproj", broker="memory://", backend="cache+memory://")
app.conf.task_always_eager = True
"""

MODELS = """
from django.db import models


class Author(models.Model):
    name = models.CharField(max_length=100)


class Book(models.Model):
    title = models.CharField(max_length=100)
    price = models.IntegerField(default=10)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
"""

VIEWS = """
import functools

import pymongo
from django.conf import settings
from django.http import JsonResponse

from books.models import Book


@functools.cache
def reviews_collection():
    return pymongo.MongoClient(settings.MONGO_URL, serverSelectionTimeoutMS=3000)[settings.MONGO_DB]["reviews"]


def book_list(request):
    # N+1: one author query per book.
    return JsonResponse({"books": [f"{book.title} by {book.author.name}" for book in Book.objects.all()]})


def book_reviews(request, pk):
    book = Book.objects.select_related("author").get(pk=pk)
    return JsonResponse({"title": book.title, "reviews": reviews_collection().count_documents({"book_id": pk})})


def all_reviews(request):
    # N+1 on MongoDB: one find per book.
    found = [reviews_collection().find_one({"book_id": book.id}) for book in Book.objects.all()]
    return JsonResponse({"reviews": [doc["text"] for doc in found if doc]})
"""

TASKS = """
from books.models import Book
from testproj.celery_app import app


@app.task(name="books.tasks.reprice")
def reprice():
    for book in Book.objects.all():
        book.price += 1
        book.save(update_fields=["price"])
"""

BUDGETS = """
[http]
db.queries = 20
db.repeated_queries = 3

[celery]
db.queries = 5

[scope]
db.queries = 2
"""

TESTS = """
import pytest
from otel_budget import budget_scope

from books.models import Author, Book
from books.tasks import reprice
from books.views import reviews_collection


@pytest.fixture
def books(db):
    author = Author.objects.create(name="Ursula")
    other = Author.objects.create(name="Terry")
    return [Book.objects.create(title=f"Book {i}", author=author if i % 2 else other) for i in range(6)]


def test_book_list(client, books):
    assert client.get("/books/").status_code == 200


@pytest.mark.budget(db_repeated_queries=10)
def test_book_list_raised(client, books):
    assert client.get("/books/").status_code == 200


def test_book_reviews(client, books):
    assert client.get(f"/books/{books[0].pk}/reviews/").status_code == 200


def test_all_reviews(client, books):
    reviews_collection().insert_many([{"book_id": book.id, "text": f"review {book.id}"} for book in books])
    try:
        assert client.get("/reviews/").status_code == 200
    finally:
        reviews_collection().database.client.drop_database(reviews_collection().database.name)


def test_reprice_task(books):
    reprice.delay()
    assert Book.objects.filter(price=11).count() == 6


@pytest.mark.budget({"db.queries": 10}, db_repeated_queries=6)
def test_reprice_task_raised(books):
    reprice.delay()


@pytest.mark.budget(db_querys=3)
def test_bad_marker():
    pass


def test_import_scope(db):
    with budget_scope("import-authors"):
        for name in ("a", "b", "c"):
            Author.objects.create(name=name)


def test_plugin_is_off(request):
    from django.conf import settings
    from opentelemetry import trace

    assert request.config.pluginmanager.get_plugin("otel_budget_session") is None
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    assert not any("opentelemetry" in entry for entry in settings.MIDDLEWARE)
"""

WORKER_TESTS = """
import pytest
from celery.contrib.testing.worker import start_worker

from books.models import Author, Book
from books.tasks import reprice
from testproj.celery_app import app


@pytest.fixture
def worker():
    app.conf.task_always_eager = False
    with start_worker(app, perform_ping_check=False, pool="solo", concurrency=1):
        yield
    app.conf.task_always_eager = True


@pytest.mark.django_db(transaction=True)
def test_reprice_in_worker(worker):
    author = Author.objects.create(name="Ursula")
    Book.objects.bulk_create([Book(title=f"Book {i}", author=author) for i in range(6)])
    reprice.delay().get(timeout=10)
"""


@pytest.fixture(scope="session")
def stack_services() -> None:
    """Fail (not skip) when a service the project needs is down."""
    require_reachable(SERVICES)


@pytest.fixture
def project(pytester: pytest.Pytester, stack_services: None, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The Django project, its budgets file and its tests, in pytester's directory."""
    monkeypatch.delenv("OTEL_BUDGET_CONFIG", raising=False)
    monkeypatch.delenv("OTEL_BUDGET_ENABLED", raising=False)
    files = {
        "testproj/__init__.py": "",
        "testproj/settings.py": SETTINGS,
        "testproj/urls.py": URLS,
        "testproj/celery_app.py": CELERY_APP,
        "books/__init__.py": "",
        "books/models.py": MODELS,
        "books/views.py": VIEWS,
        "books/tasks.py": TASKS,
        "test_shop.py": TESTS,
        "test_worker.py": WORKER_TESTS,
        "budgets.toml": BUDGETS,
        "pytest.ini": "[pytest]\nDJANGO_SETTINGS_MODULE = testproj.settings\npythonpath = .\n",
    }
    for name, text in files.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return pytester
