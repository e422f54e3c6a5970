from __future__ import annotations

from otel_budget._table import number, render_table


def test_columns_are_aligned_two_spaces_apart() -> None:
    """Each column as wide as its widest cell; numbers right-aligned, the first column left-aligned."""
    lines = render_table(("scope", "runs", "ms"), [("GET books/", "1", "12.5"), ("task t", "10", "3")])
    assert lines == [
        "scope       runs    ms",
        "GET books/     1  12.5",
        "task t        10     3",
    ]


def test_left_aligned_columns_and_no_trailing_spaces() -> None:
    """Named columns are left-aligned; a short last cell leaves no trailing spaces."""
    lines = render_table(("a", "b", "where"), [("x", "y", "long/path"), ("xx", "yy", "p")], left_aligned={0, 2})
    assert lines == [
        "a    b  where",
        "x    y  long/path",
        "xx  yy  p",
    ]


def test_header_only() -> None:
    """No rows: the header alone."""
    assert render_table(("scope", "runs"), []) == ["scope  runs"]


def test_number() -> None:
    """Whole values without decimals, others with one."""
    assert [number(7), number(7.0), number(12.46), number(0.05)] == ["7", "7", "12.5", "0.1"]
