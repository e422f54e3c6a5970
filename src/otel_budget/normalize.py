"""Statement normalisation: literals become `?`, so repeats can be counted and nothing private is stored."""

from __future__ import annotations

import re

from otel_budget.names import STATEMENT_MAX_CHARS

__all__ = ["SQL_CACHE", "normalize_mongo", "normalize_sql", "shorten"]

# One pass, left to right, so a `--` or `/*` inside a literal is part of the literal and a quote
# inside a comment is part of the comment. A literal left open (a statement cut short, an escape
# we read differently from the server) runs to the end: more is hidden, never less.
_SQL_TOKENS = re.compile(
    r"""
    (?P<comment>/\*.*?(?:\*/|\Z) | --[^\n]*)
    | (?P<ident>"[A-Za-z_][\w$]*" | `[A-Za-z_][\w$]*`)  # identifier-like quoted names are the shape: kept
    | [EeBbXxNnUu]?&?'(?:[^'\\]|\\.|'')*(?:'|\Z)  # string literals (backslash escapes honoured)
    | "(?:[^"\\]|\\.|"")*(?:"|\Z) | `[^`]*(?:`|\Z)  # any other quoted text (MySQL strings): data
    | \$(?P<tag>\w*)\$.*?(?:\$(?P=tag)\$|\Z)     # dollar-quoted strings
    | (?<![\w.$])-?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)\b  # numbers
    | %\(\w+\)s | %s | \$\d+ | (?<![:\w]):\w+ | \?   # driver placeholders
    | \b(?:TRUE|FALSE|NULL)\b
    """,
    re.S | re.X | re.I,
)
_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_VALUES_LIST = re.compile(r"(\(\?\))(?:\s*,\s*\(\?\))+")
_SPACES = re.compile(r"\s+")
# A savepoint's name is per use (Django's `s140217_x3`): the statement's shape is `SAVEPOINT ?`.
_SAVEPOINT_NAME = re.compile(r"\b(SAVEPOINT)\s+(?:\"[^\"]*\"|`[^`]*`|\w+)", re.I)

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

# Raw text -> normalised text, per kind (no tuple key to build per lookup); 4096 entries in all.
# The processor reads SQL_CACHE directly: a repeated statement costs one dict lookup, no call.
SQL_CACHE: dict[str, str] = {}
_SQL_CACHE = SQL_CACHE
_MONGO_CACHE: dict[str, str] = {}
_CACHE_MAX = 4096
# Statements longer than this are not cached (the cache is bounded in bytes too, ~4096 * 2 KiB)
# and only their first NORMALIZE_MAX_CHARS are normalised, so the cost per span stays bounded.
CACHE_MAX_STATEMENT = 2048
NORMALIZE_MAX_CHARS = 4096


def normalize_sql(statement: str) -> str:
    """`SELECT * FROM t WHERE id = 42 AND name IN ('a', 'b')` -> `SELECT * FROM t WHERE id = ? AND name IN (?)`."""
    cached = _SQL_CACHE.get(statement)
    if cached is not None:
        return cached
    cut = len(statement) > NORMALIZE_MAX_CHARS
    text = _SQL_TOKENS.sub(_sql_token, statement[:NORMALIZE_MAX_CHARS] if cut else statement)
    text = _SPACES.sub(" ", text).strip()
    text = _IN_LIST.sub("(?)", text)
    text = _VALUES_LIST.sub(r"\1", text)
    text = _SAVEPOINT_NAME.sub(r"\1 ?", text)
    if cut:
        text += " …"
    return _remember(_SQL_CACHE, statement, text)


def _sql_token(match: re.Match[str]) -> str:
    if match.group("comment") is not None:
        return " "
    ident = match.group("ident")
    return ident if ident is not None else "?"


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
    if len(_SQL_CACHE) + len(_MONGO_CACHE) >= _CACHE_MAX:
        _SQL_CACHE.clear()
        _MONGO_CACHE.clear()
    cache[key] = value
    return value
