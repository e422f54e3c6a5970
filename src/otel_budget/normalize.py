"""Statement normalisation: literals become `?`, so repeats can be counted and nothing private is stored.

SQL is read by dialect, since `db.system` says which: what a `"..."` is (a string in MySQL, a name in
standard SQL), whether a backslash escapes a quote, which comments there are (docs/reference.md,
"Normalisation"). Cassandra's CQL is read like SQL, with its own literals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from otel_budget.names import SQL_SYSTEMS, STATEMENT_MAX_CHARS

__all__ = ["SQL_CACHES", "dialect_of", "normalize_mongo", "normalize_sql", "shorten"]


def _sql_tokens(*, double_quoted_strings: bool, backslash_escapes: bool, hash_comments: bool, cql: bool) -> re.Pattern[str]:
    """One pass, left to right, so a `--` or `/*` inside a literal is part of the literal and a quote
    inside a comment is part of the comment. A literal left open (a statement cut short, an escape
    read differently from the server) runs to the end: more is hidden, never less.

    Speed: every alternative starts with one character or one class of them (no `re.I`), and any
    look-behind comes after it: `re` skips such an alternative at a position with one test.
    `_sql_token` tells comments (groups `c*`) and kept names (`n*`) by `lastgroup`.
    """
    # A quoted body: doubled quotes always, backslash escapes where the dialect has them (unrolled loops).
    single = r"[^'\\]*(?:(?:\\.|'')[^'\\]*)*" if backslash_escapes else r"[^']*(?:''[^']*)*"
    double = r'[^"\\]*(?:(?:\\.|"")[^"\\]*)*' if double_quoted_strings and backslash_escapes else r'[^"]*(?:""[^"]*)*'
    tokens = [r"/(?P<c1>\*.*?(?:\*/|\Z))", r"-(?P<c2>-[^\n]*)"]
    if hash_comments:
        tokens.append(r"\#(?P<c3>[^\n]*)")
    if cql:
        tokens.append(r"/(?P<c4>/[^\n]*)")
    # Identifier-like quoted names are the shape: kept; not when a doubled quote follows (`"A"""` is one
    # quoted text holding a quote, read whole below).
    tokens.append(r"`(?P<n1>[A-Za-z_][\w$]*`)(?!`)")
    if not double_quoted_strings:
        tokens.append(r'"(?P<n2>[A-Za-z_][\w$]*")(?!")')
    if not backslash_escapes and not cql:
        tokens.append(r"[Ee](?<![\w$][Ee])'[^'\\]*(?:(?:\\.|'')[^'\\]*)*(?:'|\Z)")  # PostgreSQL's E'...' escapes
    tokens += [
        rf"'{single}(?:'|\Z)",  # string literals, and b'', x'', N'', U&'' ones
        rf"[BbXxNnUu]&?'{single}(?:'|\Z)",
        rf'"{double}(?:"|\Z)',  # a `"..."` that is not a plain name: a string, or a name that may be data
        r"`[^`]*(?:``[^`]*)*(?:`|\Z)",
        r"\$(?<![\w$]\$)(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z)",  # dollar-quoted strings
        r"[0-9A-Fa-f](?<![\w$][0-9A-Fa-f])[0-9A-Fa-f]{7}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\b",  # bare UUIDs
    ]
    if cql:  # durations: 1h30m
        unit = r"(?i:mo|ms|us|µs|ns|[ywdhms])"
        tokens += [rf"[0-9](?<![\w.$][0-9])\d*{unit}(?:\d+{unit})*\b", rf"-(?<![\w.$]-)\d+{unit}(?:\d+{unit})*\b"]
    number = r"(?:0[xX][0-9a-fA-F]*|0[bB][01]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)\b"
    tokens += [
        rf"[0-9](?<![\w.$][0-9])(?:(?<=0)[xX][0-9a-fA-F]*|(?<=0)[bB][01]+|\d*(?:\.\d*)?(?:[eE][-+]?\d+)?)\b",  # numbers
        r"\.(?<![\w.$]\.)\d+(?:[eE][-+]?\d+)?\b",
        rf"-(?<![\w.$]-){number}",
        r"%\(\w+\)s | %s | \$\d+ | :(?<![:\w]:)\w+ | \?",  # driver placeholders
        r"[Tt](?<![\w$][Tt])[Rr][Uu][Ee]\b | [Ff](?<![\w$][Ff])[Aa][Ll][Ss][Ee]\b | [Nn](?<![\w$][Nn])[Uu][Ll][Ll]\b",
    ]
    if cql:
        tokens.append(r"[Nn](?<![\w$][Nn])[Aa][Nn]\b | [Ii](?<![\w$][Ii])[Nn][Ff][Ii][Nn][Ii][Tt][Yy]\b")
    return re.compile(" | ".join(tokens), re.S | re.X)


class _Dialect(NamedTuple):
    name: str
    tokens: re.Pattern[str]
    collections: bool  # CQL: `{...}` and `[...]` literals of any size are one value
    cache: dict[str, str]  # raw text -> normalised text


def _dialect(name: str, **reading: bool) -> _Dialect:
    flags = {"double_quoted_strings": False, "backslash_escapes": False, "hash_comments": False, "cql": False}
    return _Dialect(name, _sql_tokens(**{**flags, **reading}), reading.get("cql", False), {})


# Standard SQL: `"..."` is a name, a backslash is a character (PostgreSQL's default since 9.1; psycopg
# sends `E'...'` when a server has `standard_conforming_strings` off), `E'...'`, `$$...$$`.
_STANDARD = _dialect("standard")
# MySQL, MariaDB: `"..."` is a string (it is a name only under ANSI_QUOTES: read as a string, the safe
# side), backslashes escape, `#` comments. Spanner's GoogleSQL and Hive quote strings the same way.
_MYSQL = _dialect("mysql", double_quoted_strings=True, backslash_escapes=True, hash_comments=True)
_CLICKHOUSE = _dialect("clickhouse", backslash_escapes=True)  # `"..."` a name, backslashes escape
_CQL = _dialect("cql", cql=True)
_DIALECTS: dict[str, _Dialect] = {system: _STANDARD for system in SQL_SYSTEMS}
_DIALECTS.update(
    {system: _MYSQL for system in ("mysql", "mariadb", "spanner", "gcp.spanner", "hive")},
    clickhouse=_CLICKHOUSE,
    cassandra=_CQL,
)
# `db.system` -> the cache of its dialect's normalisations: the processor reads it directly, so a
# repeated statement costs two dict lookups and no call. Systems not here are not normalised as SQL.
SQL_CACHES: Mapping[str, dict[str, str]] = {system: dialect.cache for system, dialect in _DIALECTS.items()}
_MONGO_CACHE: dict[str, str] = {}
# The compiled count's: a MongoDB span's statement text -> (its operation attribute, its collection attribute,
# the key `tally.statement_key` gave for them), filled by `_speedups.c` (at most MONGO_KEYS_MAX entries).
MONGO_KEYS: dict[str, tuple[Any, Any, str]] = {}
MONGO_KEYS_MAX = 1024
_ALL_CACHES: tuple[dict[str, Any], ...] = (
    _STANDARD.cache, _MYSQL.cache, _CLICKHOUSE.cache, _CQL.cache, _MONGO_CACHE, MONGO_KEYS,
)  # fmt: skip
_CACHE_MAX = 4096  # entries in all caches together
# Statements longer than this are not cached (the cache is bounded in bytes too, ~4096 * 2 KiB)
# and only their first NORMALIZE_MAX_CHARS are normalised, so the cost per span stays bounded.
CACHE_MAX_STATEMENT = 2048
NORMALIZE_MAX_CHARS = 4096

_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_VALUES_LIST = re.compile(r"(\(\?\))(?:\s*,\s*\(\?\))+")
_SPACES = re.compile(r"\s+")
# A savepoint's name is per use (Django's `s140217_x3`): the statement's shape is `SAVEPOINT ?`.
_SAVEPOINT_NAME = re.compile(r"\b(SAVEPOINT)\s+(?:\"[^\"]*\"|`[^`]*`|\w+)", re.I)
# CQL collection literals once their values are `?`: a list or set `[?, ?]` `{?, ?}`, a map `{?: ?}`.
_CQL_COLLECTION = re.compile(r"\[\s*(?:\?(?:\s*,\s*\?)*\s*)?\]|\{\s*(?:\?(?:\s*[:,]\s*\?)*\s*)?\}")


def dialect_of(system: str) -> str:
    """The dialect `system`'s statements are read in: `standard`, `mysql`, `clickhouse` or `cql`."""
    return _DIALECTS.get(system, _STANDARD).name


def normalize_sql(statement: str, system: str = "other_sql") -> str:
    """`SELECT * FROM t WHERE id = 42 AND name IN ('a', 'b')` -> `SELECT * FROM t WHERE id = ? AND name IN (?)`.

    Args:
        system: the statement's `db.system`; it picks the dialect (standard SQL for one not known).
    """
    dialect = _DIALECTS.get(system, _STANDARD)
    cached = dialect.cache.get(statement)
    if cached is not None:
        return cached
    cut = len(statement) > NORMALIZE_MAX_CHARS
    text = dialect.tokens.sub(_sql_token, statement[:NORMALIZE_MAX_CHARS] if cut else statement)
    text = _SPACES.sub(" ", text).strip()
    if dialect.collections:
        for _ in range(4):  # nested collections, innermost first; bounded
            text, found = _CQL_COLLECTION.subn("?", text)
            if not found:
                break
    text = _IN_LIST.sub("(?)", text)
    text = _VALUES_LIST.sub(r"\1", text)
    text = _SAVEPOINT_NAME.sub(r"\1 ?", text)
    if cut:
        text += " …"
    return _remember(dialect.cache, statement, text)


def _sql_token(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind is None or kind == "tag":
        return "?"
    return " " if kind[0] == "c" else match.group()  # a comment, or a name kept


_MONGO_LITERALS = re.compile(
    r"""
    (?:ObjectId|ISODate|Timestamp|UUID|Decimal128|datetime\.datetime|Binary)\([^()]*(?:\([^()]*\)[^()]*)*\)
    | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(?P<key>\s*:)?   # a string; a key when ':' follows
    | (?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b
    | \b(?:True|False|None|true|false|null)\b
    """,
    re.X,
)
_MONGO_LIST = re.compile(r"\[\s*\?(?:\s*,\s*\?)*\s*\]")
# `$or`/`$and` arrays of clauses of one shape collapse like `$in` lists: `[{"a": ?}, {"a": ?}]` -> `[{"a": ?}]`.
_MONGO_SAME_CLAUSES = re.compile(r"\[\s*(\{(?:[^{}\[\]]|\{[^{}\[\]]*\})*\})(?:\s*,\s*\1)+\s*\]")


def normalize_mongo(operation: str, collection: str, statement: str) -> str:
    """`find` on `users` with `{'email': 'a@b.c'}` -> `find users {'email': ?}` (the filter's shape only)."""
    key = f"{operation}\0{collection}\0{statement}"
    cached = _MONGO_CACHE.get(key)
    if cached is not None:
        return cached
    shape = ""
    brace = statement.find("{")
    if brace >= 0:
        shape = _MONGO_LITERALS.sub(_mongo_literal, statement[brace:])
        shape = _MONGO_LIST.sub("[?]", _SPACES.sub(" ", shape))
        shape = _MONGO_SAME_CLAUSES.sub(r"[\1]", shape)
    text = " ".join(part for part in (operation, collection, shape) if part)
    return _remember(_MONGO_CACHE, key, text)


def _mongo_literal(match: re.Match[str]) -> str:
    return match.group(0) if match.group("key") else "?"  # key names are the shape; values are data


_SELECT_LIST = re.compile(r"^(SELECT\s+(?:DISTINCT\s+)?).+?\s(FROM\s)", re.S | re.I)


def shorten(statement: str, limit: int = STATEMENT_MAX_CHARS) -> str:
    """A normalised statement cut to `limit` characters for export, keeping what identifies it.

    Django's N+1 statements start with a long column list: it becomes `…` first, so the
    `FROM … WHERE …` that tells which loop is at fault survives; then the middle is cut.
    """
    if len(statement) <= limit:
        return statement
    statement = _SELECT_LIST.sub(r"\1… \2", statement, count=1)
    if len(statement) <= limit:
        return statement
    head = (limit - 3) // 2
    return f"{statement[:head]} … {statement[-(limit - 3 - head):]}"


def _remember(cache: dict[str, str], key: str, value: str) -> str:
    if len(key) > CACHE_MAX_STATEMENT:
        return value
    if sum(map(len, _ALL_CACHES)) >= _CACHE_MAX:
        for each in _ALL_CACHES:
            each.clear()
    cache[key] = value
    return value
