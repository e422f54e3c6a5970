"""Plain-text tables and numbers, as the pytest plugin and `otel-budget report` print them."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["number", "render_table"]


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left_aligned: Collection[int] = (0,)) -> list[str]:
    """The header line, then one line per row: columns two spaces apart, right-aligned but for `left_aligned`."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [cell.ljust(w) if i in left_aligned else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return lines


def number(value: float) -> str:
    """A whole value without decimals, any other with one: `7`, `12.5`."""
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
