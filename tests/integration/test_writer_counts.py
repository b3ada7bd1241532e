"""What ``BatchWriter.stats`` counts when a write fails part way: a turn the database acknowledged is counted.

The failures are a link dropped by a wrapper around the writer's own write functions, on the call
the test names: deterministic, where a proxy cut would land wherever the timing puts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.writer_support import closed_turn, poison_rows, stored_turn_ids
from turnledger.store.entries import Entry, WriteFn, make_entry
from turnledger.store.outbox import OutboxJournal, encode_entry
from turnledger.store.record import turn_rows
from turnledger.store.replay import pending_segments
from turnledger.store.writer import BatchWriter

pytestmark = pytest.mark.asyncio


class _DroppedLink:
    """A write function whose link drops on the given calls (counted from 1): before the transaction,
    or, with ``after_commit``, once it has committed and before its answer is read."""

    def __init__(self, write: WriteFn, fail_on: Collection[int], *, after_commit: bool = False) -> None:
        self._write = write
        self._fail_on = fail_on
        self._after_commit = after_commit
        self.calls = 0

    async def __call__(self, entries: Sequence[Entry]) -> int:
        self.calls += 1
        if self.calls not in self._fail_on:
            return await self._write(entries)
        if self._after_commit:
            await self._write(entries)
        raise ConnectionResetError("the link dropped")


def _dead_writer(directory: Path, writer_id: str, turn_ids: list[str]) -> None:
    journal = OutboxJournal(directory, writer_id=writer_id)
    journal.open()
    journal.append([encode_entry(make_entry(turn_rows(closed_turn(t), usage_type="chat"))) for t in turn_ids])
    journal.rotate()
    assert journal._lock_fh is not None
    journal._lock_fh.close()  # the process died: its flock went with it


async def _until_failed(writer: BatchWriter) -> None:
    for _ in range(500):
        if writer.stats["failed_batches"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no write failed: {dict(writer.stats)}")


async def test_replaying_a_dead_writers_outbox_counts_the_segments_written_before_a_failure(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    _dead_writer(tmp_path, "dead-a", ["a0", "a1", "a2"])
    _dead_writer(tmp_path, "dead-b", ["b0", "b1", "b2"])
    writer = BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01, retry_initial=0.01, retry_max=0.05)
    # dead-a's segment is written (and deleted), then the link drops on dead-b's.
    writer._write = _DroppedLink(writer._write, {2})
    async with writer:
        await _until_failed(writer)
        # The dead writers' outboxes are tried again once a write succeeds: a live turn's.
        await writer.persist(closed_turn("live"))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    stored = await stored_turn_ids(engine)
    assert set(stored) == {"a0", "a1", "a2", "b0", "b1", "b2", "live"}
    assert stats["written"] == len(stored)
    assert stats["replayed"] >= 6
    assert pending_segments(tmp_path) == []


async def test_replaying_its_own_outbox_counts_the_chunks_written_before_a_failure(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = BatchWriter(
        engine,
        outbox_dir=tmp_path,
        max_queue=1,
        batch_size=2,
        flush_interval=0.01,
        retry_initial=0.01,
        retry_max=0.05,
        replay_others=False,
    )
    # Replayed in chunks of 2: two chunks are written, the link drops on the third.
    writer._write = _DroppedLink(writer._write, {3})
    async with writer:
        # One turn fits in the queue; the others wait in the outbox for replay.
        await asyncio.gather(*(writer.submit(closed_turn(f"q{i}")) for i in range(7)))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    stored = await stored_turn_ids(engine)
    assert set(stored) == {f"q{i}" for i in range(7)}
    assert stats["failed_batches"] == 1
    assert stats["written"] == len(stored)
    assert pending_segments(tmp_path) == []


async def test_a_batch_split_around_a_poison_turn_counts_the_half_written_before_a_failure(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = BatchWriter(
        engine, outbox_dir=tmp_path, batch_size=4, flush_interval=0.05, retry_initial=0.01, retry_max=0.05
    )
    # The batch is refused for the poison turn and halved: its first half is written, the link drops
    # on the second half. The retry (a replay of the outbox) finds the first half stored.
    writer._write_fresh = _DroppedLink(writer._write_fresh, {3})
    rows = [turn_rows(closed_turn(f"p{i}"), usage_type="chat") for i in (0, 1)]
    rows += [poison_rows(engine), turn_rows(closed_turn("p3"), usage_type="chat")]
    async with writer:
        await asyncio.gather(*(writer.submit_rows(r) for r in rows))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    stored = await stored_turn_ids(engine)
    assert set(stored) == {"p0", "p1", "p3"}
    assert (stats["failed_batches"], stats["rejected"]) == (1, 1)
    assert stats["written"] == len(stored)


async def test_a_commit_whose_answer_is_lost_is_stored_once_and_not_counted_as_written(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = BatchWriter(
        engine, outbox_dir=tmp_path, batch_size=5, flush_interval=0.05, retry_initial=0.01, retry_max=0.05
    )
    # The batch commits, then the link drops before its answer is read: to the writer, a failed write.
    writer._write_fresh = _DroppedLink(writer._write_fresh, {1}, after_commit=True)
    async with writer:
        await asyncio.gather(*(writer.submit(closed_turn(f"d{i}")) for i in range(5)))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    assert await stored_turn_ids(engine) == {f"d{i}": 1 for i in range(5)}
    # The retry (a replay of the outbox) finds the turns stored and cannot tell who stored them: this
    # writer's lost commit, or anyone else's. written counts only what the database acknowledged.
    assert (stats["handed_over"], stats["failed_batches"], stats["replayed"]) == (5, 1, 5)
    assert (stats["written"], stats["rejected"], stats.get("lost", 0)) == (0, 0, 0)
    assert pending_segments(tmp_path) == []
