"""``turnledger ... | head -1``: a reader that stops reading ends every command as it ends ``cat``.

Every command writes through the same stdout, so each kind of writer is tried: a rich table (report,
prices), the chart's lines, JSON and CSV written directly, typer's help, the version.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from turnledger import make_engine, record_token_usage, session_factory
from turnledger.store import migrate

from .cli_run import run_cli, run_into_closed_pipe
from .store_data import record_report_turns

PAGE = 4096
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


def test_help_into_an_open_pipe_is_printed_whole_and_ends_0() -> None:
    # The watched stdout once took bytes without a word (click probes a stream with b""), so click
    # wrote its help through it as bytes: every --help ended in a TypeError traceback, exit 1.
    commands = [("--help",), ("version", "--help"), ("report", "--help"), ("credits", "--help")]
    with ThreadPoolExecutor(max_workers=2) as pool:  # each start-up imports LiteLLM
        results = list(pool.map(lambda args: run_cli(*args), commands))
    for args, result in zip(commands, results, strict=True):
        assert (result.returncode, result.stderr) == (0, ""), (args, result.stderr[-500:])
        assert "Usage:" in result.stdout and "Show this message and exit." in result.stdout, args


def test_a_reader_that_leaves_in_the_middle_of_a_large_table_ends_it_by_sigpipe(tmp_path: Path) -> None:
    # A table larger than the pipe holds, its reader gone once the pipe is full: the write under way
    # comes back partial, and what is left of the table must meet the closed pipe, not be dropped.
    database = f"sqlite+aiosqlite:///{tmp_path / 'turnledger.db'}"
    migrate.upgrade(database)
    asyncio.run(record_many_users(database, 3000))
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "TURNLEDGER_DATABASE_URL"}
    env.update({"COLUMNS": "80", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_COLOR": "1", "TERM": "dumb"})
    try:
        command = subprocess.Popen(
            [sys.executable, "-m", "turnledger", "report", "--by", "user", "--database-url", database],
            env=env, stdout=write_end, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        os.close(write_end)
        # Within two pages of full, the command's write under way cannot finish until it is read.
        nearly_full = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) - 2 * PAGE
        deadline = time.monotonic() + 120  # only so that a command that never fills the pipe fails
        while pending(read_end) < nearly_full and command.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pending(read_end) >= nearly_full, "the table did not fill the pipe"
    finally:
        os.close(read_end)
    _, stderr = command.communicate(timeout=120)
    assert (command.returncode, stderr) == (-signal.SIGPIPE, "")


def pending(fd: int) -> int:
    """Bytes written into the pipe and not read."""
    [count] = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))
    return int(count)


async def record_many_users(url: str, users: int) -> None:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            for n in range(users):
                record_token_usage(
                    session, usage_type="chat", user_id=f"user-{n:05}", prompt_tokens=1, cost_usd="0.001"
                )
            await session.commit()
    finally:
        await engine.dispose()
