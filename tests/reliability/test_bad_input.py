"""Bad budgets files and bad environment variables: a valid config or a clear ConfigError, and the app keeps serving.

`load_config` must either return a `BudgetConfig` or raise `ConfigError` whose every line names the
file (and the key, when a key is at fault) — never another exception from deep inside. A service
started with such a file runs on the built-in defaults, logs one ERROR and marks every scope span
with `budget.config_error` (docs/design.md, "What a running service does with a bad file").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

import reliability_kit as kit
from otel_budget import activation
from otel_budget.config import BudgetConfig, ConfigError, load_config, valid_metrics

# --------------------------------------------------------------------------- generated budgets files

METRICS = valid_metrics()
MISSPELT = ("db.querys", "db.Queries", "duration", "duration_MS", "memory.growth", "db.postgres.queries",
            "db.postgresql.querie", "external_calls", "db", "db.queries.max", "tasks", "cpu", "budget.db.queries")  # fmt: skip
SECTIONS = ("http", "celery", "scope", "htpp", "Http", "celeri", "scopes", "ｈｔｔｐ", "route", "task")
GLOBS = ("reports/*", "orders/*/confirm/", "*", "store.tasks.*", "probe/?", "[abc]*", "[!x]y")
BAD_GLOBS = ("[", "a[b", "[]", "[]]", "[!]", "**[", "\\", "[z-a]", "x[[", "é[ü")
METHODS = ("GET", "get", "Post", "FETCH", "", "G E T")

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 5, 2**53, 2**53 + 1, -1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.5]),
    text,
    st.booleans(),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.dates(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(["queries", "x", "ms"]), scalars, max_size=2))
keys = st.one_of(st.sampled_from(METRICS), st.sampled_from(MISSPELT), text.filter(bool))
limits = st.dictionaries(keys, values, max_size=5)
overrides = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "match": st.one_of(st.sampled_from(GLOBS), st.sampled_from(BAD_GLOBS), text, st.integers()),
            "method": st.one_of(st.sampled_from(METHODS), st.integers(), st.booleans()),
        },
    ).flatmap(lambda head: limits.map(lambda rest: {**rest, **head})),
    max_size=3,
)
sections = st.dictionaries(
    st.one_of(st.sampled_from(SECTIONS), text.filter(bool)),
    st.one_of(
        st.tuples(limits, st.sampled_from(["route", "task", "routes"]), overrides).map(lambda t: {**t[0], t[1]: t[2]}),
        limits,
        scalars,
    ),
    max_size=4,
)


def toml_key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        return key  # bare, possibly dotted: `db.queries`
    return json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int, dt.date)):
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(data: dict[str, Any]) -> str:
    """A budgets file for `data`; arrays of tables become [[section.sub]] blocks."""
    lines: list[str] = []
    for section, body in data.items():
        if not isinstance(body, dict):
            lines.append(f"{toml_key(section)} = {toml_value(body)}")
            continue
        lines.append(f"[{toml_key(section)}]")
        tables = {k: v for k, v in body.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)}
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items() if k not in tables]
        for sub, items in tables.items():
            for item in items:
                lines.append(f"[[{toml_key(section)}.{toml_key(sub)}]]")
                lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def damaged(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """Truncate and flip bytes: a half-written or corrupted file."""
    out = bytearray(data[: max(0, len(data) - cut)])
    for position, byte in flips:
        if out:
            out[position % len(out)] = byte
    return bytes(out)


def check_file(path: Path) -> str:
    """Load `path`; a valid config is exercised, an error must be a ConfigError naming file and key."""
    try:
        config = load_config(path)
    except ConfigError as error:
        message = str(error)
        assert message.startswith(f"{path}: "), "the error names the file"
        assert error.problems, "the error lists what is wrong"
        for problem in error.problems:
            if problem.key:  # shown as is, or quoted when it holds a line break or control character
                assert f"{path}: {problem.key}: " in message or f"{path}: {problem.key!r}: " in message
            else:
                assert problem.message in message
        return "error"
    assert isinstance(config, BudgetConfig)
    for kind, name, method in (("http", "reports/daily", "GET"), ("http", None, None), ("celery", "store.tasks.x", None), ("scope", "nightly", None)):
        rule = config.rule_for(kind, name, method)
        assert all(isinstance(v, (int, float)) and 0 <= v <= 2**53 and math.isfinite(v) for v in rule.limits.values())
    return "valid"


FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def test_fuzzed_budgets_files_give_a_config_or_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, figure: Callable[[str, str], None]
) -> None:
    """Generated files (unknown and misspelt keys, wrong types, huge/negative/NaN/unicode values, bad globs, corruption)."""
    outcomes: Counter[str] = Counter()
    directory = tmp_path_factory.mktemp("fuzz")

    @FUZZ
    @given(
        data=sections,
        cut=st.integers(0, 40),
        flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
        damage=st.booleans(),
    )
    def one_file(data: dict[str, Any], cut: int, flips: list[tuple[int, int]], damage: bool) -> None:
        path = directory / "budgets.toml"
        raw = to_toml(data).encode()
        path.write_bytes(damaged(raw, cut, flips) if damage else raw)
        outcomes[check_file(path)] += 1

    one_file()
    figure("fuzzed budgets files", f"{sum(outcomes.values())} files: {dict(outcomes)}, no other exception")
    # A fuzzer that only ever made one kind of file would prove little.
    assert outcomes["valid"] >= 10 and outcomes["error"] >= 100


NASTY_FILES = {
    "deeply nested arrays": "x = " + "[" * 3000 + "]" * 3000,
    "deeply nested inline tables": "[http]\ndb = " + "{a = " * 3000 + "1" + "}" * 3000,
    "deeply dotted key": "[http]\n" + ".".join(["db"] * 3000) + " = 1",
    "deeply dotted table header": "[http." + ".".join(["a"] * 3000) + "]\nx = 1",
    "UTF-8 byte-order mark": "\ufeff[http]\ndb.queries = 1\n",
    "invalid UTF-8": b"[http]\ndb.queries = 1 # \xff\xfe\n",
    "NUL bytes": b"[http]\x00\ndb.queries = 1\n",
    "random binary": bytes(range(256)) * 64,
    "empty": "",
    "only comments": "# nothing here\n",
    "20 000 overrides": "[http]\ndb.queries = 30\n" + "".join(f'[[http.route]]\nmatch = "r{n}/*"\ndb.queries = {n}\n' for n in range(20_000)),
    "1 MB key": "[http]\n" + '"' + "k" * 1_000_000 + '" = 1\n',
    "huge number": "[http]\ndb.queries = " + "9" * 5000 + "\n",
}


@pytest.mark.parametrize("name", NASTY_FILES)
def test_nasty_budgets_files(name: str, tmp_path: Path, figure: Callable[[str, str], None]) -> None:
    """Hand-picked files that stress the parser: deep nesting, encodings, binary, very large."""
    content = NASTY_FILES[name]
    path = tmp_path / "budgets.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    started = time.perf_counter()
    try:
        outcome = check_file(path)
    except AssertionError:
        raise
    except Exception as exc:  # the point of the test: nothing but ConfigError may escape
        pytest.fail(f"{name}: load_config raised {type(exc).__name__}: {str(exc)[:200]} (not a ConfigError)", pytrace=False)
    seconds = time.perf_counter() - started
    figure(f"budgets file: {name}", f"{outcome} in {seconds * 1000:.0f} ms ({path.stat().st_size} bytes)")
    assert seconds < 10


def test_every_problem_of_a_file_stays_on_its_own_line(tmp_path: Path) -> None:
    """A key with a line break or control character is shown escaped: one `FILE: KEY: message` line per problem."""
    path = tmp_path / "budgets.toml"
    path.write_text('"ht\\ntp" = 1\n[http]\n"db.que\\u0000ries" = 2\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == len(caught.value.problems) == 2, lines
    assert all(line.startswith(f"{path}: ") for line in lines), lines


# --------------------------------------------------------------------------- environment variables


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="otel_budget")
    return caplog


def install_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    for name in ("OTEL_BUDGET_ENABLED", "OTEL_BUDGET_MAX_OPEN_SCOPES", "OTEL_BUDGET_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    provider = TracerProvider()
    try:
        return activation.install(provider)
    finally:
        provider.shutdown()


@pytest.mark.parametrize("value", ["maybe", "ture", "2", "enabled", "ｔｒｕｅ", " yes "])
def test_unrecognised_otel_budget_enabled_stays_on_and_says_so(
    value: str, monkeypatch: pytest.MonkeyPatch, errors_logged: pytest.LogCaptureFixture
) -> None:
    processor = install_with(monkeypatch, OTEL_BUDGET_ENABLED=value)
    assert processor is not None
    if value.strip().lower() not in ("yes",):
        assert any("OTEL_BUDGET_ENABLED" in r.getMessage() and r.levelno == logging.ERROR for r in errors_logged.records)


@pytest.mark.parametrize("value", ["abc", "1e5", "10.5", "-5", "0", "-1", "twelve", "0x10"])
def test_bad_otel_budget_max_open_scopes_falls_back_to_the_default(
    value: str, monkeypatch: pytest.MonkeyPatch, errors_logged: pytest.LogCaptureFixture, figure: Callable[[str, str], None]
) -> None:
    """Not a positive integer: ERROR naming the variable, and the default cap (10 000) — never a cap of 1."""
    processor = install_with(monkeypatch, OTEL_BUDGET_MAX_OPEN_SCOPES=value)
    figure(f"OTEL_BUDGET_MAX_OPEN_SCOPES={value!r}", f"cap {processor.max_open_scopes}")
    assert processor.max_open_scopes == 10_000
    assert any("OTEL_BUDGET_MAX_OPEN_SCOPES" in r.getMessage() and r.levelno == logging.ERROR for r in errors_logged.records)


CONFIG_TARGETS: dict[str, Callable[[Path], Path]] = {
    "a directory": lambda tmp: tmp,
    "a missing file": lambda tmp: tmp / "nowhere" / "budgets.toml",
    "a binary file": lambda tmp: _write(tmp / "budgets.toml", os.urandom(4096)),
    "an invalid file": lambda tmp: _write(tmp / "budgets.toml", b"[http]\ndb.querys = 1\n"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("target", CONFIG_TARGETS)
def test_otel_budget_config_that_cannot_be_used(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errors_logged: pytest.LogCaptureFixture, figure: Callable[[str, str], None]
) -> None:
    """Built-in defaults, an ERROR naming the file, and the reason kept for `budget.config_error`."""
    path = CONFIG_TARGETS[target](tmp_path)
    processor = install_with(monkeypatch, OTEL_BUDGET_CONFIG=str(path))
    assert processor is not None
    figure(f"OTEL_BUDGET_CONFIG -> {target}", str(processor.config_error))
    assert processor.config.source == "<built-in defaults>"
    assert processor.config_error and str(path) in processor.config_error
    errors = [r for r in errors_logged.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0].getMessage()


# Devices and pipes: reading them to the end never finishes (or never starts). Run in a child
# with 1.5 GiB of address space and a deadline, so a failure cannot hurt this machine.
_PROBE = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))
    from otel_budget.activation import load_config_or_default
    config, error = load_config_or_default(sys.argv[1])
    print("config_error:", (error or "").splitlines()[0][:200] if error else None)
    """
)


@pytest.mark.parametrize("target", ["/dev/zero", "a named pipe nobody writes to"])
def test_otel_budget_config_pointing_at_a_device_or_pipe(target: str, tmp_path: Path, figure: Callable[[str, str], None]) -> None:
    """Start-up must end promptly with a ConfigError, not read forever or wait forever."""
    path = target
    if not target.startswith("/"):
        path = str(tmp_path / "budgets.toml")
        os.mkfifo(path)
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, timeout=10, text=True)
        outcome = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
        ok = done.returncode == 0 and "config_error:" in done.stdout and "None" not in done.stdout
    except subprocess.TimeoutExpired:
        outcome, ok = ["still reading after 10 s"], False
    figure(f"OTEL_BUDGET_CONFIG={target}", f"{outcome[0][:200]} after {time.perf_counter() - started:.1f}s")
    assert ok, f"load_config({path!r}) did not end with a ConfigError: {outcome[0][:300]}"


# --------------------------------------------------------------------------- a service started with them

BAD_BUDGETS = """\
[http]
db.querys = 10                 # misspelt
duration_ms = "fast"           # wrong type

[[http.route]]
match = "probe/["              # bad glob
db.queries = -1                # negative
"""


def test_service_with_a_bad_budgets_file_and_bad_variables_keeps_serving(
    shop_db: None, tmp_path: Path, figure: Callable[[str, str], None]
) -> None:
    """gunicorn with a bad file and bad variables: 200s, one ERROR, defaults in force, budget.config_error on every scope."""
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(BAD_BUDGETS)
    port = kit.free_port()
    env = kit.app_env(
        kit.service_name("badconfig"),
        reliability_app=False,
        OTEL_BUDGET_CONFIG=str(budgets),
        OTEL_BUDGET_ENABLED="yes please",
        OTEL_BUDGET_MAX_OPEN_SCOPES="lots",
    )
    app = kit.AppProcess("badconfig-web", kit.gunicorn_argv(port, workers=1, threads=4), env, port)
    try:
        app.start()
        responses = [kit.get(f"{app.url}/probe/queries/?pg={pg}&mongo=0") for pg in (2, 8, 3)]
        responses.append(kit.get(f"{app.url}/products/1/"))
        assert [r.status for r in responses] == [200] * 4
        scopes = kit.scope_spans_by_trace([r.trace_id for r in responses])
        log = app.log()
    finally:
        app.stop()
    spans = [scopes[r.trace_id] for r in responses]
    n_plus_one = [e for e in spans[1].events if e[0] == "budget.exceeded"]
    figure(
        "service with a bad budgets file",
        f"{len(responses)} requests all 200; budget.config_error on {sum('budget.config_error' in s.attributes for s in spans)} "
        f"of {len(spans)} scope spans: {str(spans[0].attributes.get('budget.config_error'))[:160]!r}...; rules "
        f"{sorted({s.attributes.get('budget.rule') for s in spans})}; N+1 events on the 8-query request "
        f"{[(e[1].get('budget.metric'), e[1].get('budget.limit')) for e in n_plus_one]}",
    )
    for span in spans:
        error = str(span.attributes.get("budget.config_error", ""))
        assert str(budgets) in error
        for key in ("http.db.querys", "http.duration_ms", "http.route[0].match", "http.route[0].db.queries"):
            assert key in error
        assert span.attributes.get("budget.rule") == "http", "built-in defaults: no route rule from the bad file"
    assert [e[1].get("budget.metric") for e in n_plus_one] == ["db.repeated_queries"], "the built-in N+1 limit (5)"
    assert "did you mean 'db.queries'" in str(spans[0].attributes["budget.config_error"])
    assert "budgets file unusable" in log and str(budgets) in log
    assert "OTEL_BUDGET_ENABLED" in log and "OTEL_BUDGET_MAX_OPEN_SCOPES" in log
