"""``turnledger ... | head -1``: a reader that stops reading ends every command as it ends ``cat``.

Every command writes through the same stdout, so each kind of writer is tried: a rich table (report,
prices), the chart's lines, JSON and CSV written directly, typer's help, the version.
"""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from turnledger.store import migrate

from .cli_run import run_into_closed_pipe
from .store_data import record_report_turns

RANGE = ("--since", "2026-11-01", "--until", "2026-11-05")


def test_every_kind_of_output_into_a_closed_pipe_ends_by_sigpipe_saying_nothing(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'turnledger.db'}"
    migrate.upgrade(database)
    asyncio.run(record_report_turns(database))
    url = ("--database-url", database)
    commands = [
        ("chart", "--by", "model", *RANGE, *url),
        ("report", "--by", "day", *RANGE, *url),
        ("report", "--by", "model", *RANGE, "--format", "json", *url),
        ("report", "--by", "user", *RANGE, "--format", "csv", *url),
        ("prices", "gpt-4o-mini"),
        ("--help",),
        ("version",),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:  # each start-up imports LiteLLM
        results = list(pool.map(lambda args: run_into_closed_pipe(*args), commands))
    # What a shell shows as 141 and says nothing about: `cat`'s ending, not exit 1 ("the operation failed").
    assert [(r.args[3:], r.returncode, r.stderr) for r in results] == [
        (list(args), -signal.SIGPIPE, "") for args in commands
    ]
