"""``turnledger replay``: write the turns waiting in a BatchWriter outbox to the database, by hand.

Safe to run twice, and next to running writers: rows already stored are skipped by ``turn_id``, a
live writer's segments are left to it, and two replays never take the same writer's segments.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from turnledger.cli.app import (
    EXIT_BAD_INPUT,
    EXIT_SET_ASIDE,
    DatabaseUrlOption,
    app,
    console,
    err_console,
    fail,
    is_terminal,
)
from turnledger.cli.db import refuse_missing_sqlite_file, run_db
from turnledger.cli.library_warnings import library_warnings

if TYPE_CHECKING:
    from turnledger.store.replay import ProgressFn, ReplayReport

OutboxOption = Annotated[
    Path | None,
    typer.Option(
        "--outbox",
        help="An outbox directory or one segment file (default: $TURNLEDGER_OUTBOX_DIR, else ./turnledger-outbox).",
        show_default=False,
    ),
]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  turnledger replay                  (./turnledger-outbox, or $TURNLEDGER_OUTBOX_DIR)\n\n"
        "  turnledger replay --outbox /var/lib/app/turnledger-outbox --database-url postgresql://app@db/app\n\n"
        "Safe to run twice and next to running writers: stored turns are skipped, live writers' files left alone."
    )
)
def replay(outbox: OutboxOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Write the turns left in an outbox (by writers that stopped or could not reach the database)."""
    from turnledger.config import outbox_dir
    from turnledger.store.outbox import segment_writer
    from turnledger.store.replay import pending_segments

    target = outbox_dir(outbox)
    try:
        is_file = target.is_file()
    except OSError as exc:  # pathlib answers False for a missing path, but raises for one it cannot look up
        fail(f"--outbox: {target}: {exc.strerror}", EXIT_BAD_INPUT)
    if is_file:
        if segment_writer(target) is None:
            fail(f"--outbox: {target} is not an outbox segment (<writer>.<NNNNNN>.jsonl)", EXIT_BAD_INPUT)
        files: list[Path] | None = [target]
        directory = target.parent
    elif target.is_dir() or outbox is None:
        files, directory = None, target
    else:
        fail(f"--outbox: {target} does not exist", EXIT_BAD_INPUT)
    # Before looking for work: a mistyped URL is reported today, not on the day something is waiting.
    refuse_missing_sqlite_file(database_url)
    candidates = files if files is not None else pending_segments(directory)
    if not candidates:
        console.print(f"nothing to replay in {directory}", highlight=False)
        return
    heard: list[str] = []
    try:
        with library_warnings() as heard:
            report = run_db(_replay(directory, files, candidates, database_url), database_url)
    except BaseException:
        _warn(heard)  # a failed replay may still have set turns aside: their names are not lost
        raise
    # Bad lines are reported and set aside, not fatal: the rest is written and a rerun is clean. The
    # exit code still tells a script (a cron job) that this run left something a person must look at.
    _print(report)
    said = {f"turnledger outbox {line.path} line {line.lineno} skipped: {line.reason}" for line in report.bad_lines}
    _warn([message for message in heard if message not in said])
    if report.rejected or report.bad_lines:
        raise typer.Exit(EXIT_SET_ASIDE)


async def _replay(
    directory: Path, files: list[Path] | None, candidates: list[Path], database_url: str | None
) -> ReplayReport:
    from turnledger.store.engine import make_engine
    from turnledger.store.replay import count_entries, replay_outbox

    engine = make_engine(database_url)
    try:
        if not is_terminal():
            return await replay_outbox(engine, directory, files=files)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        total = await asyncio.to_thread(count_entries, candidates)
        with Progress(
            TextColumn("replaying outbox"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("replay", total=total)
            advance: ProgressFn = lambda n: progress.advance(task, n)  # noqa: E731
            return await replay_outbox(engine, directory, files=files, progress=advance)
    finally:
        await engine.dispose()


def _print(report: ReplayReport) -> None:
    # soft_wrap: one line per message however long its paths, so that a script (or a person copying the
    # name of a file to look at) gets whole paths, not paths broken at the terminal's width.
    say = functools.partial(console.print, highlight=False, soft_wrap=True)
    say(
        f"replayed {_count(report.entries, 'turn')} from {_count(report.files, 'file')}: "
        f"{report.inserted} written, {report.already_present} already in the database"
    )
    refused = report.rejected - report.turn_id_reused
    if refused:
        say(f"{_count(refused, 'turn')} refused by the database for their data: set aside in *.rejected files")
    if report.turn_id_reused:
        say(
            f"{_count(report.turn_id_reused, 'turn')} not written: another turn is stored under its turn_id;"
            " set aside in *.rejected files"
        )
    if report.set_aside_before:
        say(
            f"{_count(report.set_aside_before, 'line')} skipped: set aside in *.rejected files already, by an earlier"
            " replay or by their writer"
        )
    for path in report.skipped_files:
        say(f"skipped {path}: its writer is still running and replays it itself")
    for line in report.bad_lines:
        say(f"skipped {line.path} line {line.lineno}: {line.reason} (kept in {line.path.name}.rejected)")


def _warn(messages: list[str]) -> None:
    # What only the library's log says (which turn the database refused, a file that may not be on
    # disk), as the command's own lines; the CLI configures no logging, which would print them bare.
    for message in messages:
        err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
