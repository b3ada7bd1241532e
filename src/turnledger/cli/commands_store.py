"""``turnledger migrate`` and ``turnledger report``: the schema, and usage breakdowns from the shell."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated, Any

import typer
from sqlalchemy.engine import URL

from turnledger.cli.app import (
    EXIT_BAD_INPUT,
    DatabaseUrlOption,
    app,
    console,
    err_console,
    fail,
    is_terminal,
    parse_when,
    require_order,
)
from turnledger.cli.db import refuse_missing_sqlite_directory, refuse_missing_sqlite_file, run_db, shown_url, url_source
from turnledger.cli.output import FormatOption, OutputFormat, as_format, emit
from turnledger.errors import ConfigurationError
from turnledger.store import migrate as migrations
from turnledger.store.engine import make_engine, resolve_url, session_factory
from turnledger.store.reports import ReportBy, ReportRow, key_label, usage_report

ALWAYS_SHOWN = ("calls", "prompt_tokens", "completion_tokens", "total_tokens")
TABLE_COLUMNS = (
    ("calls", "calls"),
    ("prompt_tokens", "prompt"),
    ("completion_tokens", "completion"),
    ("cached_tokens", "cached"),
    ("cache_creation_tokens", "cache write"),
    ("reasoning_tokens", "reasoning"),
    ("total_tokens", "total"),
)


@app.command(
    "migrate",
    epilog=(
        "Examples:\n\n"
        "  turnledger migrate                  (./turnledger.db, or $TURNLEDGER_DATABASE_URL)\n\n"
        "  turnledger migrate --database-url postgresql://app@db.internal/app"
    ),
)
def migrate_command(
    database_url: DatabaseUrlOption = None,
    revision: Annotated[str, typer.Option("--revision", help="Target revision (default: the newest).")] = "head",
) -> None:
    """Create turnledger's tables, or upgrade them to this version's schema."""
    url = _resolve(database_url)
    # Errors are reported against the option as given: whether the URL came from it says what to fix.
    refuse_missing_sqlite_directory(database_url)
    if revision != "head":
        current = run_db(migrations.current_revision_async(url), database_url)
        if migrations.is_past(current, revision):
            fail(
                f"{shown_url(url)} is at revision {current}, past {revision}: migrate only upgrades, "
                "nothing was done (turnledger.store.migrate.downgrade goes back, and drops what the later "
                "revisions added)",
                EXIT_BAD_INPUT,
            )
    run_db(migrations.upgrade_async(url, revision), database_url)
    current = run_db(migrations.current_revision_async(url), database_url)
    # One line however long the URL (no wrap at 80 columns), and a URL is not markup.
    console.print(f"{shown_url(url)} is at revision {current}", markup=False, highlight=False, soft_wrap=True)


@app.command(
    "report",
    epilog=(
        "Examples:\n\n"
        "  turnledger report --by model --since 7d\n\n"
        "  turnledger report --by user --since 2026-11-01 --until 2026-12-01 --format csv > november.csv\n\n"
        "  turnledger report --by day --user u-42 --format json\n\n"
        "Days are UTC calendar days (a turn counts on the day it opened), whatever the database's time zone. "
        "Unpriced calls (no known price) are counted apart: a group with only unpriced calls has no cost, not $0. "
        "By model, spend recorded with record_token_usage (which names no model) is the group (no model): "
        "every breakdown adds up to the same total."
    ),
)
def report_command(
    by: Annotated[str, typer.Option("--by", help="model, user, thread, tenant or day (UTC).")] = "model",
    since: Annotated[str | None, typer.Option("--since", help="7d, 24h, 2026-11-01... (default: all)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Exclusive end, same forms as --since.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user id.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant id.")] = None,
    thread: Annotated[str | None, typer.Option("--thread", help="Only this thread id.")] = None,
    usage_type: Annotated[
        str | None, typer.Option("--usage-type", help="Only this usage type (chat, batch...).")
    ] = None,
    output_format: FormatOption = "table",
    database_url: DatabaseUrlOption = None,
) -> None:
    """Calls, tokens and exact cost per model, user, thread, tenant or day."""
    try:
        grouping = ReportBy(by.lower())
    except ValueError:
        fail(f"--by: {by!r} is not one of {', '.join(b.value for b in ReportBy)}", EXIT_BAD_INPUT)
    fmt = as_format(output_format)
    start = parse_when(since, option="--since")
    end = parse_when(until, option="--until")
    require_order(start, end)
    url = _resolve(database_url)
    refuse_missing_sqlite_file(database_url)
    # One query, so no measurable progress: a spinner on a terminal, nothing when piped.
    with err_console.status("reading usage", spinner="dots") if is_terminal() else nullcontext():
        filters = {"user_id": user, "tenant_id": tenant, "thread_id": thread, "usage_type": usage_type}
        rows = run_db(_report(url, grouping, since=start, until=end, **filters), database_url)
    if fmt is OutputFormat.TABLE:
        _table(grouping, rows)
    else:
        names = _fields(grouping)
        emit([{n: d[n] for n in names} for d in (r.to_dict() for r in rows)], fmt, columns=[(n, n) for n in names])


def _fields(grouping: ReportBy) -> list[str]:
    """A row's fields in JSON and CSV: ``key``, then (per thread only) its ``user_id``, then the figures."""
    figures = [n for n in ReportRow.__dataclass_fields__ if n not in ("key", "user_id")]
    return ["key", *(["user_id"] if grouping is ReportBy.THREAD else []), *figures]


async def _report(url: URL, grouping: ReportBy, **filters: Any) -> list[ReportRow]:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            return await usage_report(session, grouping, **filters)
    finally:
        await engine.dispose()


def _table(grouping: ReportBy, rows: list[ReportRow]) -> None:
    # At 80 columns every figure must stay whole: token kinds no row used are left out.
    used = [(n, header) for n, header in TABLE_COLUMNS if n in ALWAYS_SHOWN or any(getattr(r, n) for r in rows)]
    # Per thread, the user beside it: two users' "main" threads are two rows, and say whose each is.
    whose = [("user_id", "user")] if grouping is ReportBy.THREAD else []
    emit(
        [
            {**r.to_dict(), "key": key_label(grouping, r.key), "user_id": key_label(ReportBy.USER, r.user_id)}
            | {"cost_usd": r.cost_usd}
            for r in rows
        ],
        OutputFormat.TABLE,
        columns=[
            *whose,
            ("key", grouping.value),
            *used,
            ("cost_usd", "cost (USD)"),
            ("unpriced_calls", "unpriced calls"),
        ],
        # A bill for a day is argued from this title: it says whose day (the chart's says so too).
        title=f"usage by {grouping.value}" + (" (UTC)" if grouping is ReportBy.DAY else ""),
    )
    if not rows:
        console.print("no usage recorded in this range")


def _resolve(database_url: str | None) -> URL:
    try:
        return resolve_url(database_url)
    except ConfigurationError as exc:
        fail(f"{exc} ({url_source(database_url)})", EXIT_BAD_INPUT)
