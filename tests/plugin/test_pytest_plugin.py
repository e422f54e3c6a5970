"""The pytest plugin on a real Django project (PostgreSQL, FerretDB) with eager Celery tasks."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

BUDGETS = ("--budgets", "budgets.toml")


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(*args, timeout=120)


def test_n_plus_one_fails_with_the_statement(project: pytest.Pytester) -> None:
    """A test-client request with an N+1 on PostgreSQL fails its test, naming route, metric and statement."""
    result = run(project, *BUDGETS, "test_shop.py::test_book_list")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "otel-budget: GET books/: db.repeated_queries 6 > limit 3",
            "1 scope(s) over budget in this test; budgets: budgets.toml",
            "GET books/  (trace *)",
            "  db.repeated_queries: 6 > limit 3  [rule http]",
            '    repeated 6 times: SELECT "books_author"."id", "books_author"."name" FROM "books_author" '
            'WHERE "books_author"."id" = ? LIMIT ?',
            "    limit from budgets.toml: [http]",
            "Fix the code, or raise the limit for this test: @pytest.mark.budget(db_repeated_queries=6)",
        ],
        consecutive=False,
    )


def test_mongodb_n_plus_one_fails(project: pytest.Pytester) -> None:
    """An N+1 on FerretDB (MongoDB wire protocol) fails its test too."""
    result = run(project, *BUDGETS, "test_shop.py::test_all_reviews")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["GET reviews/  (trace *)", "  db.repeated_queries: 6 > limit 3  [rule http]", "    repeated 6 times: find reviews"]
    )


def test_marker_raises_the_budget(project: pytest.Pytester) -> None:
    """The same N+1 passes under @pytest.mark.budget(db_repeated_queries=10)."""
    result = run(project, *BUDGETS, "test_shop.py::test_book_list_raised")
    result.assert_outcomes(passed=1)


def test_within_budget_passes(project: pytest.Pytester) -> None:
    """A request using PostgreSQL and FerretDB within its budget passes."""
    result = run(project, *BUDGETS, "test_shop.py::test_book_reviews")
    result.assert_outcomes(passed=1)


def test_eager_celery_task_over_budget_fails(project: pytest.Pytester) -> None:
    """An eager Celery task over the [celery] budget fails the test that ran it."""
    result = run(project, *BUDGETS, "test_shop.py::test_reprice_task")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "otel-budget: task books.tasks.reprice: db.repeated_queries 6 > limit 5 (and 1 more)",
            "task books.tasks.reprice  (trace *)",
            "  db.repeated_queries: 6 > limit 5  [rule celery]",
            '    repeated 6 times: UPDATE "books_book" SET "price" = ? WHERE "books_book"."id" = ?',
            "  db.queries: 7 > limit 5  [rule celery]",
        ]
    )


def test_celery_worker_task_over_budget_fails(project: pytest.Pytester) -> None:
    """A task run by a Celery test worker (another thread) fails the test that enqueued it."""
    result = run(project, *BUDGETS, "test_worker.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["task books.tasks.reprice  (trace *)", "  db.repeated_queries: 6 > limit 5  [rule celery]"]
    )


def test_marker_takes_a_dict(project: pytest.Pytester) -> None:
    """A marker with a dict and keywords raises both limits for the task."""
    result = run(project, *BUDGETS, "test_shop.py::test_reprice_task_raised")
    result.assert_outcomes(passed=1)


def test_budget_scope_over_budget_fails(project: pytest.Pytester) -> None:
    """An explicit budget_scope inside a test is checked against [scope]."""
    result = run(project, *BUDGETS, "test_shop.py::test_import_scope")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["scope import-authors  (trace *)", "  db.queries: 3 > limit 2  [rule scope]"])


def test_bad_marker_fails_with_choices(project: pytest.Pytester) -> None:
    """A marker naming an unknown metric fails its test with the valid choices."""
    result = run(project, *BUDGETS, "test_shop.py::test_bad_marker")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["@pytest.mark.budget: db_querys: unknown metric; did you mean 'db_queries'? (valid: *"])


def test_bad_marker_lists_choices_once(project: pytest.Pytester) -> None:
    """The marker's error is printed once, and names the keyword metrics, not every DB system's."""
    result = run(project, *BUDGETS, "test_shop.py::test_bad_marker")
    result.assert_outcomes(failed=1)
    # The failure's own text, once. pytest repeats a failure's message in its short summary, and under CI=true
    # it does not cut that line to the terminal's width: the summary line is pytest's, not a second copy of ours.
    assert sum("(valid:" in line for line in result.stdout.lines if not line.startswith("FAILED ")) == 1
    assert "During handling of the above exception" not in result.stdout.str()
    assert "db_aws_dynamodb_queries" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*(and db_<system>_queries / db_<system>_duration_ms for other systems))"])


def elsewhere(project: pytest.Pytester) -> str:
    """A copy of budgets.toml outside the project's directory, as a path relative to it."""
    directory = project.path.parent / f"{project.path.name}-elsewhere"
    directory.mkdir(exist_ok=True)
    shutil.copy(project.path / "budgets.toml", directory / "budgets.toml")
    return f"../{directory.name}/budgets.toml"


def test_budgets_outside_the_project_in_two_words_is_a_usage_error(project: pytest.Pytester) -> None:
    """`--budgets ../x/budgets.toml` and no test path: pytest's rootdir moves past the project's ini; stop, say why."""
    path = elsewhere(project)
    result = run(project, "--budgets", path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: otel-budget: pytest read `--budgets {path}` before otel-budget's options were known and took {path} "
         f"for a test path, so it looked for its ini file from {project.path.parent} and did not read the one in "
         f"{project.path} (rootdir {project.path.parent}). Write --budgets={path} (one word), or set `budgets = {path}` "
         "in that ini file."]
    )  # fmt: skip


def test_budgets_outside_the_project_in_one_word(project: pytest.Pytester) -> None:
    """`--budgets=../x/budgets.toml` keeps the project's rootdir and ini file, and checks the budgets."""
    result = run(project, f"--budgets={elsewhere(project)}", "test_shop.py::test_book_list")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"rootdir: {project.path}", "GET books/  (trace *)"])


def test_ini_key_names_the_budgets_file(project: pytest.Pytester) -> None:
    """`budgets =` in the pytest ini file, relative to it, turns the plugin on; no unknown-option warning."""
    path = elsewhere(project)
    ini = project.path / "pytest.ini"
    ini.write_text(ini.read_text() + f"budgets = {path}\n")
    result = run(project, "test_shop.py::test_book_list")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"otel-budget: budgets from {os.path.normpath(project.path / path)}; *", "GET books/  (trace *)"])
    assert "Unknown config option" not in result.stdout.str()


def test_disabled_says_so_in_the_header(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_BUDGET_ENABLED=false with --budgets: the header says the budgets are not checked; the N+1 passes."""
    monkeypatch.setenv("OTEL_BUDGET_ENABLED", "false")
    result = run(project, *BUDGETS, "test_shop.py::test_book_list")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["otel-budget: off (OTEL_BUDGET_ENABLED=false): budgets.toml is not checked, no test fails on a budget"]
    )


def test_environment_variable_activates(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_BUDGET_CONFIG alone turns the plugin on."""
    monkeypatch.setenv("OTEL_BUDGET_CONFIG", "budgets.toml")
    result = run(project, "test_shop.py::test_book_list")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "otel-budget: budgets from budgets.toml; own TracerProvider (no exporter)",
            "otel-budget: instrumentations switched on: celery, django, *psycopg2, pymongo, *",
            "GET books/  (trace *)",
        ]
    )


def test_inactive_without_budgets(project: pytest.Pytester) -> None:
    """Without --budgets or OTEL_BUDGET_CONFIG the N+1 passes and no tracing is set up."""
    result = run(project, "test_shop.py::test_book_list", "test_shop.py::test_plugin_is_off")
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("otel-budget*")


def test_reuses_configured_tracer_provider(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under opentelemetry-instrument the plugin adds its processor to the distro's TracerProvider."""
    instrument = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    assert instrument, "opentelemetry-instrument is not installed beside this Python"
    # As in production: the distro's Django instrumentation reads the settings at start-up.
    for name, value in {
        "DJANGO_SETTINGS_MODULE": "testproj.settings",
        # The project, then whatever the runner had (a source tree tested without installing it).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(project.path), os.environ.get("PYTHONPATH")])),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }.items():
        monkeypatch.setenv(name, value)
    result = project.run(instrument, sys.executable, "-m", "pytest", *BUDGETS, "test_shop.py::test_book_list", timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "otel-budget: budgets from budgets.toml; reusing the configured TracerProvider",
            "GET books/  (trace *)",
            "  db.repeated_queries: 6 > limit 3  [rule http]",
        ]
    )


def test_budgets_report(project: pytest.Pytester) -> None:
    """--budgets-report prints the heaviest scopes of the run."""
    result = run(project, *BUDGETS, "--budgets-report", "test_shop.py::test_book_list", "test_shop.py::test_book_reviews")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= otel-budget: heaviest scopes =*",
            "scope * runs  over  db.queries  repeated  db ms  duration ms  heaviest in test",
            "GET books/ * 1     1           7         6  * test_shop.py::test_book_list",
            "GET books/<int:pk>/reviews/ * 1     0           2         1  * test_shop.py::test_book_reviews",
        ]
    )


def test_unusable_budgets_file_is_a_usage_error(project: pytest.Pytester) -> None:
    """A bad budgets file stops the run before any test, naming file, key and choices."""
    project.makefile(".toml", bad="[http]\ndb.querys = 3\n")
    result = run(project, "--budgets", "bad.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: otel-budget: the budgets file cannot be used:",
            "bad.toml: http.db.querys: unknown metric; did you mean 'db.queries'? (valid: *",
        ]
    )


def test_budgets_report_needs_a_file(project: pytest.Pytester) -> None:
    """--budgets-report alone is a usage error rather than a silent no-op."""
    result = run(project, "--budgets-report")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --budgets-report needs a budgets file: --budgets FILE, `budgets =` in the pytest ini file, or OTEL_BUDGET_CONFIG"]
    )
