"""`@pytest.mark.budget` through the processor's overlay, without Django or the service stack."""

from __future__ import annotations

import pytest

TESTS = """
import time

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from otel_budget import budget, budget_scope, set_budget


def queries(count):
    tracer = trace.get_tracer("tests")
    for i in range(count):
        attributes = {"db.system": "sqlite", "db.statement": f"SELECT {i}"}
        with tracer.start_as_current_span("query", kind=SpanKind.CLIENT, attributes=attributes):
            pass


@pytest.mark.budget(db_queries=1)
def test_marker_limit():
    with budget_scope("job"):
        queries(2)


@pytest.mark.budget(db_queries=1)
def test_in_code_limit_wins():
    with budget_scope("job", db_queries=5):
        queries(2)


def test_unmarked_is_back_on_the_file():
    with budget_scope("job"):
        queries(2)


def test_no_scope_runs():
    queries(2)


@budget(db_queries=1)
def reprice():
    queries(2)


@pytest.mark.budget(db_queries=5)
def test_decorator_limit_is_code():
    with budget_scope("job"):
        reprice()


@pytest.mark.budget(db_repeated_duration_ms=0)
def test_repeated_duration_marker():
    with budget_scope("job"):
        tracer = trace.get_tracer("tests")
        for i in range(3):
            attributes = {"db.system": "sqlite", "db.statement": f"SELECT * FROM t WHERE id = {i}"}
            with tracer.start_as_current_span("query", kind=SpanKind.CLIENT, attributes=attributes):
                time.sleep(0.002)


@pytest.mark.budget(db_queries=5)
def test_set_budget_limit_is_code():
    with budget_scope("job"):
        set_budget(db_queries=1)
        queries(2)
"""


@pytest.fixture
def scopes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("OTEL_BUDGET_CONFIG", raising=False)
    monkeypatch.delenv("OTEL_BUDGET_ENABLED", raising=False)
    pytester.makefile(".toml", budgets="[scope]\ndb.queries = 100\n")
    pytester.makepyfile(test_scopes=TESTS)
    return pytester


def test_marker_limit_applies_as_rule_code(scopes: pytest.Pytester) -> None:
    """A marker limit replaces the file's for the test's scopes, as rule `code`."""
    result = scopes.runpytest_subprocess("--budgets", "budgets.toml", "test_scopes.py::test_marker_limit", timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "otel-budget: scope job: db.queries 2 > limit 1",
            "1 scope(s) over budget in this test; budgets: budgets.toml",
            "this test's @pytest.mark.budget: db_queries=1",
            "scope job  (trace *)",
            "  db.queries: 2 > limit 1  [rule code]",
            "Fix the code, or raise the limit for this test: @pytest.mark.budget(db_queries=2)",
        ]
    )


def test_marker_limits_the_repeated_statement_time(scopes: pytest.Pytester) -> None:
    """`@pytest.mark.budget(db_repeated_duration_ms=0)`: three 2 ms runs of one statement fail the test."""
    result = run(scopes, "budgets.toml", "test_repeated_duration_marker")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "this test's @pytest.mark.budget: db_repeated_duration_ms=0",
            "  db.repeated_duration_ms: * > limit 0  ?rule code?",  # fnmatch: `[` opens a set
            "    the most repeated statement: SELECT * FROM t WHERE id = ?",
            "Fix the code, or raise the limit for this test: @pytest.mark.budget(db_repeated_duration_ms=*)",
        ]
    )


def test_in_code_limit_wins_over_the_marker(scopes: pytest.Pytester) -> None:
    """A budget_scope's own limit wins over the test's marker; the marker ends with its test."""
    result = scopes.runpytest_subprocess(
        "--budgets", "budgets.toml", "-p", "no:randomly", "test_scopes.py::test_in_code_limit_wins",
        "test_scopes.py::test_marker_limit", "test_scopes.py::test_unmarked_is_back_on_the_file", timeout=120,
    )  # fmt: skip
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_scopes.py::test_marker_limit - *"])


def run(scopes: pytest.Pytester, budgets: str, *tests: str) -> pytest.RunResult:
    """Run `tests` of test_scopes.py in order with `--budgets budgets`."""
    nodeids = [f"test_scopes.py::{test}" for test in tests]
    return scopes.runpytest_subprocess("--budgets", budgets, "-p", "no:randomly", *nodeids, timeout=120)


def test_in_code_limit_is_named_as_code(scopes: pytest.Pytester) -> None:
    """A limit from @budget or set_budget fails with advice to raise it in the code, not with a marker."""
    result = run(scopes, "budgets.toml", "test_decorator_limit_is_code", "test_set_budget_limit_is_code")
    result.assert_outcomes(failed=2)
    in_code = [
        "  db.queries: 2 > limit 1  [rule code]",
        "    limit set in code for this scope (budget_scope(...) or set_budget()); @pytest.mark.budget cannot raise it",
        "Fix the code, or raise the limit where the code sets it: db_queries=2 (rule code: *)",
    ]
    result.stdout.fnmatch_lines(in_code * 2)
    result.stdout.no_fnmatch_line("*raise the limit for this test*")


def test_marker_and_file_limits_are_named(scopes: pytest.Pytester) -> None:
    """The marker's limit is named as the marker's; the file's as the file's section."""
    scopes.makefile(".toml", low="[scope]\ndb.queries = 1\n")
    result = run(scopes, "low.toml", "test_marker_limit", "test_unmarked_is_back_on_the_file")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "    limit from this test's @pytest.mark.budget",
            "Fix the code, or raise the limit for this test: @pytest.mark.budget(db_queries=2)",
            "    limit from low.toml: [scope]",
            "Fix the code, or raise the limit for this test: @pytest.mark.budget(db_queries=2)",
        ]
    )


def test_tests_without_a_scope_are_named(scopes: pytest.Pytester) -> None:
    """A test in which no request, task or scope ran passes, but the summary says so, naming it."""
    result = run(scopes, "budgets.toml", "test_no_scope_runs", "test_unmarked_is_back_on_the_file")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= otel-budget: 1 test(s) ran no request, task or scope: not checked against budgets.toml =*",
            "A Django test-client request is budgeted only with Django's instrumentation on (pytest-django *",
            "  test_scopes.py::test_no_scope_runs",
        ]
    )
    result.stdout.no_fnmatch_line("  test_scopes.py::test_unmarked_is_back_on_the_file")


def test_header_lists_the_instrumentations_and_says_django_is_off(scopes: pytest.Pytester) -> None:
    """Without Django settings the header says which instrumentations are on and why Django is not."""
    result = run(scopes, "budgets.toml", "test_marker_limit")
    result.stdout.fnmatch_lines(
        [
            "otel-budget: budgets from budgets.toml; own TracerProvider (no exporter)",
            "otel-budget: instrumentations switched on: *psycopg2*; not Django: its settings are not configured, "
            "so test-client requests are not budgeted (install pytest-django and set DJANGO_SETTINGS_MODULE)",
        ]
    )
