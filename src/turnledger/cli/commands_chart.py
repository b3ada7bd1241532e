"""``turnledger chart``: daily spend stacked by model (or user, thread, tenant), in the terminal or to a file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress

from turnledger.cli.app import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    DatabaseUrlOption,
    app,
    console,
    err_console,
    fail,
    is_terminal,
    parse_when,
    require_order,
)
from turnledger.cli.db import refuse_missing_sqlite_file, run_db
from turnledger.cli.output import FormatOption, OutputFormat, as_format, emit

if TYPE_CHECKING:
    from turnledger.cli.chart_data import DailySpend
    from turnledger.store.reports import ReportBy

PROGRESS_MIN_DAYS = 60
"""A range this long shows a progress bar (on a terminal only): one query runs per day."""


@app.command(
    epilog=(
        "Examples:\n\n"
        "  turnledger chart --by model --since 30d\n\n"
        "  turnledger chart --by user --since 2026-11-01 --until 2026-12-01 --output spend.png\n\n"
        "  turnledger chart --since 7d --output spend.html      (the chart and the exact figures)\n\n"
        "  turnledger chart --since 7d --format csv             (day, model, cost_usd, unpriced_calls)\n\n"
        "Days are UTC calendar days. Unpriced calls (no known price) are never drawn as $0: they are counted "
        "beside each day and in the legend. By model, spend recorded with record_token_usage (which names no "
        "model) is stacked as (no model)."
    )
)
def chart(
    by: Annotated[str, typer.Option("--by", help="Stack by model, user, thread or tenant.")] = "model",
    since: Annotated[
        str, typer.Option("--since", help="Start: 30d, 24h, 2026-11-01... (UTC day it falls on).")
    ] = "30d",
    until: Annotated[
        str | None,
        typer.Option("--until", help="Exclusive end, same forms (default: now); a day it cuts is charted whole (UTC)."),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user id.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant id.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write a .png, .svg or .html file instead.", dir_okay=False)
    ] = None,
    size: Annotated[str, typer.Option("--size", help="Image size in pixels, WIDTHxHEIGHT.")] = "1200x600",
    output_format: FormatOption = "table",
    database_url: DatabaseUrlOption = None,
) -> None:
    """Daily spend stacked by model (or user, thread, tenant): bars in the terminal, or an image file."""
    fmt = as_format(output_format)
    from turnledger.cli.chart_data import CHART_GROUPINGS
    from turnledger.cli.chart_render import FILE_SUFFIXES, parse_size

    grouping = next((g for g in CHART_GROUPINGS if g.value == by.strip().lower()), None)
    if grouping is None:
        fail(f"--by: {by!r} is not one of {', '.join(g.value for g in CHART_GROUPINGS)}", EXIT_BAD_INPUT)
    now = datetime.now(UTC)
    start = parse_when(since, now=now, option="--since") or now - timedelta(days=30)
    end = parse_when(until, now=now, option="--until") or now
    if until is None and end <= start:
        # The --until in require_order's message would be one the user never gave.
        fail(
            f"--since ({start:%Y-%m-%d %H:%M}) is after now, chart's default --until"
            f" ({end:%Y-%m-%d %H:%M} UTC): give an --until after it",
            EXIT_BAD_INPUT,
        )
    require_order(start, end)
    pixels = parse_size(size)
    if pixels is None:
        fail(f"--size: {size!r} is not WIDTHxHEIGHT in pixels, e.g. 1200x600", EXIT_BAD_INPUT)
    if output is not None:
        if output.suffix.lower() not in FILE_SUFFIXES:
            fail(f"--output: {output.name!r} must end in {', '.join(FILE_SUFFIXES)}", EXIT_BAD_INPUT)
        if not output.parent.is_dir():
            fail(f"--output: no directory {str(output.parent)!r}", EXIT_BAD_INPUT)
        _require_matplotlib()

    refuse_missing_sqlite_file(database_url)
    spend = run_db(_load(database_url, grouping, start, end, user_id=user, tenant_id=tenant), database_url)

    if output is not None:
        from turnledger.cli.chart_render import write_file

        try:
            write_file(spend, output, pixels)
        except OSError as exc:
            fail(f"--output: cannot write {str(output)!r}: {exc.strerror or exc}", EXIT_FAILED)
        written = f"wrote {output}" + ("" if output.suffix.lower() == ".html" else f" ({pixels[0]}x{pixels[1]} px)")
        console.print(written, markup=False, highlight=False, soft_wrap=True)
        return
    if fmt is not OutputFormat.TABLE:
        rows = [
            {
                "day": day,
                grouping.value: s.name,
                "cost_usd": s.cost_by_day.get(day),
                "unpriced_calls": s.unpriced_by_day.get(day, 0),
            }
            for day in spend.days
            for s in spend.series
            if day in s.cost_by_day or day in s.unpriced_by_day
        ]
        emit(rows, fmt, columns=[(k, k) for k in ("day", grouping.value, "cost_usd", "unpriced_calls")])
        return
    from turnledger.cli.chart_render import terminal_lines

    if not spend.series:
        console.print(f"no usage recorded from {spend.days[0]} to {spend.days[-1]} (UTC)")
        return
    for line in terminal_lines(spend, width=console.width):
        console.print(line, soft_wrap=True)


async def _load(url: str | None, grouping: ReportBy, start: datetime, end: datetime, **filters: Any) -> DailySpend:
    from turnledger.cli.chart_data import daily_spend, day_range
    from turnledger.store.engine import make_engine, session_factory

    days = day_range(start, end)
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            with Progress(console=err_console, transient=True, disable=not is_terminal()) as progress:
                task = progress.add_task("reading days", total=len(days), visible=len(days) >= PROGRESS_MIN_DAYS)
                return await daily_spend(session, grouping, days, on_day=lambda: progress.advance(task), **filters)
    finally:
        await engine.dispose()


def _require_matplotlib() -> None:
    try:
        import matplotlib
    except ImportError:
        fail("--output needs matplotlib: pip install 'turnledger[chart]'", EXIT_FAILED)
    # Files only: never a window, never a display.
    matplotlib.use("Agg")
