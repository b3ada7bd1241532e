"""A replay finds a *different* turn stored under an entry's ``turn_id``: set aside, never dropped.

A caller naming turns by a request id, and a client that retried the request while the database was
down: both turns' calls were billed, the first reached the database, the second only the outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

import turnledger
from tests.integration.cli_run import invoke
from tests.integration.writer_support import (
    closed_turn,
    files_in,
    leave_dead_writers_segment,
    outbox_lines,
    stored_call_count,
    stored_turn_ids,
)
from turnledger import TurnTokenAccumulator
from turnledger.store.engine import make_engine
from turnledger.store.entries import make_entry
from turnledger.store.lines import unpack_entry
from turnledger.store.outbox import decode_line
from turnledger.store.record import TurnRows, turn_rows
from turnledger.store.rejects import set_aside
from turnledger.store.replay import pending_segments, replay_outbox
from turnledger.store.reused_ids import TurnIdReused
from turnledger.store.writer import BatchWriter


def _rows(turn_id: str, calls: int) -> TurnRows:
    return turn_rows(closed_turn(turn_id, calls=calls), usage_type="chat")


async def _store(engine: AsyncEngine, *rows: TurnRows) -> None:
    async with engine.begin() as conn:
        await turnledger.insert_turn_rows(conn, list(rows))


def _kept(path: Path) -> list[tuple[str, int]]:
    entries = [unpack_entry(decode_line(line)) for line in path.read_bytes().splitlines()]
    return sorted((e["turn_id"], len(e["calls"])) for e in entries if e is not None)


async def test_replay_sets_aside_another_turn_under_a_stored_turn_id(engine: AsyncEngine, tmp_path: Path) -> None:
    first, retried, other = _rows("req-42", 1), _rows("req-42", 2), _rows("req-7", 1)
    await _store(engine, first)
    # The same turn again (stored, silent), the retried one (set aside), a new one (written).
    leave_dead_writers_segment(tmp_path, outbox_lines(first, retried, other))

    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted, report.already_present) == (3, 1, 1)
    assert (report.rejected, report.turn_id_reused) == (1, 1)
    assert await stored_turn_ids(engine) == {"req-42": 1, "req-7": 1}
    assert await stored_call_count(engine) == 2
    assert pending_segments(tmp_path) == []
    assert _kept(tmp_path / "dead-writer.000001.jsonl.rejected") == [("req-42", 2)]
    # Nothing left to do, nothing set aside twice.
    again = await replay_outbox(engine, tmp_path)
    assert (again.entries, again.rejected, again.turn_id_reused) == (0, 0, 0)


async def test_replay_twice_of_the_same_turns_sets_nothing_aside(engine: AsyncEngine, tmp_path: Path) -> None:
    turns = [_rows(f"same-{i}", 2) for i in range(3)]
    await _store(engine, *turns[:2])  # in the database and in the outbox: the usual idempotent case
    leave_dead_writers_segment(tmp_path, outbox_lines(*turns, turns[2]))
    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted, report.already_present, report.rejected) == (4, 1, 3, 0)
    assert report.turn_id_reused == 0
    assert [f for f in files_in(tmp_path) if f.endswith(".rejected")] == []


async def test_two_different_turns_under_one_turn_id_in_one_segment_keep_one_and_set_aside_the_other(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    leave_dead_writers_segment(tmp_path, outbox_lines(_rows("twin", 1), _rows("twin", 3)))
    report = await replay_outbox(engine, tmp_path)
    assert (report.inserted, report.rejected, report.turn_id_reused) == (1, 1, 1)
    assert await stored_call_count(engine) == 1
    assert _kept(tmp_path / "dead-writer.000001.jsonl.rejected") == [("twin", 3)]


async def test_replay_sets_aside_another_turn_with_the_same_created_at_calls_and_cost(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # Turns submitted with the caller's created_at (a message's time): the retried request's turn has
    # as many calls, tokens and cost as the first, only other call ids. Before: counted as
    # already_present, its calls in no report.
    when = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    first = turn_rows(closed_turn("msg-1", calls=2), usage_type="chat", created_at=when)
    retried_turn = closed_turn("msg-1", calls=2)
    retried = turn_rows(_with_call_ids(retried_turn, "retry"), usage_type="chat", created_at=when)
    await _store(engine, first)
    leave_dead_writers_segment(tmp_path, outbox_lines(first, retried))
    report = await replay_outbox(engine, tmp_path)
    assert (report.already_present, report.rejected, report.turn_id_reused) == (1, 1, 1)
    assert [c for _, c in _kept(tmp_path / "dead-writer.000001.jsonl.rejected")] == [2]


def _with_call_ids(turn: TurnTokenAccumulator, prefix: str) -> TurnTokenAccumulator:
    again = TurnTokenAccumulator(turn_id=turn.turn_id, user_id=turn.user_id, thread_id=turn.thread_id)
    for i, record in enumerate(turn.calls):
        again.add(dataclasses.replace(record, call_id=f"{prefix}-{i}"))
    again._finalize()
    return again


async def test_a_turn_its_writer_set_aside_live_is_not_set_aside_again_by_replay(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # The writer set the retried turn aside live (in <writer>.rejected), then died before its segment,
    # which still holds the turn, was discarded.
    first, retried = _rows("req-42", 1), _rows("req-42", 2)
    await _store(engine, first)
    set_aside(tmp_path / "dead-writer.rejected", [make_entry(retried)], TurnIdReused("test"))
    leave_dead_writers_segment(tmp_path, outbox_lines(retried))
    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.rejected, report.turn_id_reused, report.set_aside_before) == (0, 0, 0, 1)
    assert sorted(files_in(tmp_path)) == ["dead-writer.rejected"]


async def test_a_writer_replaying_another_writers_outbox_sets_a_reused_turn_id_aside(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    first, retried = _rows("req-42", 1), _rows("req-42", 2)
    await _store(engine, first)
    leave_dead_writers_segment(tmp_path, outbox_lines(retried))
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        await writer.flush(timeout=30)
        assert (writer.stats["replayed"], writer.stats["rejected"], writer.stats["turn_id_reused"]) == (1, 1, 1)
    assert _kept(tmp_path / "dead-writer.000001.jsonl.rejected") == [("req-42", 2)]


def test_replay_command_says_a_reused_turn_id_was_set_aside_and_exits_4(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    first, retried = _rows("req-42", 1), _rows("req-42", 2)
    asyncio.run(_store(engine, first))
    asyncio.run(engine.dispose())
    leave_dead_writers_segment(tmp_path, outbox_lines(first, retried))

    result = invoke("replay", "--outbox", str(tmp_path), "--database-url", database_url)
    assert result.exit_code == 4, result.output
    assert result.stdout.splitlines()[:2] == [
        "replayed 2 turns from 1 file: 0 written, 1 already in the database",
        "1 turn not written: another turn is stored under its turn_id; set aside in *.rejected files",
    ]
    again = invoke("replay", "--outbox", str(tmp_path), "--database-url", database_url)
    assert again.exit_code == 0, again.output
