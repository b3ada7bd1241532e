"""``turnledger migrate`` and ``turnledger report``: the schema, and usage breakdowns from the shell."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from turnledger.cli.app import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_SCHEMA_MISSING,
    DatabaseUrlOption,
    app,
    console,
    fail,
    parse_when,
)
from turnledger.errors import ConfigurationError, SchemaMissingError, StorageError
from turnledger.store import migrate as migrations
from turnledger.store.engine import is_schema_missing, make_engine, resolve_url, session_factory
from turnledger.store.reports import ReportBy, ReportRow, usage_report

T = TypeVar("T")

MIGRATE_HINT = "run `turnledger migrate` first (with the same --database-url)"
FORMATS = ("table", "json", "csv")
TABLE_COLUMNS = (
    ("calls", "calls"),
    ("prompt_tokens", "prompt"),
    ("completion_tokens", "completion"),
    ("cached_tokens", "cached"),
    ("cache_creation_tokens", "cache write"),
    ("reasoning_tokens", "reasoning"),
    ("total_tokens", "total"),
)


@app.command("migrate")
def migrate_command(
    database_url: DatabaseUrlOption = None,
    revision: Annotated[str, typer.Option("--revision", help="Target revision (default: the newest).")] = "head",
) -> None:
    """Create turnledger's tables, or upgrade them to this version's schema."""
    url = _resolve(database_url)
    _run(migrations.upgrade_async(url, revision), url)
    current = _run(migrations.current_revision_async(url), url)
    console.print(f"{_shown(url)} is at revision {current}", highlight=False)


@app.command("report")
def report_command(
    by: Annotated[str, typer.Option("--by", help="model, user, thread, tenant or day.")] = "model",
    since: Annotated[str | None, typer.Option("--since", help="7d, 24h, 2026-11-01... (default: all)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Exclusive end, same forms as --since.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user id.")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant id.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    database_url: DatabaseUrlOption = None,
) -> None:
    """Calls, tokens and exact cost per model, user, thread, tenant or day."""
    try:
        grouping = ReportBy(by.lower())
    except ValueError:
        fail(f"--by: {by!r} is not one of {', '.join(b.value for b in ReportBy)}", EXIT_BAD_INPUT)
    if output_format.lower() not in FORMATS:
        fail(f"--format: {output_format!r} is not one of {', '.join(FORMATS)}", EXIT_BAD_INPUT)
    start = parse_when(since, option="--since")
    end = parse_when(until, option="--until")
    url = _resolve(database_url)
    _refuse_missing_sqlite_file(url)
    rows = _run(_report(url, grouping, since=start, until=end, user_id=user, tenant_id=tenant), url)
    fmt = output_format.lower()
    if fmt == "json":
        typer.echo(json.dumps([row.to_dict() for row in rows], indent=2))
    elif fmt == "csv":
        typer.echo(_csv(rows), nl=False)
    else:
        console.print(_table(grouping, rows))


async def _report(url: URL, grouping: ReportBy, **filters: Any) -> list[ReportRow]:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            return await usage_report(session, grouping, **filters)
    finally:
        await engine.dispose()


def _table(grouping: ReportBy, rows: list[ReportRow]) -> Table:
    table = Table(title=f"usage by {grouping.value}", title_justify="left")
    table.add_column(grouping.value)
    for _, header in TABLE_COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("cost (USD)", justify="right")
    table.add_column("unpriced calls", justify="right")
    for row in rows:
        cost = "unpriced" if row.cost_usd is None else f"{row.cost_usd:f}"
        table.add_row(
            row.key if row.key is not None else "(none)",
            *[f"{getattr(row, name):,}" for name, _ in TABLE_COLUMNS],
            cost,
            f"{row.unpriced_calls:,}",
        )
    if not rows:
        table.caption = "no usage recorded in this range"
    return table


def _csv(rows: list[ReportRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = list(ReportRow.__dataclass_fields__)
    writer.writerow(header)
    for row in rows:
        data = row.to_dict()
        writer.writerow(["" if data[name] is None else data[name] for name in header])
    return out.getvalue()


def _resolve(database_url: str | None) -> URL:
    try:
        return resolve_url(database_url)
    except ConfigurationError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _refuse_missing_sqlite_file(url: URL) -> None:
    # SQLite would create an empty file and then fail on the missing tables; say so without the file.
    database = url.database
    if url.get_backend_name() == "sqlite" and database and database != ":memory:" and not Path(database).exists():
        fail(f"no database at {database}: {MIGRATE_HINT}", EXIT_SCHEMA_MISSING)


def _run(coro: Coroutine[Any, Any, T], url: URL) -> T:
    """Run ``coro``; a database problem becomes a one-line error with the documented exit code."""
    try:
        return asyncio.run(coro)
    except SchemaMissingError:
        fail(f"turnledger's tables are missing in {_shown(url)}: {MIGRATE_HINT}", EXIT_SCHEMA_MISSING)
    except ConfigurationError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except (StorageError, SQLAlchemyError, OSError) as exc:
        if is_schema_missing(exc):
            fail(f"turnledger's tables are missing in {_shown(url)}: {MIGRATE_HINT}", EXIT_SCHEMA_MISSING)
        fail(f"database {_shown(url)}: {_detail(exc)}", EXIT_FAILED)


def _detail(exc: BaseException) -> str:
    if isinstance(exc, StorageError) and exc.__cause__ is not None:
        exc = exc.__cause__
    source = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(source).strip().splitlines()
    return lines[0] if lines else type(source).__name__
