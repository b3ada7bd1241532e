"""Printing rows as a rich table, JSON or CSV, with money that stays exact and unpriced that stays visible.

JSON and CSV carry money as decimal strings (never floats) and an unpriced cost as ``null`` / an
empty cell; the table shows ``unpriced`` so an unknown cost can never be read as $0.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich import box
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
        pad_edge=False,
        collapse_padding=True,
    )
    render = cell or default_cell
    cells = [[render(key, row.get(key)) for key, _ in columns] for row in rows]
    for i, (key, header) in enumerate(columns):
        numeric = key.endswith(("tokens", "calls", "cost", "cost_usd", "_per_token")) or key == "calls"
        # Figures and the row's name never wrap or truncate (an elided cost is a wrong cost); other
        # text wraps between words, never inside one.
        words = [w for text in [header, *(c[i] for c in cells)] for w in Text.from_markup(text).plain.split()]
        table.add_column(
            # A figure's header breaks between words so the column is only as wide as its figures.
            header.replace(" ", "\n") if numeric and "\n" not in header else header,
            justify="right" if numeric else "left",
            no_wrap=numeric or i == 0,
            min_width=max((len(w) for w in words), default=1),
        )
    for row_cells in cells:
        table.add_row(*row_cells)
    console.print(table)


def default_cell(key: str, value: Any) -> str:
    if key.endswith("cost_usd"):
        return f"[yellow]{UNPRICED}[/]" if value is None else usd(value)
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(plain(value))


__all__ = [
    "UNPRICED",
    "FormatOption",
    "OutputFormat",
    "as_format",
    "default_cell",
    "emit",
    "per_million",
    "plain",
    "usd",
]
