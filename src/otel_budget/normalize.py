"""Statement normalisation: literals become `?`, so repeats can be counted and nothing private is stored."""

from __future__ import annotations

import re

from otel_budget.names import STATEMENT_MAX_CHARS

__all__ = ["SQL_CACHE", "normalize_mongo", "normalize_sql", "truncate"]

_COMMENTS = re.compile(r"/\*.*?\*/|--[^\n]*", re.S)
_SQL_LITERALS = re.compile(
    r"""
    [EeBbXxNn]?'(?:[^']|'')*'          # string literals, E'...', B'...', X'...', N'...'
    | \$(?P<tag>\w*)\$.*?\$(?P=tag)\$  # dollar-quoted strings
    | (?<![\w.$])-?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)\b  # numbers
    | %\(\w+\)s | %s | \$\d+ | (?<![:\w]):\w+ | \?   # driver placeholders
    | \b(?:TRUE|FALSE|NULL)\b
    """,
    re.S | re.X | re.I,
)
_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_VALUES_LIST = re.compile(r"(\(\?\))(?:\s*,\s*\(\?\))+")
_SPACES = re.compile(r"\s+")

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

# Raw text -> normalised text, per kind (no tuple key to build per lookup); 4096 entries in all.
# The processor reads SQL_CACHE directly: a repeated statement costs one dict lookup, no call.
SQL_CACHE: dict[str, str] = {}
_SQL_CACHE = SQL_CACHE
_MONGO_CACHE: dict[str, str] = {}
_CACHE_MAX = 4096


def normalize_sql(statement: str) -> str:
    """`SELECT * FROM t WHERE id = 42 AND name IN ('a', 'b')` -> `SELECT * FROM t WHERE id = ? AND name IN (?)`."""
    cached = _SQL_CACHE.get(statement)
    if cached is not None:
        return cached
    text = _COMMENTS.sub(" ", statement)
    text = _SQL_LITERALS.sub("?", text)
    text = _SPACES.sub(" ", text).strip()
    text = _IN_LIST.sub("(?)", text)
    text = _VALUES_LIST.sub(r"\1", text)
    return _remember(_SQL_CACHE, statement, text)


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
    text = " ".join(part for part in (operation, collection, shape) if part)
    return _remember(_MONGO_CACHE, key, text)


def _mongo_literal(match: re.Match[str]) -> str:
    return match.group(0) if match.group("key") else "?"  # key names are the shape; values are data


def truncate(statement: str, limit: int = STATEMENT_MAX_CHARS) -> str:
    return statement if len(statement) <= limit else statement[: limit - 1] + "…"


def _remember(cache: dict[str, str], key: str, value: str) -> str:
    if len(_SQL_CACHE) + len(_MONGO_CACHE) >= _CACHE_MAX:
        _SQL_CACHE.clear()
        _MONGO_CACHE.clear()
    cache[key] = value
    return value
