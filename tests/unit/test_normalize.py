from __future__ import annotations

import pytest

from otel_budget.normalize import NORMALIZE_MAX_CHARS, normalize_mongo, normalize_sql, shorten


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


def test_shorten_keeps_where_clause_of_long_select() -> None:
    """Django's long column list gives way first, so the FROM/WHERE that identifies the loop is exported."""
    columns = ", ".join(f'"store_orderline"."c{i}"' for i in range(30))
    statement = f'SELECT {columns} FROM "store_orderline" WHERE "store_orderline"."order_id" = ?'
    assert shorten(statement, 200) == 'SELECT … FROM "store_orderline" WHERE "store_orderline"."order_id" = ?'
    assert shorten("short", 200) == "short"


def test_shorten_cuts_the_middle_of_anything_else() -> None:
    """Other long statements keep their start and their end."""
    text = shorten("UPDATE t SET " + "a = ?, " * 100 + "z = ? WHERE id = ?", 60)
    assert len(text) == 60
    assert text.startswith("UPDATE t SET a = ?") and text.endswith("z = ? WHERE id = ?")


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM t WHERE a = 'x--bob@example.com' AND b = 1", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("SELECT * FROM t WHERE a = 'p/*bob@example.com' AND b = 1", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("SELECT * FROM t WHERE a = E'it\\'s bob@example.com' AND b = 1", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("SELECT * FROM t WHERE a = 'it\\'s bob@example.com' AND b = 1", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ('SELECT * FROM t WHERE a = "bob@example.com"', "SELECT * FROM t WHERE a = ?"),
        ("SELECT * FROM t WHERE a = 'bob@example.com", "SELECT * FROM t WHERE a = ?"),
        ('SELECT "t"."id" FROM "t" /* it\'s */ WHERE "t"."a" = 1', 'SELECT "t"."id" FROM "t" WHERE "t"."a" = ?'),
    ],
)
def test_literals_never_leak_through_comments_or_escapes(statement: str, expected: str) -> None:
    """Comment markers inside literals, backslash escapes and unterminated literals still hide the data."""
    assert normalize_sql(statement) == expected


def test_long_statement_is_cut_before_normalising() -> None:
    """Only the first NORMALIZE_MAX_CHARS are normalised; a literal cut there is still hidden."""
    text = normalize_sql("INSERT INTO t VALUES ('" + "secret " * 2000 + "')")
    assert text == "INSERT INTO t VALUES (? …"


def test_unterminated_comments_are_linear() -> None:
    """Many `/*` without `*/` do not make normalisation quadratic."""
    import time

    started = time.perf_counter()
    normalize_sql("SELECT 1 " + "/*" * 20_000)
    assert time.perf_counter() - started < 1.0
    assert NORMALIZE_MAX_CHARS == 4096


def test_savepoint_names_are_normalised() -> None:
    """Django names each savepoint anew; the statement's shape is `SAVEPOINT ?`."""
    assert normalize_sql('SAVEPOINT "s140217_x3"') == "SAVEPOINT ?"
    assert normalize_sql('RELEASE SAVEPOINT "s140217_x4"') == "RELEASE SAVEPOINT ?"
    assert normalize_sql("ROLLBACK TO SAVEPOINT sp_1") == "ROLLBACK TO SAVEPOINT ?"


def test_mongo_or_clauses_of_one_shape_collapse_like_in() -> None:
    """`$or` of N clauses of the same shape is one shape, whatever N; different shapes stay."""
    three = normalize_mongo("find", "c", '{"$or": [{"a": 1}, {"a": 2}, {"a": 3}]}')
    assert three == normalize_mongo("find", "c", '{"$or": [{"a": 9}, {"a": 8}]}') == 'find c {"$or": [{"a": ?}]}'
    assert normalize_mongo("find", "c", '{"$and": [{"a": {"$gt": 1}}, {"a": {"$gt": 2}}]}') == (
        'find c {"$and": [{"a": {"$gt": ?}}]}'
    )
    assert normalize_mongo("find", "c", '{"$or": [{"a": 1}, {"b": 2}]}') == 'find c {"$or": [{"a": ?}, {"b": ?}]}'
