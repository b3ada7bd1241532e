"""``turnledger replay`` from the shell: writes what an outbox holds, and is safe to run twice."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.cli_run import invoke, one_line_error, run_cli
from tests.integration.writer_support import (
    closed_turn,
    files_in,
    leave_dead_writers_segment,
    outbox_lines,
    poison_rows,
    stored_call_count,
    stored_turn_ids,
)
from turnledger.store.engine import make_engine
from turnledger.store.entries import make_entry
from turnledger.store.outbox import OutboxJournal, encode_entry
from turnledger.store.record import TurnRows, turn_rows


def _dead_writer_outbox(directory: Path, count: int) -> None:
    journal = OutboxJournal(directory, writer_id="gone")
    journal.open()
    lines = [encode_entry(make_entry(turn_rows(closed_turn(f"cli{i}"), usage_type="chat"))) for i in range(count)]
    journal.append([*lines[:2], b'{"crc":"00000000","entry":{}}\n', *lines[2:]])
    journal.close()


async def _stored(url: str) -> tuple[dict[str, int], int]:
    engine: AsyncEngine = make_engine(url)
    try:
        return dict(await stored_turn_ids(engine)), await stored_call_count(engine)
    finally:
        await engine.dispose()


# Each CLI run starts a Python process that imports LiteLLM (seconds): one backend here; the replay
# itself runs on both backends in test_writer.py.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_replay_command_writes_the_outbox_and_is_safe_to_run_twice(database_url: str, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    _dead_writer_outbox(outbox, 5)

    first = run_cli("replay", "--outbox", str(outbox), "--database-url", database_url)
    assert first.returncode == 4, first.stderr  # written, but a line was set aside: a person must look
    assert "replayed 5 turns from 1 file: 5 written, 0 already in the database" in first.stdout
    assert "line 3: checksum mismatch" in first.stdout
    # Said once, by the command: not again as the library's raw log line ("turnledger outbox ... skipped").
    assert first.stderr == ""
    assert asyncio.run(_stored(database_url)) == ({f"cli{i}": 1 for i in range(5)}, 15)
    assert files_in(outbox) == ["gone.000001.jsonl.rejected"]

    second = run_cli("replay", "--outbox", str(outbox), "--database-url", database_url)
    assert second.returncode == 0, second.stderr
    assert "nothing to replay" in second.stdout
    assert asyncio.run(_stored(database_url)) == ({f"cli{i}": 1 for i in range(5)}, 15)


def _good_rows(count: int) -> list[TurnRows]:
    return [turn_rows(closed_turn(f"ok{i}"), usage_type="chat") for i in range(count)]


def test_replay_that_sets_nothing_aside_exits_0(database_url: str, tmp_path: Path) -> None:
    leave_dead_writers_segment(tmp_path, outbox_lines(*_good_rows(3)))
    result = invoke("replay", "--outbox", str(tmp_path), "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert "3 written" in result.stdout


def test_replay_names_each_file_and_line_it_sets_aside_on_one_line_however_deep_the_outbox(
    database_url: str, tmp_path: Path
) -> None:
    # A script reading the output (or a person copying the name of the file to look at) gets whole
    # paths, not paths broken at 80 columns; and one file is "1 file".
    outbox = tmp_path / "var" / "lib" / "an-application-with-a-long-name" / "turnledger-outbox"
    leave_dead_writers_segment(outbox, [*outbox_lines(*_good_rows(2)), b'{"broken\n'])
    [segment] = [name for name in files_in(outbox) if name.endswith(".jsonl")]
    result = invoke("replay", "--outbox", str(outbox), "--database-url", database_url)
    assert result.exit_code == 4, result.output
    assert result.stdout.splitlines() == [
        "replayed 2 turns from 1 file: 2 written, 0 already in the database",
        f"skipped {outbox / segment} line 3: not an outbox line (kept in {segment}.rejected)",
    ]


def test_replay_that_sets_a_refused_turn_aside_exits_4_and_a_rerun_0(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    poison = poison_rows(engine)
    asyncio.run(engine.dispose())
    leave_dead_writers_segment(tmp_path, outbox_lines(*_good_rows(2), poison))

    first = invoke("replay", "--outbox", str(tmp_path), "--database-url", database_url)
    assert first.exit_code == 4, first.output
    assert "1 turn refused by the database for their data" in first.stdout
    # Which turn: only the library's warning names it, and the command passes it on as its own line.
    [refused] = first.stderr.splitlines()
    assert refused.startswith("warning: turnledger: the database refused turn 'poison' ("), refused
    assert asyncio.run(_stored(database_url)) == ({"ok0": 1, "ok1": 1}, 6)

    again = invoke("replay", "--outbox", str(tmp_path), "--database-url", database_url)
    assert again.exit_code == 0, again.output  # what is set aside is reported once, by the run that did it


def test_replay_command_refuses_a_path_that_is_not_an_outbox(tmp_path: Path) -> None:
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    result = run_cli("replay", "--outbox", str(stray), "--database-url", f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert result.returncode == 2
    assert "is not an outbox segment" in one_line_error(result)


def test_replay_to_a_sqlite_file_that_is_not_there_refuses_and_creates_nothing(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    _dead_writer_outbox(outbox, 2)
    missing = tmp_path / "typo.db"
    result = invoke("replay", "--outbox", str(outbox), "--database-url", f"sqlite:///{missing}")
    assert result.exit_code == 3, result.output
    assert f"no database at {missing} (from --database-url): run `turnledger migrate`" in one_line_error(result)
    assert not missing.exists()
    assert "gone.000001.jsonl" in files_in(outbox)  # left for a replay to the right database


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_replay_whose_outbox_directory_cannot_be_synced_blames_the_outbox_not_the_database(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = tmp_path / "outbox"
    _dead_writer_outbox(outbox, 2)  # its bad line is set aside, and <segment>.rejected's directory synced
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = invoke("replay", "--outbox", str(outbox), "--database-url", database_url)
    assert result.exit_code == 1, result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: cannot sync the outbox directory: "), error
    assert "run the replay again" in error
    assert "gone.000001.jsonl" in files_in(outbox)  # kept: the rerun sets nothing aside again


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_replay_of_an_outbox_holding_a_directory_named_like_a_segment_blames_that_path_not_the_database(
    database_url: str, tmp_path: Path
) -> None:
    # Before: "cannot reach the database at sqlite+aiosqlite:///...: [Errno 21] Is a directory: '...'".
    odd = tmp_path / "outbox" / "gone.000001.jsonl"
    odd.mkdir(parents=True)
    result = invoke("replay", "--outbox", str(tmp_path / "outbox"), "--database-url", database_url)
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert line == f"error: cannot use {odd}: Is a directory", line
