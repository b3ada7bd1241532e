"""What ``BatchWriter.stats`` counts when a write fails part way: a turn the database acknowledged is counted.

The failures are a link dropped by a wrapper around the writer's own write functions, on the call
the test names: deterministic, where a proxy cut would land wherever the timing puts it.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.writer_support import closed_turn, poison_rows, record_syncs_and_deletes, stored_turn_ids
from turnledger.store.entries import Entry, WriteFn, make_entry, transaction_writer
from turnledger.store.outbox import CorruptLine, OutboxJournal, decode_line, encode_entry
from turnledger.store.record import turn_rows
from turnledger.store.replay import pending_segments, replay_outbox
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


async def _poison_batch_with_a_dropped_link(
    engine: AsyncEngine, tmp_path: Path, *, drop_on_write: int
) -> tuple[BatchWriter, dict[str, int]]:
    """One batch [p0, p1, poison, p3] through a writer whose ``drop_on_write``-th write loses the link."""
    writer = BatchWriter(
        engine, outbox_dir=tmp_path, batch_size=4, flush_interval=0.05, retry_initial=0.01, retry_max=0.05
    )
    writer._write_fresh = _DroppedLink(writer._write_fresh, {drop_on_write})
    rows = [turn_rows(closed_turn(f"p{i}"), usage_type="chat") for i in (0, 1)]
    rows += [poison_rows(engine), turn_rows(closed_turn("p3"), usage_type="chat")]
    async with writer:
        await asyncio.gather(*(writer.submit_rows(r) for r in rows))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    return writer, stats


async def test_a_batch_split_around_a_poison_turn_counts_the_half_written_before_a_failure(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # The batch is refused for the poison turn and halved: its first half is written, the link drops
    # on the second half. The retry (a replay of the outbox) finds the first half stored.
    _, stats = await _poison_batch_with_a_dropped_link(engine, tmp_path, drop_on_write=3)
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


_DAMAGED = b'{"damaged line\n'


def _set_aside(directory: Path) -> dict[str, list[str]]:
    """Each ``*.rejected`` file by name: the turn_id of each line, or ``"<bad line>"`` if it is not an entry."""

    def what(line: bytes) -> str:
        try:
            return str(decode_line(line)["turn_id"])
        except CorruptLine:
            return "<bad line>"

    return {p.name: [what(line) for line in p.read_bytes().splitlines()] for p in sorted(directory.glob("*.rejected"))}


def _dead_writer_with_poison(directory: Path, engine: AsyncEngine) -> None:
    """A dead writer's segment: a poison turn, a good one, a damaged line, two more good ones."""
    journal = OutboxJournal(directory, writer_id="dead-a")
    journal.open()
    good = [encode_entry(make_entry(turn_rows(closed_turn(t), usage_type="chat"))) for t in ("a1", "a2", "a3")]
    journal.append([encode_entry(make_entry(poison_rows(engine))), good[0], _DAMAGED, *good[1:]])
    journal.rotate()
    assert journal._lock_fh is not None
    journal._lock_fh.close()


async def test_a_poison_turn_refused_before_the_link_drops_is_set_aside_and_counted_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # Writes: [p0, p1, poison, p3] refused for its data, [p0, p1] written, [poison, p3] refused,
    # [poison] refused alone (set aside), then the link drops on [p3]: only p3 is left to the outbox.
    writer, stats = await _poison_batch_with_a_dropped_link(engine, tmp_path, drop_on_write=5)
    assert await stored_turn_ids(engine) == {"p0": 1, "p1": 1, "p3": 1}
    assert (stats["handed_over"], stats["written"], stats["failed_batches"]) == (4, 3, 1)
    assert (stats["spilled"], stats["rejected"]) == (1, 1)
    # The segment's replay finds p0 and p1 stored, skips the poison turn (in <writer>.rejected already)
    # and writes p3.
    assert stats["replayed"] == 3
    assert _set_aside(tmp_path) == {f"{writer.writer_id}.rejected": ["poison"]}
    assert pending_segments(tmp_path) == []


async def test_a_poison_turn_whose_set_aside_failed_to_sync_is_set_aside_again_by_the_replay(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fsync may leave the bytes in the page cache, marked clean, gone after a reboot: they are
    cut off, so the segment's replay does not take them for set aside and delete the only other copy."""
    real_fsync = os.fsync
    failures = [OSError(errno.EIO, "Input/output error")]

    def fsync(fd: int) -> None:
        if failures and os.readlink(f"/proc/self/fd/{fd}").endswith(".rejected"):
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    writer = BatchWriter(
        engine, outbox_dir=tmp_path, batch_size=4, flush_interval=0.05, retry_initial=0.01, retry_max=0.05
    )
    rows = [turn_rows(closed_turn("g1"), usage_type="chat"), poison_rows(engine)]
    async with writer:
        await asyncio.gather(*(writer.submit_rows(r) for r in rows))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    assert failures == []
    assert await stored_turn_ids(engine) == {"g1": 1}
    assert stats["rejected"] == 1
    assert [turn for lines in _set_aside(tmp_path).values() for turn in lines] == ["poison"]
    assert pending_segments(tmp_path) == []


async def test_a_writer_that_dies_after_refusing_a_turn_live_leaves_it_set_aside_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    writer = BatchWriter(
        engine,
        outbox_dir=tmp_path,
        batch_size=4,
        flush_interval=0.05,
        retry_initial=0.01,
        retry_max=0.05,
        shutdown_timeout=1,
    )
    # As above, but the database stays unreachable for replays: the writer stops with p3 in its outbox.
    writer._write_fresh = _DroppedLink(writer._write_fresh, {5})
    writer._write = _DroppedLink(writer._write, range(1, 1_000_000))
    rows = [turn_rows(closed_turn(f"p{i}"), usage_type="chat") for i in (0, 1)]
    rows += [poison_rows(engine), turn_rows(closed_turn("p3"), usage_type="chat")]
    async with writer:
        await asyncio.gather(*(writer.submit_rows(r) for r in rows))
        await _until_failed(writer)
    assert writer.stats["rejected"] == 1
    assert len(pending_segments(tmp_path)) == 1
    # The next process replays the segment: the poison turn in it is in <writer>.rejected already.
    report = await replay_outbox(engine, tmp_path)
    assert _set_aside(tmp_path) == {f"{writer.writer_id}.rejected": ["poison"]}
    assert (report.entries, report.inserted, report.already_present, report.rejected) == (3, 1, 2, 0)
    assert report.set_aside_before == 1
    assert await stored_turn_ids(engine) == {"p0": 1, "p1": 1, "p3": 1}
    assert pending_segments(tmp_path) == []


async def test_a_replay_retried_after_the_link_drops_counts_and_sets_aside_each_line_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    _dead_writer_with_poison(tmp_path, engine)
    writer = BatchWriter(
        engine, outbox_dir=tmp_path, batch_size=2, flush_interval=0.01, retry_initial=0.01, retry_max=0.05
    )
    # Replayed in chunks of 2: [poison, a1] refused, [poison] set aside, [a1] written, then the link
    # drops on [a2, a3]. A live turn's write (once the writer tries again) brings the retry.
    writer._write = _DroppedLink(writer._write, {4})
    async with writer:
        await _until_failed(writer)
        await writer.persist(closed_turn("live"))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    assert await stored_turn_ids(engine) == {"a1": 1, "a2": 1, "a3": 1, "live": 1}
    assert (stats["written"], stats["failed_batches"]) == (4, 1)
    assert (stats["bad_lines"], stats["rejected"]) == (1, 1)
    # The retry goes on after a1: the 4 entries of the segment and the live turn (spilled while unhealthy).
    assert stats["replayed"] == 5
    assert _set_aside(tmp_path) == {"dead-a.000001.jsonl.rejected": ["<bad line>", "poison"]}
    assert (tmp_path / "dead-a.000001.jsonl.rejected").read_bytes().startswith(_DAMAGED)
    assert pending_segments(tmp_path) == []


async def test_a_replay_run_again_after_the_link_dropped_sets_nothing_aside_twice(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dead_writer_with_poison(tmp_path, engine)
    rejected = tmp_path / "dead-a.000001.jsonl.rejected"
    # As `turnledger replay` would: the first run stops when the link drops on [a2, a3].
    dropped = _DroppedLink(transaction_writer(engine), {4})
    with pytest.raises(ConnectionResetError):
        await replay_outbox(engine, tmp_path, batch_size=2, write=dropped)
    assert _set_aside(tmp_path) == {rejected.name: ["<bad line>", "poison"]}

    # The next run: what the first one set aside is skipped, not set aside or counted again, and the
    # file it relies on is synced before the segment, the lines' other copy, is deleted.
    steps = record_syncs_and_deletes(monkeypatch)
    report = await replay_outbox(engine, tmp_path, batch_size=2)
    assert (report.entries, report.inserted, report.rejected, report.bad_lines) == (3, 2, 0, [])
    assert report.set_aside_before == 2
    deleted = steps.index(("unlink", str(tmp_path / "dead-a.000001.jsonl")))
    assert ("fsync", str(rejected)) in steps[:deleted], steps
    assert await stored_turn_ids(engine) == {"a1": 1, "a2": 1, "a3": 1}
    assert _set_aside(tmp_path) == {rejected.name: ["<bad line>", "poison"]}
    assert pending_segments(tmp_path) == []
