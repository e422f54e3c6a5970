"""`otel-budget check-config`: exit codes and the exact messages."""

from __future__ import annotations

import json
from collections.abc import Callable

import otel_budget

from cli_support import run_cli

METRICS = (
    "cpu_ms, db.duration_ms, db.mongodb.duration_ms, db.mongodb.queries, db.postgresql.duration_ms, "
    "db.postgresql.queries, db.queries, db.repeated_duration_ms, db.repeated_queries, db.untimed_connections, "
    "duration_ms, external.calls, external.duration_ms, external.untimed_calls, memory.growth_mb, "
    "memory.peak_growth_mb, tasks.enqueued "
    "(and db.<system>.queries / db.<system>.duration_ms for other systems)"
)
GOOD = """
[http]
db.queries = 30
db.repeated_queries = 5

[[http.route]]
match = "reports/*"
method = "GET"
db.queries = 200

[celery]
duration_ms = 60000

[[celery.task]]
match = "billing.*"
duration_ms = 300000
"""


def test_good_file(write: Callable[[str, str], str]) -> None:
    """A valid file: exit 0 and a one-line summary."""
    result = run_cli("check-config", write("budgets.toml", GOOD))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "budgets.toml: ok (2 section(s), 1 route and 1 task override(s))\n",
        "",
    )


def test_empty_file(write: Callable[[str, str], str]) -> None:
    """An empty file is valid: built-in defaults."""
    result = run_cli("check-config", write("empty.toml", ""))
    assert (result.returncode, result.stdout) == (0, "empty.toml: ok (no rules: built-in defaults)\n")


def test_unknown_metric(write: Callable[[str, str], str]) -> None:
    """A misspelt metric: file, key, did-you-mean and every valid metric."""
    result = run_cli("check-config", write("typo.toml", "[http]\ndb.querys = 3\n"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: typo.toml: http.db.querys: unknown metric; did you mean 'db.queries'? (valid: {METRICS})\n"
    )


def test_unknown_section(write: Callable[[str, str], str]) -> None:
    """A misspelt section: the valid sections."""
    result = run_cli("check-config", write("section.toml", "[htp]\ndb.queries = 3\n"))
    assert (result.returncode, result.stderr) == (
        1,
        "error: section.toml: htp: unknown section; did you mean 'http'? (valid: celery, http, scope)\n",
    )


def test_bad_values(write: Callable[[str, str], str]) -> None:
    """Every bad value in a file is reported, each with its key."""
    result = run_cli("check-config", write("values.toml", '[http]\ndb.queries = -1\nduration_ms = "fast"\n'))
    assert (result.returncode, result.stderr) == (
        1,
        "error: values.toml: http.db.queries: must be a non-negative integer, got negative -1\n"
        "values.toml: http.duration_ms: must be a non-negative number, got string 'fast'\n",
    )


def test_bad_glob_and_method(write: Callable[[str, str], str]) -> None:
    """An override with a broken glob and an unknown method: both, with what is valid."""
    result = run_cli("check-config", write("glob.toml", '[[http.route]]\nmatch = "reports/[a"\nmethod = "FETCH"\n'))
    assert (result.returncode, result.stderr) == (
        1,
        "error: glob.toml: http.route[0].match: bad glob 'reports/[a': unclosed '[' (globs use *, ? and [abc])\n"
        "glob.toml: http.route[0].method: unknown HTTP method 'FETCH' "
        "(valid: CONNECT, DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE)\n",
    )


def test_not_toml(write: Callable[[str, str], str]) -> None:
    """A file that is not TOML: the parser's position."""
    result = run_cli("check-config", write("broken.toml", "[http\n"))
    assert (result.returncode, result.stderr) == (
        1,
        "error: broken.toml: not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 6)\n",
    )


def test_missing_file(write: Callable[[str, str], str]) -> None:
    """A missing file is an error, not the defaults."""
    result = run_cli("check-config", "missing.toml")
    assert (result.returncode, result.stderr) == (1, "error: missing.toml: file not found\n")


def test_several_files(write: Callable[[str, str], str]) -> None:
    """Every file is checked; one bad file makes the exit code 1."""
    result = run_cli("check-config", write("budgets.toml", GOOD), write("section.toml", "[htp]\n"))
    assert result.returncode == 1
    assert result.stdout == "budgets.toml: ok (2 section(s), 1 route and 1 task override(s))\n"
    assert result.stderr.startswith("error: section.toml: htp: unknown section")


def test_no_file_is_a_usage_error() -> None:
    """check-config with no file: argparse's usage error, exit 2."""
    result = run_cli("check-config")
    assert result.returncode == 2
    assert "the following arguments are required: FILE" in result.stderr


def test_json_format(write: Callable[[str, str], str]) -> None:
    """--format json: one document on stdout with each file's verdict, counts and problems; exit 1 on any error."""
    result = run_cli("check-config", "--format", "json", write("budgets.toml", GOOD), write("typo.toml", "[http]\ndb.querys = 3\n"))
    assert (result.returncode, result.stderr) == (1, "")
    assert json.loads(result.stdout) == {
        "ok": False,
        "files": [
            {"file": "budgets.toml", "ok": True, "summary": "2 section(s), 1 route and 1 task override(s)",
             "sections": 2, "routes": 1, "tasks": 1},
            {"file": "typo.toml", "ok": False,
             "error": f"typo.toml: http.db.querys: unknown metric; did you mean 'db.queries'? (valid: {METRICS})",
             "problems": [{"key": "http.db.querys", "message": f"unknown metric; did you mean 'db.queries'? (valid: {METRICS})"}]},
        ],
    }  # fmt: skip


def test_json_format_all_good(write: Callable[[str, str], str]) -> None:
    """--format json on good files: ok true, exit 0."""
    result = run_cli("check-config", "--format", "json", write("empty.toml", ""))
    assert result.returncode == 0
    assert json.loads(result.stdout)["ok"] is True


def test_version() -> None:
    """`otel-budget --version` prints the installed version."""
    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"otel-budget {otel_budget.__version__}\n")


def test_repeated_duration_limit(write: Callable[[str, str], str]) -> None:
    """`db.repeated_duration_ms` is accepted in a section and an override; a negative limit is refused."""
    text = (
        "[http]\ndb.repeated_queries = 20\ndb.repeated_duration_ms = 50\n\n"
        '[[http.route]]\nmatch = "books/*"\ndb.repeated_duration_ms = 5.5\n'
    )
    good = run_cli("check-config", write("sentry.toml", text))
    assert (good.returncode, good.stdout) == (0, "sentry.toml: ok (1 section(s), 1 route and 0 task override(s))\n")
    bad = run_cli("check-config", write("negative.toml", "[celery]\ndb.repeated_duration_ms = -50\n"))
    assert (bad.returncode, bad.stderr) == (
        1,
        "error: negative.toml: celery.db.repeated_duration_ms: must be a non-negative number, got negative -50\n",
    )
