"""``turnledger demo``: a few realistic turns captured, priced, stored and reported, with no key and no network."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import JustifyMethod
from rich.table import Table
from rich.text import Text

from turnledger.cli.app import DatabaseUrlOption, app, console
from turnledger.cli.db import refuse_missing_sqlite_directory, run_db, shown_url
from turnledger.cli.output import OutputFormat, emit, usd
from turnledger.money import sum_costs
from turnledger.records import CallStatus, CostSource, TokenCallRecord

if TYPE_CHECKING:
    from turnledger.cli.demo_turns import DemoTurn

_STATUS_STYLE = {CallStatus.SUCCESS: "green", CallStatus.FAILURE: "red", CallStatus.ABANDONED: "yellow"}

# (command, what it shows): offered only when the command is installed in this build.
NEXT_STEPS: tuple[tuple[str, str], ...] = (
    ("report", "turnledger report --by user --since 7d"),
    ("report", "turnledger report --by model --format csv > spend.csv"),
    ("chart", "turnledger chart --by model --since 30d"),
    ("chart", "turnledger chart --by model --since 30d --output spend.png"),
    ("prices", "turnledger prices gpt-4o-mini claude-sonnet-4-5 acme-llm-7b"),
    ("credits", "turnledger credits --help"),
)


@app.command(
    # Not the docstring: typer shows a docstring's later paragraphs with its line breaks, ragged at 80 columns.
    help=(
        "Run a few realistic turns against a local fake provider, record them, and print what was captured.\n\n"
        "No API key and no network: LiteLLM's real HTTP, streaming and logging code talks to a fake provider on "
        "127.0.0.1. The turns: a chat with tool use, a streamed answer, an embedding batch, a model nobody has a "
        "price for, and a stream the caller breaks off."
    ),
    epilog=(
        "Examples:\n\n"
        "  turnledger demo\n\n"
        "  turnledger demo --database-url postgresql+asyncpg://postgres@127.0.0.1/turnledger\n\n"
        "The database is migrated first; the demo's turns are recorded with usage types chat and indexing."
    ),
)
def demo(
    database_url: DatabaseUrlOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final report.")] = False,
    history_days: Annotated[
        int,
        typer.Option(
            "--history-days",
            min=0,
            max=90,
            help="Also record this many past days of ordinary turns (backdated), for `turnledger chart`.",
        ),
    ] = 14,
) -> None:
    """Run a few realistic turns against a local fake provider, record them, and print what was captured."""
    refuse_missing_sqlite_directory(database_url)
    run_db(_demo(database_url, quiet=quiet, history_days=history_days), database_url)


async def _demo(url: str | None, *, quiet: bool, history_days: int) -> None:
    # Imported here: the store, LiteLLM and the fake provider are heavy, and other commands' --help
    # should not pay for them.
    import litellm

    from turnledger.callback import install, is_installed, uninstall
    from turnledger.cli.demo_turns import run_demo_turns, run_history_turns
    from turnledger.fake_provider import FakeProvider
    from turnledger.store.engine import make_engine, session_factory
    from turnledger.store.migrate import upgrade_async
    from turnledger.store.record import record_turn
    from turnledger.store.reports import usage_report

    began = time.perf_counter()
    since = datetime.now(UTC)
    where = shown_url(url)
    await upgrade_async(url)
    if not quiet:
        console.print(f"[bold]turnledger demo[/]\n  database: {where} (migrated)\n  provider: a local fake, no key")
    litellm.suppress_debug_info = True
    installed_here = not is_installed()
    install()
    fake = FakeProvider().start()
    today = since.date()
    try:
        turns = await run_demo_turns(fake)
        history = await run_history_turns(fake, [today - timedelta(days=d) for d in range(history_days, 0, -1)])
    finally:
        fake.stop()
        if installed_here:
            uninstall()

    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            for demo_turn in [*turns, *history]:
                await record_turn(
                    session, demo_turn.turn, usage_type=demo_turn.usage_type, created_at=demo_turn.created_at
                )
            await session.commit()
            report = await usage_report(session, "model", since=since)
    finally:
        await engine.dispose()

    if not quiet:
        for table in turn_tables(turns):
            console.print(table)
            console.print()
    emit(
        [r.to_dict() | {"cost_usd": r.cost_usd} for r in report],
        OutputFormat.TABLE,
        columns=[
            ("key", "model"),
            ("calls", "calls"),
            ("prompt_tokens", "in"),
            ("completion_tokens", "out"),
            ("cost_usd", "cost"),
            ("unpriced_calls", "unpriced"),
        ],
        title="This run, read back from the database by model",
    )
    console.print(summary_line(r for t in turns for r in t.turn.calls))
    if history and not quiet:
        console.print(
            f"\nAlso recorded: {len(history)} ordinary turns over the {history_days} days before today "
            f"({sum(len(t.turn.calls) for t in history)} calls, captured the same way, backdated; "
            "stored once however often the demo runs)."
        )
    if not quiet:
        console.print(next_steps(time.perf_counter() - began))


TURN_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("model", "left"),
    ("call", "left"),
    ("in", "right"),
    ("out", "right"),
    ("cost", "right"),
    ("source", "left"),
)


def call_cells(record: TokenCallRecord) -> list[str]:
    """One call as table cells: what it was, its tokens, its exact cost and which stage priced it."""
    kind = "stream" if record.stream else record.call_kind.value
    status = "" if record.status is CallStatus.SUCCESS else f" [{_STATUS_STYLE[record.status]}]{record.status.value}[/]"
    return [
        record.model,
        kind + status,
        f"{record.prompt_tokens:,}",
        f"{record.completion_tokens:,}",
        "[yellow]unpriced[/]" if record.cost_usd is None else usd(record.cost_usd),
        "[yellow]none[/]" if record.cost_source is CostSource.NONE else record.cost_source.value,
    ]


def turn_tables(turns: list[DemoTurn]) -> list[Table]:
    """A table per turn, the columns aligned across all of them so the turns read as one list."""
    cells = [[call_cells(r) for r in t.turn.calls] for t in turns]
    widths = [
        max([len(header), *(Text.from_markup(row[i]).cell_len for rows in cells for row in rows)])
        for i, (header, _) in enumerate(TURN_COLUMNS)
    ]
    tables = []
    for number, (demo_turn, rows) in enumerate(zip(turns, cells, strict=True), start=1):
        turn = demo_turn.turn
        table = Table(
            title=f"{number}. {demo_turn.title} [dim](user {turn.user_id}, thread {turn.thread_id})[/]",
            title_justify="left",
            caption=f"turn total: {turn_total(turn.calls)}{turn_note(turn.calls)}",
            caption_justify="left",
            header_style="bold",
            pad_edge=False,
            box=None,
        )
        for (header, justify), width in zip(TURN_COLUMNS, widths, strict=True):
            table.add_column(header, justify=justify, no_wrap=True, min_width=width)
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return tables


def turn_note(records: list[TokenCallRecord]) -> str:
    abandoned = [r for r in records if r.status is CallStatus.ABANDONED]
    if abandoned:
        estimated = all(r.cost_source is CostSource.ESTIMATED for r in abandoned)
        return "\n[dim]no end event ever came; kept as abandoned" + (
            ", input estimated, output unseen[/]" if estimated else "[/]"
        )
    if any(r.cost_usd is None for r in records):
        return "\n[dim]no price list knows this model: unpriced, not $0 (add it to a price table)[/]"
    return ""


def turn_total(records: list[TokenCallRecord]) -> str:
    total, unpriced = sum_costs(r.cost_usd for r in records)
    tokens = sum(r.total_tokens for r in records)
    calls = f"{len(records)} call{'s' * (len(records) != 1)}, {tokens:,} tokens"
    if total is None:
        return f"{calls}, cost unknown"
    return f"{calls}, {usd(total)}" + (f" + {unpriced} unpriced" if unpriced else "")


def summary_line(records: Iterable[TokenCallRecord]) -> str:
    calls = list(records)
    unpriced = sum(1 for r in calls if r.cost_usd is None)
    abandoned = sum(1 for r in calls if r.status is CallStatus.ABANDONED)
    lines = [f"[bold]All turns: {turn_total(calls)}[/]"]
    if unpriced:
        lines.append(f"  [yellow]{unpriced} unpriced[/]: cost unknown, counted apart, never added as $0")
    if abandoned:
        lines.append(f"  [yellow]{abandoned} abandoned[/]: kept, since the provider bills a stream broken off")
    return "\n".join(lines)


def next_steps(elapsed_s: float) -> str:
    installed = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    installed |= {g.name or "" for g in app.registered_groups}  # `credits` is a group of commands
    lines = [f"\n[bold]What to try next[/] [dim](demo took {elapsed_s:.1f} s)[/]"]
    lines += [f"  {example}" for command, example in NEXT_STEPS if command in installed]
    lines.append("  In your app: README.md, 'Use it in your app' (scoped_turn, record_turn)")
    return "\n".join(lines)
