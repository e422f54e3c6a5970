"""What the pytest plugin prints for a test over budget: above all, where each broken limit is set."""

from __future__ import annotations

from otel_budget._render import failure_message
from otel_budget.config import BudgetConfig, parse_config
from otel_budget.names import ScopeKind
from otel_budget.results import ScopeResult, Violation

BUDGETS = parse_config(
    {
        "http": {"db": {"queries": 20}, "route": [{"match": "reports/*", "db": {"queries": 50}}]},
        "celery": {"task": [{"match": "billing.*", "db": {"queries": 5}}]},
    },
    source="budgets.toml",
)


def scope(kind: ScopeKind, name: str, rule: str, limit: float, actual: float = 7, method: str | None = None) -> ScopeResult:
    violation = Violation(metric="db.queries", limit=limit, actual=actual, rule=rule, timestamp_ns=1)
    return ScopeResult(
        kind=kind, name=name, method=method, rule=rule, values={"db.queries": actual},
        violations=(violation,), trace_id=1, span_id=2,
    )  # fmt: skip


def message(result: ScopeResult, budgets: BudgetConfig = BUDGETS, marker: dict[str, float] | None = None) -> list[str]:
    return failure_message([result], budgets, marker or {}).splitlines()


def test_limit_from_code_says_so_and_that_a_marker_cannot_raise_it() -> None:
    """A `code` limit the marker did not set (`@budget` on a task) is to be raised in the code."""
    lines = message(scope(ScopeKind.CELERY, "books.tasks.reprice", "code", 3))
    assert "    limit set in code for this task (@budget(...) or set_budget()); @pytest.mark.budget cannot raise it" in lines
    assert lines[-1] == (
        "Fix the code, or raise the limit where the code sets it: db_queries=7 "
        "(rule code: in-code limits win over @pytest.mark.budget, so a marker cannot raise them)"
    )
    assert not any("@pytest.mark.budget(db_queries" in line for line in lines)


def test_code_limit_under_a_different_marker_limit_is_still_code() -> None:
    """With the marker at 5 and the scope's own limit 3 in force, the limit is the code's, not the marker's."""
    lines = message(scope(ScopeKind.SCOPE, "import", "code", 3), marker={"db.queries": 5})
    assert "    limit set in code for this scope (budget_scope(...) or set_budget()); @pytest.mark.budget cannot raise it" in lines
    assert lines[-1].startswith("Fix the code, or raise the limit where the code sets it: db_queries=7")


def test_limit_from_the_marker() -> None:
    """A `code` limit equal to the marker's is the marker's: raise it there."""
    lines = message(scope(ScopeKind.SCOPE, "import", "code", 3), marker={"db.queries": 3})
    assert "    limit from this test's @pytest.mark.budget" in lines
    assert lines[-1] == "Fix the code, or raise the limit for this test: @pytest.mark.budget(db_queries=7)"


def test_limit_from_a_file_section() -> None:
    lines = message(scope(ScopeKind.HTTP, "books/", "http", 20, 21, method="GET"))
    assert "    limit from budgets.toml: [http]" in lines
    assert lines[-1] == "Fix the code, or raise the limit for this test: @pytest.mark.budget(db_queries=21)"


def test_limit_from_a_route_override() -> None:
    lines = message(scope(ScopeKind.HTTP, "reports/sales/", "route:reports/*", 50, 51, method="GET"))
    assert '    limit from budgets.toml: [[http.route]] match = "reports/*"' in lines


def test_limit_from_a_task_override() -> None:
    lines = message(scope(ScopeKind.CELERY, "billing.charge", "task:billing.*", 5))
    assert '    limit from budgets.toml: [[celery.task]] match = "billing.*"' in lines


def test_limit_from_the_built_in_default() -> None:
    """A section the file does not have enforces the built-in default; the message says so."""
    lines = message(scope(ScopeKind.SCOPE, "import", "scope", 5, 6))
    assert "    limit: the built-in default (budgets.toml has no [scope] section)" in lines


def test_code_and_file_limits_get_both_pieces_of_advice() -> None:
    """One scope over a file limit and a code limit: the marker advice names only the file's metric."""
    file_violation = Violation(metric="db.repeated_queries", limit=5, actual=6, rule="celery", timestamp_ns=1)
    code_violation = Violation(metric="db.queries", limit=3, actual=7, rule="code", timestamp_ns=1)
    result = ScopeResult(
        kind=ScopeKind.CELERY, name="books.tasks.reprice", method=None, rule="code",
        values={"db.queries": 7, "db.repeated_queries": 6}, violations=(file_violation, code_violation),
        trace_id=1, span_id=2,
    )  # fmt: skip
    lines = failure_message([result], parse_config({"celery": {"db": {"queries": 100}}}, source="b.toml"), {})
    assert lines.splitlines()[-2:] == [
        "Fix the code, or raise the limit for this test: @pytest.mark.budget(db_repeated_queries=6)",
        "Fix the code, or raise the limit where the code sets it: db_queries=7 "
        "(rule code: in-code limits win over @pytest.mark.budget, so a marker cannot raise them)",
    ]
