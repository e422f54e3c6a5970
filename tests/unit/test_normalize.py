from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_budget.names import SQL_SYSTEMS
from otel_budget.normalize import NORMALIZE_MAX_CHARS, dialect_of, normalize_mongo, normalize_sql, shorten


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


@pytest.mark.parametrize(
    ("system", "statement", "expected"),
    [
        # MySQL/MariaDB: `"..."` is a string (ANSI_QUOTES off, the default), backslashes escape, `#` comments.
        ("mysql", 'SELECT * FROM t WHERE a = "bob@example.com"', "SELECT * FROM t WHERE a = ?"),
        ("mariadb", 'SELECT * FROM t WHERE a = "bob" AND b = "x"', "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("mysql", 'SELECT `t`.`id` FROM `t` WHERE `t`.`a` = "it\\"s bob" AND b = 1', "SELECT `t`.`id` FROM `t` WHERE `t`.`a` = ? AND b = ?"),
        ("mysql", "SELECT * FROM t WHERE a = 'it\\'s bob@example.com' AND b = 1", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("mysql", 'SELECT * FROM t WHERE a = "x""bob" AND b = 1', "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("mysql", "SELECT 1 # bob's note\nFROM t", "SELECT ? FROM t"),
        ("mysql", "SELECT 1 -- bob's note\nFROM t /* bob */", "SELECT ? FROM t"),
        ("mysql", "SELECT * FROM t WHERE a = X'CAFE' AND b = 0xBEEF AND c = b'0101' AND d = 0b11", "SELECT * FROM t WHERE a = ? AND b = ? AND c = ? AND d = ?"),
        ("mysql", "SELECT * FROM t WHERE a = '#bob' AND b = 1", "SELECT * FROM t WHERE a = ? AND b = ?"),
        # Standard SQL (PostgreSQL...): `"..."` is a name, a backslash is a character, `E'...'` escapes, `#` an operator.
        ("postgresql", 'SELECT "t"."id" FROM "t" WHERE "t"."a" = 1', 'SELECT "t"."id" FROM "t" WHERE "t"."a" = ?'),
        ("postgresql", "SELECT * FROM t WHERE a = 'C:\\' AND b = 'bob@example.com'", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("postgresql", "SELECT * FROM t WHERE a = E'it\\'s bob' AND b = 1", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("postgresql", "SELECT 5 # 3, $tag$bob's$tag$, U&'d\\0061t'", "SELECT ? # ?, ?, ?"),
        ("sqlite", "SELECT * FROM t WHERE a = 'C:\\' AND b = 2", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("mssql", "SELECT * FROM t WHERE a = N'bob' AND id = '123e4567-e89b-12d3-a456-426614174000'", "SELECT * FROM t WHERE a = ? AND id = ?"),
        # ClickHouse: `"..."` a name, backslashes escape.
        ("clickhouse", "SELECT \"a\" FROM t WHERE b = 'it\\'s bob'", 'SELECT "a" FROM t WHERE b = ?'),
    ],
)
def test_statements_are_read_by_dialect(system: str, statement: str, expected: str) -> None:
    """What `"..."`, a backslash and `#` mean depends on `db.system`; each is read as its server does."""
    assert normalize_sql(statement, system) == expected


def test_dialects() -> None:
    """Every SQL system has a dialect; an unknown one is read as standard SQL."""
    assert {dialect_of(system) for system in ("mysql", "mariadb")} == {"mysql"}
    assert {dialect_of(system) for system in ("postgresql", "sqlite", "oracle", "mssql", "other_sql", "whatever")} == {"standard"}
    assert dialect_of("cassandra") == "cql"
    assert dialect_of("clickhouse") == "clickhouse"


def test_the_same_text_is_normalised_by_each_dialect() -> None:
    """A cached normalisation is its dialect's: the MySQL reading of a text does not answer for PostgreSQL."""
    statement = 'SELECT "name" FROM t'
    assert normalize_sql(statement, "postgresql") == 'SELECT "name" FROM t'
    assert normalize_sql(statement, "mysql") == "SELECT ? FROM t"
    assert normalize_sql(statement, "postgresql") == 'SELECT "name" FROM t'


CQL_VALUES = {  # two values for each kind of CQL literal (collections of two sizes)
    "uuid": ("123e4567-e89b-12d3-a456-426614174000", "00000000-0000-4000-8000-00000000abcd"),
    "text": ("'bob@example.com'", "'it''s carol'"),
    "day": ("'2024-01-01'", "'2025-12-31'"),
    "tuple": ("(1, 2, 3)", "(7)"),
    "int": ("86400", "-5"),
    "set": ("{'a', 'b'}", "{'c'}"),
    "map": ("{'k': [1, 2], 'j': []}", "{}"),
    "bool": ("true", "FALSE"),
    "blob": ("0xCAFEBABE", "0x"),
    "list": ("[1.5, -2, 3e10]", "[4]"),
    "duration": ("1h30m", "2d"),
}
CQL_QUERIES = [  # six different CQL queries
    "SELECT * FROM users WHERE id = {uuid}",
    "SELECT name FROM users WHERE email = {text}",
    "SELECT * FROM events WHERE day = {day} AND id IN {tuple} LIMIT {int}",
    "INSERT INTO users (id, tags, prefs) VALUES ({uuid}, {set}, {map}) USING TTL {int}",
    "UPDATE users SET active = {bool}, avatar = {blob}, scores = scores + {list} WHERE id = {uuid}",
    "DELETE FROM sessions WHERE user_id = {uuid} AND started < {int} AND ttl > {duration}",
]


def _cql(template: str, choice: int) -> str:
    return template.format(**{kind: values[choice] for kind, values in CQL_VALUES.items()})


def test_cql_is_normalised_like_sql() -> None:
    """Six different CQL queries are six shapes; each with other values (and collection sizes) is the same shape."""
    shapes = set()
    for template in CQL_QUERIES:
        first, second = (normalize_sql(_cql(template, choice), "cassandra") for choice in (0, 1))
        assert first == second, template
        assert not any(value in first for values in CQL_VALUES.values() for value in values), first
        shapes.add(first)
    assert len(shapes) == 6
    assert normalize_sql(_cql(CQL_QUERIES[3], 0), "cassandra") == "INSERT INTO users (id, tags, prefs) VALUES (?) USING TTL ?"
    assert normalize_sql(_cql(CQL_QUERIES[4], 1), "cassandra") == (
        "UPDATE users SET active = ?, avatar = ?, scores = scores + ? WHERE id = ?"
    )


def test_cql_keeps_names_and_drops_comments() -> None:
    """Quoted names are the shape; `--`, `//` and `/* */` comments go; `$$...$$` strings are literals."""
    assert normalize_sql('SELECT "Name" FROM ks."Users" // bob\nWHERE k = $$bob$$ -- x', "cassandra") == (
        'SELECT "Name" FROM ks."Users" WHERE k = ?'
    )
    assert normalize_sql("SELECT * FROM t WHERE a = 'C:\\' AND b = 'bob' AND c = NaN", "cassandra") == (
        "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"
    )


# The property: a statement of clauses `c<i> = <literal>` in any SQL system's dialect (and CQL) normalises
# to exactly the clauses with `?`, whatever the literal and whatever comments sit between the clauses.
DIALECT_SYSTEMS = sorted(SQL_SYSTEMS | {"cassandra"})
_CONTENT = st.text(st.sampled_from("ab Z9'\"\\-/*#$;:?%(),.{}[]\n\t") | st.characters(codec="utf-8"), max_size=16)
_HEX = st.text("0123456789abcdefABCDEF", min_size=1, max_size=12)


def _single_quoted(content: str, dialect: str, backslash_quote: bool) -> str:
    if dialect in ("mysql", "clickhouse"):  # backslashes escape; a quote is `\'` or `''`
        content = content.replace("\\", "\\\\").replace("'", "\\'" if backslash_quote else "''")
    else:  # standard SQL and CQL: a backslash is a character, a quote is doubled
        content = content.replace("'", "''")
    return f"'{content}'"


def _literals(system: str) -> st.SearchStrategy[tuple[str, bool]]:
    """Literals of `system`'s dialect, each with whether it may stay as it is (a `"..."` where that is a name)."""
    dialect = dialect_of(system)
    backslash = st.booleans()
    string = st.builds(lambda content, quote: _single_quoted(content, dialect, quote), _CONTENT, backslash)
    uuid = st.uuids().map(str)
    choices = [
        string,
        st.integers(-(10**18), 10**18).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        _HEX.map(lambda digits: "0x" + digits),
        _HEX.map(lambda digits: f"X'{digits}'"),
        st.dates().map(lambda day: f"'{day}'"),
        st.datetimes().map(lambda moment: f"'{moment}'"),
        uuid.map(lambda text: f"'{text}'"),
        uuid,
        st.sampled_from(["%s", "TRUE", "false", "NULL"]),
        string.map(lambda text: "N" + text),
    ]
    dollar = _CONTENT.map(lambda content: "$$" + content.replace("$", "") + "$$")
    if dialect == "mysql":
        choices += [
            st.builds(lambda c, q: '"' + c.replace("\\", "\\\\").replace('"', '\\"' if q else '""') + '"', _CONTENT, backslash),
            st.text("01", min_size=1).map(lambda bits: f"B'{bits}'"),
        ]
    elif dialect == "cql":
        items = st.lists(st.one_of(string, uuid, st.sampled_from(["-1.5", "0xff", "true"])), max_size=4)
        choices += [
            items.map(lambda found: "{" + ", ".join(found) + "}"),
            items.map(lambda found: "[" + ", ".join(found) + "]"),
            items.map(lambda found: "{" + ", ".join(f"{item}: {item}" for item in found) + "}"),
            dollar,
            st.builds("{}h{}m".format, st.integers(1, 99), st.integers(1, 59)),
        ]
    if dialect == "standard":
        choices += [
            _CONTENT.map(lambda content: "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"),
            dollar,
            _CONTENT.map(lambda content: "$q$" + content.replace("$", "") + "$q$"),
        ]
    literals = st.one_of(choices).map(lambda text: (text, False))
    if dialect == "mysql":
        return literals
    name = _CONTENT.map(lambda content: ('"' + content.replace('"', '""') + '"', True))  # a name here: may stay
    return st.one_of(literals, name)


def _comment(draw: st.DrawFn, system: str) -> str:
    """Nothing, a space, or a comment of the dialect (holding quotes and comment markers of its own)."""
    text = draw(st.text(st.sampled_from("ab '\"\\-*#/$"), max_size=8))
    inside = text
    while "*/" in inside:  # one pass can make a new "*/": "**//" -> "*/", which ends the comment early
        inside = inside.replace("*/", "")
    kinds = ["", " ", f" /* {inside} */ ", f" -- {text}\n"]
    if dialect_of(system) == "mysql":
        kinds.append(f" # {text}\n")
    if dialect_of(system) == "cql":
        kinds.append(f" // {text}\n")
    return draw(st.sampled_from(kinds))


# print_blob: a failure prints the `@reproduce_failure` line that replays it. The rare failure seen twice
# in full unit runs was the generator's: a comment text "**//" became " /* */ */ " (see _comment).
@settings(max_examples=600, deadline=None, database=None, print_blob=True)
@given(st.data())
def test_no_literal_survives_in_any_dialect(data: st.DataObject) -> None:
    """Whatever the literals and comments, the normalised text is the statement's clauses with `?`."""
    system = data.draw(st.sampled_from(DIALECT_SYSTEMS), label="system")
    literals = data.draw(st.lists(_literals(system), min_size=1, max_size=4), label="literals")
    statement, expected = "SELECT c FROM t WHERE", re.escape("SELECT c FROM t WHERE")
    for number, (literal, may_stay) in enumerate(literals):
        clause = f"{' AND' if number else ''} c{number} = "
        statement += clause + literal + _comment(data.draw, system)
        expected += re.escape(clause) + (f"(?:\\?|{re.escape(literal)})" if may_stay else "\\?")
    normalised = normalize_sql(statement, system)
    assert re.fullmatch(expected, normalised), (system, statement, normalised)


@pytest.mark.parametrize(
    ("system", "statement"),
    [
        ("cockroachdb", 'SELECT c FROM t WHERE c0 = "A"""'),  # found by the property test above
        ("postgresql", 'SELECT "A""" FROM t'),
        ("mysql", "SELECT c FROM t WHERE c0 = `A```"),
        ("clickhouse", 'SELECT c FROM t WHERE c0 = "A"""'),
    ],
)
def test_a_quoted_name_followed_by_a_doubled_quote_is_read_as_one_text(system: str, statement: str) -> None:
    # `"A"""` is one quoted text holding a quote, not the name `"A"` and then an empty `""`.
    normalised = normalize_sql(statement, system)
    assert '"' not in normalised and "`" not in normalised, normalised
    assert normalised.count("?") == 1, normalised
