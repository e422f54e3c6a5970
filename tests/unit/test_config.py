from __future__ import annotations

from pathlib import Path

import pytest

from otel_budget.config import DEFAULT_LIMITS, BudgetConfig, ConfigError, load_config, parse_config, validate_limits

DESIGN_EXAMPLE = """
[http]                      # every HTTP request
db.queries = 30
db.repeated_queries = 5
db.duration_ms = 300
external.calls = 0
memory.growth_mb = 50
duration_ms = 1000

[[http.route]]
match = "reports/*"
method = "GET"
db.queries = 200

[celery]
db.queries = 1000
duration_ms = 60000

[[celery.task]]
match = "billing.*"
duration_ms = 300000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value).replace(str(tmp_path) + "/", "").splitlines()


def test_design_example_http_defaults(tmp_path: Path) -> None:
    """The [http] section applies to any route without an override."""
    config = load_config(write(tmp_path, DESIGN_EXAMPLE))
    rule = config.rule_for("http", "items/", "GET")
    assert rule.name == "http"
    assert dict(rule.limits) == {
        "db.queries": 30,
        "db.repeated_queries": 5,
        "db.duration_ms": 300.0,
        "external.calls": 0,
        "external.untimed_calls": 0,
        "memory.growth_mb": 50.0,
        "duration_ms": 1000.0,
    }


def test_route_override_inherits_and_replaces(tmp_path: Path) -> None:
    """An override replaces only what it names and is credited per metric."""
    config = load_config(write(tmp_path, DESIGN_EXAMPLE))
    rule = config.rule_for("http", "reports/monthly/", "GET")
    assert rule.name == "route:reports/*"
    assert rule.limits["db.queries"] == 200
    assert rule.limits["duration_ms"] == 1000.0
    assert rule.sources["db.queries"] == "route:reports/*"
    assert rule.sources["duration_ms"] == "http"


def test_route_override_method_filter(tmp_path: Path) -> None:
    """A method-filtered override does not apply to other methods."""
    config = load_config(write(tmp_path, DESIGN_EXAMPLE))
    assert config.rule_for("http", "reports/monthly/", "POST").name == "http"
    assert config.rule_for("http", "reports/monthly/", "get").name == "route:reports/*"


def test_first_matching_override_wins() -> None:
    """Overrides are tried in file order."""
    config = parse_config(
        {"http": {"route": [{"match": "a/*", "db.queries": 1}, {"match": "a/b/*", "db.queries": 2}]}}
    )
    assert config.rule_for("http", "a/b/c", "GET").limits["db.queries"] == 1


def test_task_override(tmp_path: Path) -> None:
    """Tasks match [[celery.task]] globs on the task name."""
    config = load_config(write(tmp_path, DESIGN_EXAMPLE))
    rule = config.rule_for("celery", "billing.charge")
    assert (rule.name, rule.limits["duration_ms"], rule.limits["db.queries"]) == ("task:billing.*", 300000.0, 1000)
    assert config.rule_for("celery", "shop.tasks.other").name == "celery"


def test_no_file_enforces_only_n_plus_one_and_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a file every kind gets db.repeated_queries = 5 and external.untimed_calls = 0, nothing else."""
    monkeypatch.delenv("OTEL_BUDGET_CONFIG", raising=False)
    config = load_config()
    for kind in ("http", "celery", "scope"):
        assert dict(config.rule_for(kind, "x").limits) == {"db.repeated_queries": 5, "external.untimed_calls": 0}
    assert dict(DEFAULT_LIMITS) == {"db.repeated_queries": 5, "external.untimed_calls": 0}


def test_file_keeps_n_plus_one_default_unless_set() -> None:
    """A section that does not name db.repeated_queries or external.untimed_calls keeps the built-in limits."""
    config = parse_config({"celery": {"duration_ms": 10}})
    assert dict(config.rule_for("celery", "t").limits) == {
        "db.repeated_queries": 5,
        "external.untimed_calls": 0,
        "duration_ms": 10.0,
    }


def test_untimed_calls_lifted_in_a_section() -> None:
    """`external.untimed_calls = 1000` in a section lifts the built-in 0 there, and only there."""
    config = parse_config({"celery": {"external": {"untimed_calls": 1000}}})
    assert config.rule_for("celery", "t").limits["external.untimed_calls"] == 1000
    assert config.rule_for("http", "items/").limits["external.untimed_calls"] == 0


def test_untimed_connections_not_enforced_unless_set() -> None:
    """db.untimed_connections has no default limit; a file may set one."""
    assert "db.untimed_connections" not in parse_config({}).rule_for("http", None).limits
    config = parse_config({"http": {"db": {"untimed_connections": 2}}})
    assert config.rule_for("http", None).limits["db.untimed_connections"] == 2


@pytest.mark.parametrize("key", ["external.untimed_calls", "db.untimed_connections"])
def test_negative_untimed_limit_names_file_and_key(tmp_path: Path, key: str) -> None:
    """A negative limit for the new metrics is the usual error naming the file and the key."""
    (line,) = problems(tmp_path, f"[http]\n{key} = -1\n")
    assert line.startswith(f"budgets.toml: http.{key}: "), line
    assert "negative" in line or ">= 0" in line, line


@pytest.mark.parametrize("key", ["external.untimed_calls", "db.untimed_connections"])
def test_untimed_limits_are_counts(tmp_path: Path, key: str) -> None:
    """The new metrics are counts: a fractional limit is refused."""
    (line,) = problems(tmp_path, f"[celery]\n{key} = 1.5\n")
    assert line.startswith(f"budgets.toml: celery.{key}: "), line


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_BUDGET_CONFIG is read when no path is given."""
    monkeypatch.setenv("OTEL_BUDGET_CONFIG", str(write(tmp_path, "[http]\ndb.queries = 7\n")))
    assert load_config().rule_for("http", None).limits["db.queries"] == 7


def test_per_system_metrics_accepted() -> None:
    """db.<system>.queries and db.<system>.duration_ms are metrics for known systems."""
    config = parse_config({"http": {"db": {"postgresql": {"queries": 3}, "mongodb": {"duration_ms": 2.5}}}})
    limits = config.rule_for("http", None).limits
    assert (limits["db.postgresql.queries"], limits["db.mongodb.duration_ms"]) == (3, 2.5)


def test_unknown_metric_did_you_mean(tmp_path: Path) -> None:
    """A misspelt metric names the file, the key, a suggestion and the valid choices."""
    (line,) = problems(tmp_path, "[http]\ndb.querys = 3\n")
    assert line.startswith("budgets.toml: http.db.querys: unknown metric; did you mean 'db.queries'? (valid: ")
    assert "cpu_ms, db.duration_ms, db.mongodb.duration_ms" in line
    assert line.endswith("(and db.<system>.queries / db.<system>.duration_ms for other systems))")


def test_unknown_system_suggests_known_one(tmp_path: Path) -> None:
    """db.postgres.queries is not a metric; db.postgresql.queries is suggested."""
    (line,) = problems(tmp_path, "[http]\ndb.postgres.queries = 3\n")
    assert "http.db.postgres.queries: unknown metric; did you mean 'db.postgresql.queries'?" in line


def test_unknown_section(tmp_path: Path) -> None:
    """A misspelt section is rejected with the valid sections."""
    assert problems(tmp_path, "[htp]\ndb.queries = 3\n") == [
        "budgets.toml: htp: unknown section; did you mean 'http'? (valid: celery, http, scope)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[http]\ndb.queries = "30"\n', "http.db.queries: must be a non-negative integer, got string '30'"),
        ("[http]\ndb.queries = true\n", "http.db.queries: must be a non-negative integer, got boolean True"),
        ("[http]\ndb.queries = -1\n", "http.db.queries: must be a non-negative integer, got negative -1"),
        ("[http]\ndb.queries = 2.5\n", "http.db.queries: must be a non-negative integer (a count), got 2.5"),
        ("[http]\nduration_ms = nan\n", "http.duration_ms: must be a non-negative number, got nan"),
        ("[http]\nduration_ms = inf\n", "http.duration_ms: must be a non-negative number, got inf"),
        ("[http]\nduration_ms = 1e300\n", "http.duration_ms: must be at most 9007199254740992, got 1e+300"),
        ("[http]\nduration_ms = [1]\n", "http.duration_ms: must be a non-negative number, got array [1]"),
        ('http = "x"\n', "http: must be a table ([http]), got string"),
        ("[[http.route]]\ndb.queries = 1\n", "http.route[0].match: required: a non-empty glob string, got nothing"),
        ('[[http.route]]\nmatch = "a/[b"\n', "http.route[0].match: bad glob 'a/[b': unclosed '[' (globs use *, ? and [abc])"),
        ('[[http.route]]\nmatch = "a"\nmethod = "FETCH"\n', "http.route[0].method: unknown HTTP method 'FETCH' (valid: CONNECT, DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE)"),
        ('[[celery.task]]\nmatch = "a"\nmethod = "GET"\n', "celery.task[0].method: only [[http.route]] overrides take a method"),
        ("[http]\nroute = 3\n", "http.route: must be an array of tables ([[http.route]]), got integer"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    """Each bad value yields one error naming the file and the key."""
    assert problems(tmp_path, text) == [f"budgets.toml: {expected}"]


def test_every_problem_is_reported(tmp_path: Path) -> None:
    """All problems of a file come in one error, in file order."""
    lines = problems(tmp_path, "[http]\ndb.queries = -1\nduration_ms = 'x'\n[celery]\nfoo = 1\n")
    assert [line.split(": ")[1] for line in lines] == ["http.db.queries", "http.duration_ms", "celery.foo"]


def test_malformed_toml(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the position."""
    (line,) = problems(tmp_path, "[http\n")
    assert line.startswith("budgets.toml: not valid TOML: ")
    assert "line 1" in line


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is an error naming it."""
    with pytest.raises(ConfigError, match=r"nope\.toml: file not found"):
        load_config(tmp_path / "nope.toml")


def test_error_carries_structured_problems(tmp_path: Path) -> None:
    """ConfigError exposes the file and each (key, message) for tools."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[http]\ndb.queries = -1\n"))
    assert info.value.source == str(tmp_path / "budgets.toml")
    assert [(p.key, p.message) for p in info.value.problems] == [
        ("http.db.queries", "must be a non-negative integer, got negative -1")
    ]


def test_validate_limits_accepts_keywords() -> None:
    """In-code limits take metric names or their underscore spellings."""
    assert validate_limits({"db_queries": 3, "db.duration_ms": 1, "memory_growth_mb": 2.5}) == {
        "db.queries": 3,
        "db.duration_ms": 1.0,
        "memory.growth_mb": 2.5,
    }


def test_validate_limits_rejects_unknown() -> None:
    """In-code limits are validated like the file."""
    with pytest.raises(ConfigError, match=r"<code>: db_querys: unknown metric; did you mean 'db_queries'\?"):
        validate_limits({"db_querys": 3})
