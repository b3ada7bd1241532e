"""Printing rows as a rich table, JSON or CSV, with money that stays exact and unpriced that stays visible.

JSON and CSV carry money as decimal strings (never floats) and an unpriced cost as ``null`` / an
empty cell; the table shows ``unpriced`` so an unknown cost can never be read as $0.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from turnledger.cli.app import EXIT_BAD_INPUT, console, fail

UNPRICED = "unpriced"


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


FormatOption = Annotated[str, typer.Option("--format", "-f", help="table (for people), json or csv (for scripts).")]
"""Read with :func:`as_format`, which answers a bad value with a one-line error like every other flag."""


def as_format(text: str) -> OutputFormat:
    try:
        return OutputFormat(text.strip().lower())
    except ValueError:
        fail(f"--format: {text!r} is not one of {', '.join(f.value for f in OutputFormat)}", EXIT_BAD_INPUT)


def usd(value: Decimal | None, *, min_places: int = 0) -> str:
    """``$0.000405``: exact, in fixed point (never ``4.05E-4``), at least ``min_places`` decimals;
    ``unpriced`` for ``None``."""
    if value is None:
        return UNPRICED
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    whole, _, frac = text.partition(".")
    if len(frac) < min_places:
        frac = frac.ljust(min_places, "0")
    text = f"{whole}.{frac}" if frac else whole
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Unicode's bidirectional controls: shown raw, they reorder what follows, so an id reads as another.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """Data (an id, a note) as it may reach a terminal: control characters, which could move the cursor
    or recolour it, written as visible ``\\xNN`` escapes, and bidirectional controls as ``\\uNNNN``."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def as_cell(value: Any) -> str:
    """A data value as a table cell: printed as written, never read as rich markup (``[/]`` in an id)."""
    return escape(shown(str(plain(value))))


def per_million(rate: Decimal | None) -> str:
    """A per-token rate as dollars per million tokens, the unit price lists use (``$0.60``)."""
    return "-" if rate is None else usd(rate * 1_000_000, min_places=2)


def plain(value: Any) -> Any:
    """A JSON-safe value: Decimal as a string, datetimes as ISO-8601, enums as their value."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def emit(
    rows: Sequence[Mapping[str, Any]],
    fmt: OutputFormat,
    *,
    columns: Sequence[tuple[str, str]],
    title: str | None = None,
    cell: Any = None,
) -> None:
    """Print ``rows``; ``columns`` is ``(key, header)``; ``cell(key, value)`` renders a table cell."""
    if fmt is OutputFormat.JSON:
        sys.stdout.write(json.dumps([plain(dict(r)) for r in rows], indent=2) + "\n")
        return
    if fmt is OutputFormat.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([key for key, _ in columns])
        for row in rows:
            writer.writerow(["" if row.get(key) is None else plain(row.get(key)) for key, _ in columns])
        return
    # A light frame: at 80 columns the figures need the width more than the borders do.
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    render = cell or default_cell
    cells = [[render(key, row.get(key)) for key, _ in columns] for row in rows]
    give = 0  # how much narrower the text columns may fold, at most
    for i, (key, header) in enumerate(columns):
        numeric = key.endswith(("tokens", "calls", "cost", "cost_usd", "_per_token")) or key == "calls"
        texts = [Text.from_markup(text).plain for text in [header, *(c[i] for c in cells)]]
        if numeric:
            # A figure never wraps or shrinks (an elided cost is a wrong cost); its header breaks
            # between words so the column is only as wide as its figures.
            table.add_column(
                header.replace(" ", "\n") if "\n" not in header else header,
                justify="right",
                no_wrap=True,
                min_width=max((len(w) for t in texts for w in t.split()), default=1),
            )
        else:
            # Text, the row's name too, wraps between words and folds a word longer than its column.
            table.add_column(header, overflow="fold")
            # In terminal columns: a CJK character takes two.
            widest = max((cell_len(line) for t in texts for line in t.splitlines()), default=0)
            give += max(0, widest - TEXT_MIN_WIDTH)
    for row_cells in cells:
        table.add_row(*row_cells)
    console.print(_AtWidth(table, _table_width(table, give)), crop=False)


TEXT_MIN_WIDTH = 12
"""A text column (a model name, a user id) folds down to this many characters, no fewer."""

_UNBOUNDED = 10_000


def _table_width(table: Table, give: int) -> int:
    natural = Measurement.get(console, console.options.update_width(_UNBOUNDED), table).maximum
    if not console.is_terminal:
        # Piped or redirected: nothing to fit, and a file or grep needs every row on one line.
        return natural
    # The terminal's width if the text columns can fold into it; wider still rather than cut a
    # figure (the terminal then wraps the long lines, every digit intact).
    return max(min(console.width, natural), natural - give)


class _AtWidth:
    """Renders ``renderable`` at exactly ``width`` columns, even wider than the console."""

    def __init__(self, renderable: Table, width: int) -> None:
        self.renderable = renderable
        self.width = width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from console.render(self.renderable, options.update_width(self.width))


def default_cell(key: str, value: Any) -> str:
    if key.endswith("cost_usd"):
        return f"[yellow]{UNPRICED}[/]" if value is None else usd(value)
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return as_cell(value)


__all__ = [
    "UNPRICED",
    "FormatOption",
    "OutputFormat",
    "as_cell",
    "as_format",
    "default_cell",
    "emit",
    "per_million",
    "plain",
    "shown",
    "usd",
]
