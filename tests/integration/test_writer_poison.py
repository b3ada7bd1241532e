"""Poison turns: rows the database refuses must not block the good turns around them, in the writer or in replay."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.writer_support import (
    closed_turn,
    leave_dead_writers_segment,
    outbox_lines,
    poison_rows,
    stored_call_count,
    stored_turn,
    stored_turn_ids,
)
from turnledger.accumulator import TurnTokenAccumulator
from turnledger.records import TokenCallRecord
from turnledger.store.entries import Entry
from turnledger.store.outbox import decode_line
from turnledger.store.record import TurnRows, turn_rows
from turnledger.store.replay import pending_segments, replay_outbox
from turnledger.store.writer import BatchWriter

pytestmark = pytest.mark.asyncio


def _good(prefix: str, count: int) -> list[TurnRows]:
    return [turn_rows(closed_turn(f"{prefix}{i}"), usage_type="chat") for i in range(count)]


def _rejected_turn_ids(directory: Path) -> list[str]:
    return [
        str(decode_line(line)["turn_id"])
        for path in sorted(directory.glob("*.rejected"))
        for line in path.read_bytes().splitlines()
    ]


async def test_a_poison_turn_is_set_aside_and_the_batch_around_it_written(
    engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="turnledger.outbox")
    async with BatchWriter(engine, outbox_dir=tmp_path, batch_size=50, flush_interval=0.05, retry_max=0.2) as writer:
        futures = [writer.submit_rows(r) for r in [*_good("a", 10), poison_rows(engine), *_good("b", 10)]]
        for fut in futures:
            await fut
        await writer.flush(timeout=20)
        assert writer.stats["rejected"] == 1
        assert writer.stats["failed_batches"] == 0
        assert writer.healthy
        # Still writing afterwards.
        await writer.persist(closed_turn("after"))
        await writer.flush(timeout=20)
    expected = {f"a{i}": 1 for i in range(10)} | {f"b{i}": 1 for i in range(10)} | {"after": 1}
    assert await stored_turn_ids(engine) == expected
    assert await stored_call_count(engine) == 63
    assert _rejected_turn_ids(tmp_path) == ["poison"]
    assert pending_segments(tmp_path) == []
    assert any("'poison'" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


async def test_replay_sets_a_poison_entry_aside_and_writes_the_rest(engine: AsyncEngine, tmp_path: Path) -> None:
    leave_dead_writers_segment(tmp_path, outbox_lines(*_good("r", 5), poison_rows(engine), *_good("s", 5)))
    report = await replay_outbox(engine, tmp_path, batch_size=4)
    assert (report.entries, report.inserted, report.rejected) == (11, 10, 1)
    assert report.already_present == 0
    assert await stored_turn_ids(engine) == {f"r{i}": 1 for i in range(5)} | {f"s{i}": 1 for i in range(5)}
    assert _rejected_turn_ids(tmp_path) == ["poison"]
    assert pending_segments(tmp_path) == []
    again = await replay_outbox(engine, tmp_path)
    assert (again.entries, again.inserted) == (0, 0)


def _hostile_turn(turn_id: str) -> TurnTokenAccumulator:
    turn = TurnTokenAccumulator(turn_id=turn_id, user_id="u" * 300, thread_id="t\x00-1", tags=("a\x00b",))
    turn.add(TokenCallRecord(call_id=f"{turn_id}-c0", model="gpt-4o-mini", provider="open\x00ai"))
    turn.add(TokenCallRecord(call_id=f"{turn_id}-c1", model="m" * 400))
    turn._finalize()
    return turn


async def test_turn_rows_makes_hostile_strings_storable(
    engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="turnledger.store")
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        await writer.persist(closed_turn("before"))
        await writer.persist(_hostile_turn("hostile"))
        await writer.persist(closed_turn("after"))
        await writer.flush(timeout=20)
        assert writer.stats["rejected"] == 0
    assert await stored_turn_ids(engine) == {"before": 1, "hostile": 1, "after": 1}
    usage, calls = await stored_turn(engine, "hostile")
    assert len(usage["user_id"]) == 255
    assert usage["user_id"].startswith("u" * 200)
    # Shortened with a hash of the whole value: the same id always shortens the same way.
    assert usage["user_id"] == turn_rows(_hostile_turn("x"), usage_type="chat").usage["user_id"]
    assert usage["thread_id"] == "t-1"
    assert usage["tags"] == ["ab"]
    assert sorted(c["provider"] or "" for c in calls) == ["", "openai"]
    assert sorted(len(c["model"]) for c in calls) == [11, 255]
    assert all("sanitized" in c["flags"] for c in calls)
    assert [d["provider"] for d in usage["call_details"]] == ["openai", None]
    assert all("sanitized" in d["flags"] for d in usage["call_details"])
    assert _rejected_turn_ids(tmp_path) == []
    assert any("'hostile'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("pg_copy", [True, False], ids=["copy", "insert"])
async def test_a_value_the_driver_cannot_send_is_set_aside_like_a_refused_one(
    engine: AsyncEngine, tmp_path: Path, pg_copy: bool
) -> None:
    # An integer beyond 64 bits fails in the driver, before the server sees it: still the rows' fault,
    # so one turn is set aside and the batch (and every later one) is written.
    poison = turn_rows(closed_turn("too-big"), usage_type="chat")
    poison.usage["prompt_tokens"] = 2**63
    async with BatchWriter(
        engine, outbox_dir=tmp_path, batch_size=50, flush_interval=0.05, retry_max=0.2, pg_copy=pg_copy
    ) as writer:
        futures = [writer.submit_rows(r) for r in [*_good("x", 5), poison, *_good("y", 5)]]
        for fut in futures:
            await fut
        await writer.flush(timeout=20)
        assert writer.stats["rejected"] == 1
        assert writer.stats["failed_batches"] == 0
    assert await stored_turn_ids(engine) == {f"{p}{i}": 1 for p in "xy" for i in range(5)}
    assert _rejected_turn_ids(tmp_path) == ["too-big"]


async def test_lone_surrogates_are_replaced_not_lost(engine: AsyncEngine, tmp_path: Path) -> None:
    # A lone surrogate has no UTF-8: neither the outbox line nor the database could take it, and the
    # hand-off used to fail with the turn in neither.
    turn = TurnTokenAccumulator(turn_id="sur\ud800", user_id="u\udcff", tags=("t\ud800",))
    turn.add(TokenCallRecord(call_id="c0", model="gpt-\ud83d4o", cost_usd=None))
    turn.add(TokenCallRecord(call_id="c1", model="gpt-4o-mini"))
    turn._finalize()
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        await writer.persist(turn)
        await writer.flush(timeout=20)
        assert (writer.stats["written"], writer.stats["rejected"]) == (1, 0)
    usage, calls = await stored_turn(engine, "sur?")
    assert (usage["user_id"], usage["tags"]) == ("u?", ["t?"])
    assert sorted(usage["model_breakdown"]) == ["gpt-4o-mini", "gpt-?4o"]
    assert sorted(c["model"] for c in calls) == ["gpt-4o-mini", "gpt-?4o"]
    assert all("sanitized" in c["flags"] for c in calls)


async def test_a_poison_turn_both_queued_and_in_a_segment_being_replayed_is_set_aside_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # The queue holds two turns; a third waits in the outbox only, so its segment is replayed while the
    # poison turn is still queued: the replay must not set it aside, and then the live write again.
    writer = BatchWriter(
        engine, outbox_dir=tmp_path, batch_size=1, max_queue=2, flush_interval=0.01, replay_others=False
    )
    write_fresh = writer._write_fresh

    async def first_write_once_the_segment_is_to_be_replayed(entries: Sequence[Entry]) -> int:
        # Live turns and replay alternate: the replay's turn comes right after this write.
        while not writer._dirty:
            await writer._append_done.wait()
            writer._append_done.clear()
        return await write_fresh(entries)

    writer._write_fresh = first_write_once_the_segment_is_to_be_replayed
    async with writer:
        futures = [writer.submit_rows(r) for r in [*_good("q", 1), poison_rows(engine), *_good("s", 1)]]
        for fut in futures:
            await fut
        writer._write_fresh = write_fresh
        await writer.flush(timeout=20)
        stats = dict(writer.stats)
    assert await stored_turn_ids(engine) == {"q0": 1, "s0": 1}
    assert _rejected_turn_ids(tmp_path) == ["poison"]
    assert stats["rejected"] == 1
    assert pending_segments(tmp_path) == []
