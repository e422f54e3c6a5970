from __future__ import annotations

import pytest

from otel_budget.normalize import normalize_mongo, normalize_sql, truncate


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = ?"),
        ("SELECT * FROM t WHERE id = %s", "SELECT * FROM t WHERE id = ?"),
        ("SELECT * FROM t WHERE id = $1 AND x = :name", "SELECT * FROM t WHERE id = ? AND x = ?"),
        ("SELECT * FROM t WHERE id = %(id)s", "SELECT * FROM t WHERE id = ?"),
        ("SELECT * FROM t WHERE email = 'bob@example.com'", "SELECT * FROM t WHERE email = ?"),
        ("SELECT * FROM t WHERE name = 'O''Brien'", "SELECT * FROM t WHERE name = ?"),
        ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (?)"),
        ("SELECT * FROM t WHERE id IN (%s, %s)", "SELECT * FROM t WHERE id IN (?)"),
        ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')", "INSERT INTO t (a, b) VALUES (?)"),
        ("SELECT -1.5e3, .5, 0x1F", "SELECT ?, ?, ?"),
        ("SELECT t1.c2 FROM t1", "SELECT t1.c2 FROM t1"),
        ("SELECT  *\n FROM t /* traceparent='00-abc' */ -- trailing\n", "SELECT * FROM t"),
        ("SELECT $$secret text$$", "SELECT ?"),
        ("UPDATE t SET flag = TRUE, x = NULL", "UPDATE t SET flag = ?, x = ?"),
    ],
)
def test_normalize_sql(statement: str, expected: str) -> None:
    """Literals, placeholders, lists and comments collapse to one shape."""
    assert normalize_sql(statement) == expected


def test_normalize_sql_same_shape_for_n_plus_one() -> None:
    """Statements that differ only in literal values normalise equal."""
    assert normalize_sql("SELECT * FROM line WHERE order_id = 1") == normalize_sql(
        "SELECT * FROM line WHERE order_id = 977"
    )


@pytest.mark.parametrize(
    ("operation", "collection", "statement", "expected"),
    [
        ("find", "users", "find", "find users"),
        ("find", "users", "find {'email': 'a@b.c', 'age': 42}", "find users {'email': ?, 'age': ?}"),
        ("find", "users", "find {'_id': ObjectId('65f0a1b2c3d4e5f601234567')}", "find users {'_id': ?}"),
        ("find", "users", "find {'tags': {'$in': ['a', 'b', 'c']}}", "find users {'tags': {'$in': [?]}}"),
        ("insert", "events", "insert {'ok': True, 'n': None}", "insert events {'ok': ?, 'n': ?}"),
    ],
)
def test_normalize_mongo(operation: str, collection: str, statement: str, expected: str) -> None:
    """Operation + collection + the filter's shape; values become ?."""
    assert normalize_mongo(operation, collection, statement) == expected


def test_no_literal_survives() -> None:
    """E-mail addresses and numbers never reach the normalised text."""
    texts = [
        normalize_sql("SELECT * FROM u WHERE email = 'alice@corp.example' AND pin = 123456"),
        normalize_mongo("find", "u", "find {'email': 'alice@corp.example', 'pin': 123456}"),
    ]
    for text in texts:
        assert "alice" not in text and "123456" not in text


def test_truncate() -> None:
    """Long statements are cut to the limit with an ellipsis."""
    assert truncate("x" * 300, 200) == "x" * 199 + "…"
    assert truncate("short", 200) == "short"
