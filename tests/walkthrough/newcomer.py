"""A newcomer's first day, from README.md alone: a fresh Django 5.2 project, step by step.

The README's quick start is parsed, not copied: the budgets file, `check-config` and its promised
output, the pytest command and the failure it shows, the production exports and the gunicorn and
Celery commands, the report command. If the README drifts, this breaks. What the README cannot
know is said where it is changed: a unique service name, a free port for gunicorn, a metric export
interval of 5 s (the README says the SDK's default is 60 s), the Jaeger/Prometheus of the stack.

The project is what a newcomer writes from Django's and Celery's own tutorials: `django-admin
startproject mysite`, an app `books` with authors and books on PostgreSQL (a fresh database), a
view with an N+1, a view calling an HTTP API, a Celery task on Redis that the third view enqueues.

Run by tests/walkthrough/test_walkthrough.py (needs the stack and, since it binds ports, the
servers lock: `flock /tmp/otel-budget-servers.lock pytest tests/walkthrough`).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
JAEGER = f"http://{HOST}:16686"
PROMETHEUS = f"http://{HOST}:9090"
PG = {"host": HOST, "port": 5432, "user": "otel_budget", "password": "otel_budget"}
BOOKS = 6  # one author each: listing them is 1 + 6 queries, the same author query 6 times
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxy loopback


# --- what the README says ------------------------------------------------------------------


def readme() -> str:
    return README.read_text(encoding="utf-8")


def quick_start_lines() -> list[str]:
    """The first ```sh block under "## Quick start", joined back into logical lines (heredocs kept)."""
    section = readme().split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README: no ```sh block under ## Quick start"
    return block.group(1).splitlines()


def heredoc(lines: list[str], target: str) -> str:
    """The text the quick start writes into `target` with `cat > target <<'EOF'`."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"cat > {target} <<'EOF'"))
    end = lines.index("EOF", start)
    return "\n".join(lines[start + 1 : end]) + "\n"


def commands(lines: list[str]) -> list[list[str]]:
    """Every other line as shell words, comments removed."""
    inside = False
    out = []
    for line in lines:
        if line.startswith("cat > ") and "<<'EOF'" in line:
            inside = True
            continue
        if inside:
            inside = line != "EOF"
            continue
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def exports(lines: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for words in commands(lines) if words[0] == "export" for w in words[1:])


def command_running(lines: list[str], program: str) -> tuple[dict[str, str], list[str]]:
    """(its own VAR=value assignments, the command) of the line that runs `program`."""
    for words in commands(lines):
        assignments = [w for w in words if re.match(r"^[A-Z_]+=", w)]
        rest = words[len(assignments) :]
        if program in rest[:2]:
            return dict(a.split("=", 1) for a in assignments), rest
    raise AssertionError(f"README quick start: no line runs {program}")


def promised_check_config_output() -> str:
    match = re.search(r"`check-config` prints `([^`]+)`", readme())
    assert match, "README: the check-config output it promises"
    return match.group(1)


def promised_failure() -> list[str]:
    """The failing test's message as the README shows it, minus the trace id and the banner."""
    block = re.search(r"A test whose request makes an N\+1 now fails:\n\n```\n(.*?)```", readme(), re.S)
    assert block, "README: the N+1 failure it shows"
    return [line for line in block.group(1).splitlines() if line.strip() and "(trace " not in line and not line.startswith("___")]


def report_command() -> list[str]:
    match = re.search(r"^\$ (otel-budget report .*)$", readme(), re.M)
    assert match, "README: an `otel-budget report` example"
    return shlex.split(match.group(1))


# --- the project a newcomer writes ---------------------------------------------------------

SETTINGS_TAIL = """
# --- added for the walkthrough, as a newcomer would ---
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS += ["books"]
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "{db}",
        "USER": "{user}",
        "PASSWORD": "{password}",
        "HOST": "{host}",
        "PORT": "{port}",
    }}
}}
CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
CELERY_TASK_DEFAULT_QUEUE = "{queue}"  # this run's own queue on the shared Redis
WEATHER_API_URL = "{weather}"
"""

FILES = {
    "mysite/celery.py": '''
        import os

        from celery import Celery

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
        app = Celery("mysite")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()
    ''',
    "books/models.py": '''
        from django.db import models


        class Author(models.Model):
            name = models.CharField(max_length=100)


        class Book(models.Model):
            title = models.CharField(max_length=200)
            author = models.ForeignKey(Author, on_delete=models.CASCADE)
    ''',
    "books/tasks.py": '''
        from celery import shared_task

        from .models import Book


        @shared_task
        def rebuild_index():
            return [f"{book.title} by {book.author.name}" for book in Book.objects.all()]
    ''',
    "books/views.py": '''
        import requests
        from django.conf import settings
        from django.http import JsonResponse
        from django.views.decorators.csrf import csrf_exempt
        from django.views.decorators.http import require_POST

        from .models import Book
        from .tasks import rebuild_index


        def book_list(request):
            books = [{"title": book.title, "author": book.author.name} for book in Book.objects.all()]
            return JsonResponse({"books": books})


        def weather(request):
            response = requests.get(settings.WEATHER_API_URL, timeout=5)
            return JsonResponse(response.json())


        @csrf_exempt  # called by a script, not a form
        @require_POST
        def reindex(request):
            rebuild_index.delay()
            return JsonResponse({"queued": True}, status=202)
    ''',
    "mysite/urls.py": '''
        from django.urls import path

        from books import views

        urlpatterns = [
            path("books/", views.book_list),
            path("books/reindex/", views.reindex),
            path("weather/", views.weather),
        ]
    ''',
    "pytest.ini": '''
        [pytest]
        DJANGO_SETTINGS_MODULE = mysite.settings
    ''',
    "tests/test_books.py": f'''
        import pytest

        from books.models import Author, Book


        @pytest.mark.django_db
        def test_book_list(client):
            for i in range({BOOKS}):
                Book.objects.create(title=f"Book {{i}}", author=Author.objects.create(name=f"Author {{i}}"))
            assert client.get("/books/").status_code == 200
    ''',
}

SEED = f"""
from books.models import Author, Book
for i in range({BOOKS}):
    Book.objects.create(title=f"Book {{i}}", author=Author.objects.create(name=f"Author {{i}}"))
print(Book.objects.count())
"""


# --- running it ----------------------------------------------------------------------------


class StepFailed(AssertionError):
    pass


@dataclass
class Walkthrough:
    """One run: its directory, names, processes, and the seconds each step took."""

    root: Path
    web_port: int = 8301
    api_port: int = 8302
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    timings: list[tuple[str, float]] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_calls: int = 0

    @property
    def service(self) -> str:
        return f"mysite-walkthrough-{self.run_id}"

    @property
    def worker_service(self) -> str:
        return f"{self.service}-worker"

    @property
    def db(self) -> str:
        return f"walkthrough_{self.run_id}"

    @property
    def python_path(self) -> str:
        return os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""),) if p)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DJANGO_"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        print(f"[walkthrough] {name} ...", flush=True)
        yield
        took = time.monotonic() - start
        self.timings.append((name, took))
        print(f"[walkthrough] {name}: {took:.1f} s", flush=True)

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,), timeout: float = 120) -> str:
        result = subprocess.run(argv, cwd=self.root, env=env or self.env(), capture_output=True, text=True, timeout=timeout, check=False)
        output = result.stdout + result.stderr
        if result.returncode not in ok:
            raise StepFailed(f"`{' '.join(argv)}` exited {result.returncode} (wanted {ok}):\n{output[-4000:]}")
        return output

    # -- the steps ------------------------------------------------------------------------

    def create_project(self) -> None:
        self.run([str(BIN / "django-admin"), "startproject", "mysite", "."])
        self.run([sys.executable, "manage.py", "startapp", "books"])
        settings = self.root / "mysite" / "settings.py"
        settings.write_text(settings.read_text() + SETTINGS_TAIL.format(
            db=self.db, queue=f"walkthrough-{self.run_id}", weather=f"http://{HOST}:{self.api_port}/forecast", **PG))
        for name, text in FILES.items():
            path = self.root / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip())
        init = self.root / "mysite" / "__init__.py"
        init.write_text('from .celery import app as celery_app\n\n__all__ = ("celery_app",)\n')
        (self.root / "budgets.toml").write_text(heredoc(quick_start_lines(), "budgets.toml"))
        self.postgres(f'CREATE DATABASE "{self.db}"')
        self.run([sys.executable, "manage.py", "makemigrations", "books"])
        self.run([sys.executable, "manage.py", "migrate", "-v", "0"])

    def check_config(self) -> str:
        argv = next(w for w in commands(quick_start_lines()) if w[:2] == ["otel-budget", "check-config"])
        output = self.run([str(BIN / argv[0]), *argv[1:]]).strip()
        if output != promised_check_config_output():
            raise StepFailed(f"check-config printed {output!r}; README promises {promised_check_config_output()!r}")
        return output

    def failing_pytest(self) -> str:
        argv = next(w for w in commands(quick_start_lines()) if w[0] == "pytest")
        output = self.run([sys.executable, "-m", *argv, "-p", "no:cacheprovider"], ok=(1,))
        missing = [line for line in promised_failure() if line.strip() not in output]
        if missing:
            raise StepFailed(f"the pytest failure lacks the README's lines {missing}:\n{output[-4000:]}")
        return output

    def production_env(self, own: dict[str, str], service: str) -> dict[str, str]:
        env = self.env(**exports(quick_start_lines()), **own)
        env["OTEL_SERVICE_NAME"] = service  # unique per run; the README's is "mysite" / "mysite-worker"
        env["OTEL_METRIC_EXPORT_INTERVAL"] = "5000"  # the README: 60 s by default
        if self.python_path:
            env["PYTHONPATH"] = self.python_path
        return env

    def start_site(self) -> None:
        self.run([sys.executable, "manage.py", "shell", "-c", SEED])
        own, argv = command_running(quick_start_lines(), "gunicorn")
        self.start("gunicorn", [str(BIN / argv[0]), *argv[1:], "--bind", f"{HOST}:{self.web_port}"],
                   self.production_env(own, self.service))
        own, argv = command_running(quick_start_lines(), "celery")
        self.start("celery", [str(BIN / argv[0]), *argv[1:]], self.production_env(own, self.worker_service))
        wait_for(lambda: self.get("/weather/")[0] == 200, 30, "gunicorn answering /weather/", self.log)
        # The worker logs at WARNING (the README's command has no --loglevel): a task sent before it
        # is ready waits in its queue, and Jaeger shows when it ran.

    def send_traffic(self) -> None:
        status, body = self.get("/books/")
        if status != 200 or len(json.loads(body)["books"]) != BOOKS:
            raise StepFailed(f"GET /books/: {status} {body[:300]!r}\n{self.log('gunicorn')}")
        status, body = self.post("/books/reindex/")
        if status != 202:
            raise StepFailed(f"POST /books/reindex/: {status} {body[:300]!r}")

    # -- helpers --------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115  closed with the process
        self.processes[name] = subprocess.Popen(argv, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def log(self, name: str = "gunicorn") -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.processes.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.processes.clear()

    def get(self, path: str) -> tuple[int, str]:
        return http_call(f"http://{HOST}:{self.web_port}{path}")

    def post(self, path: str) -> tuple[int, str]:
        return http_call(f"http://{HOST}:{self.web_port}{path}", data=b"")

    def postgres(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(dbname="postgres", **PG)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def drop_databases(self) -> None:
        for name in (self.db, f"test_{self.db}"):
            self.postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_queue(self) -> None:
        """Kombu's bindings of this run's queue on the shared Redis (the queue itself is empty)."""
        import redis

        queue = f"walkthrough-{self.run_id}"
        client = redis.Redis(host=HOST, port=6379, db=0)
        try:
            client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        finally:
            client.close()

    @contextmanager
    def weather_api(self) -> Iterator[None]:
        """The HTTP API the weather view calls: a real server on its own port, counting its calls."""
        walk = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  http.server's name
                walk.api_calls += 1
                body = b'{"forecast": "sunny"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer((HOST, self.api_port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()


def http_call(url: str, data: bytes | None = None, timeout: float = 10) -> tuple[int, str]:
    try:
        with _OPENER.open(urllib.request.Request(url, data=data), timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError as error:
        return 0, str(error)


def get_json(url: str, **params: str) -> Any:
    status, body = http_call(f"{url}?{urllib.parse.urlencode(params)}" if params else url)
    if status != 200:
        raise StepFailed(f"GET {url} {params}: {status} {body[:300]}")
    return json.loads(body)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, log: Callable[[str], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    logs = "" if log is None else f"\n--- gunicorn log:\n{log('gunicorn')[-3000:]}\n--- celery log:\n{log('celery')[-3000:]}"
    raise StepFailed(f"not within {timeout:.0f} s: {what}{logs}")


def jaeger_traces(service: str) -> list[dict[str, Any]]:
    return list(get_json(f"{JAEGER}/api/traces", service=service, lookback="1h", limit="50")["data"])


def prometheus_query(promql: str) -> list[dict[str, Any]]:
    return list(get_json(f"{PROMETHEUS}/api/v1/query", query=promql)["data"]["result"])


def scrape_interval_s() -> float:
    text = get_json(f"{PROMETHEUS}/api/v1/status/config")["data"]["yaml"]
    match = re.search(r"scrape_interval: (\d+)s", text)
    return float(match.group(1)) if match else 60.0
