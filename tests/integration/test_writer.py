"""BatchWriter on PostgreSQL and SQLite: batches, idempotence, bounded queue, outbox, replay, shutdown."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import turnledger
from tests.integration.writer_support import (
    closed_turn,
    files_in,
    line_count,
    orphan_calls,
    record_syncs_and_deletes,
    stored_call_count,
    stored_cost,
    stored_rows,
    stored_turn_ids,
)
from turnledger._logging import problem_counts
from turnledger.store.engine import make_engine
from turnledger.store.entries import entry_rows, make_entry
from turnledger.store.lines import unpack_entry
from turnledger.store.migrate import upgrade_async
from turnledger.store.outbox import OutboxJournal, decode_line, encode_entry
from turnledger.store.record import turn_rows
from turnledger.store.replay import pending_segments, replay_outbox
from turnledger.store.writer import BatchWriter

pytestmark = pytest.mark.asyncio


async def test_scoped_turn_persists_through_the_writer(engine: AsyncEngine, tmp_path: Path) -> None:
    async with BatchWriter(engine, outbox_dir=tmp_path, batch_size=7, flush_interval=0.01) as writer:
        for i in range(20):
            async with turnledger.scoped_turn(turn_id=f"t{i}", user_id="u-9", persist=writer) as turn:
                for c in range(3):
                    turn.add(
                        turnledger.TokenCallRecord(
                            call_id=f"t{i}-{c}", model="gpt-4o-mini", prompt_tokens=5, cost_usd=Decimal("0.1")
                        )
                    )
        await writer.flush(timeout=30)
        assert writer.stats["written"] == 20
        assert writer.stats["batches"] >= 3  # 20 turns in batches of at most 7
    assert await stored_turn_ids(engine) == {f"t{i}": 1 for i in range(20)}
    assert await stored_call_count(engine) == 60
    assert await stored_cost(engine) == Decimal("6.0")
    # Everything written: the writer leaves no segment and no lock behind.
    assert files_in(tmp_path) == []


async def test_a_turn_handed_over_twice_is_stored_once(engine: AsyncEngine, tmp_path: Path) -> None:
    turn = closed_turn("same")
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        await writer.persist(turn)
        await writer.flush(timeout=30)
        await writer.persist(turn)
        await writer.persist(turn)
        await writer.flush(timeout=30)
        assert writer.stats["handed_over"] == 3
        assert writer.stats["written"] == 1
    assert await stored_turn_ids(engine) == {"same": 1}
    assert await stored_call_count(engine) == 3


async def test_another_turn_under_a_stored_turn_id_is_set_aside_not_dropped(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # A caller that names turns by a request id, and a client that retried the request: the provider
    # billed both turns' calls. The second is never silently skipped as if it were the first again.
    first, retried = closed_turn("req-42", calls=1), closed_turn("req-42", calls=2)
    twins = [closed_turn("req-7", calls=1), closed_turn("req-7", calls=3)]  # handed over together
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        await writer.persist(first)
        await writer.flush(timeout=30)
        await writer.persist(first)  # the same turn again: stored once, nothing set aside
        await writer.persist(retried)
        await asyncio.gather(*(writer.persist(t) for t in twins))
        await writer.flush(timeout=30)
        assert (writer.stats["written"], writer.stats["turn_id_reused"], writer.stats["rejected"]) == (2, 2, 2)
    assert await stored_turn_ids(engine) == {"req-42": 1, "req-7": 1}
    assert await stored_call_count(engine) == 2
    (rejected,) = [f for f in files_in(tmp_path) if f.endswith(".rejected")]
    kept = [unpack_entry(decode_line(line)) for line in (tmp_path / rejected).read_bytes().splitlines()]
    assert sorted((k["turn_id"], len(k["calls"])) for k in kept if k is not None) == [("req-42", 2), ("req-7", 3)]


async def test_a_reused_turn_id_the_writer_could_not_check_is_replayed_and_set_aside_not_dropped(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The link drops after the batch committed, as the writer reads which skipped turn it was: that
    # turn was taken as stored, with one warning naming no turn, and its billed calls were in no report.
    import turnledger.store.writer as writer_module
    from turnledger.store.reused_ids import reused_turn_ids as check

    drops = [ConnectionResetError("the link dropped")]

    async def dropping_once(engine: AsyncEngine, entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        if drops:
            raise drops.pop()
        return await check(engine, entries)

    monkeypatch.setattr(writer_module, "reused_turn_ids", dropping_once)
    first, retried = closed_turn("req-42", calls=1), closed_turn("req-42", calls=2)
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01, retry_initial=0.01) as writer:
        await writer.persist(first)
        await writer.flush(timeout=30)
        await writer.persist(retried)
        await writer.flush(timeout=30)
        assert drops == []
        assert (writer.stats["turn_id_reused"], writer.stats["rejected"], writer.stats["lost"]) == (1, 1, 0)
    assert await stored_call_count(engine) == 1
    (rejected,) = [f for f in files_in(tmp_path) if f.endswith(".rejected")]
    kept = [unpack_entry(decode_line(line)) for line in (tmp_path / rejected).read_bytes().splitlines()]
    assert [(k["turn_id"], len(k["calls"])) for k in kept if k is not None] == [("req-42", 2)]


async def test_a_full_queue_spills_to_the_outbox_and_is_replayed(engine: AsyncEngine, tmp_path: Path) -> None:
    async with BatchWriter(engine, outbox_dir=tmp_path, max_queue=2, batch_size=2, flush_interval=0.01) as writer:
        futures = [writer.submit(closed_turn(f"q{i}")) for i in range(50)]
        for fut in futures:
            await fut
        # 50 turns reached the journal in one group; only 2 fit in memory, the rest wait in the outbox.
        assert writer.stats["spilled"] >= 40
        await writer.flush(timeout=30)
        assert writer.stats["replayed"] >= 40
    assert await stored_turn_ids(engine) == {f"q{i}": 1 for i in range(50)}
    assert await stored_call_count(engine) == 150
    assert await orphan_calls(engine) == 0
    assert files_in(tmp_path) == []


async def test_an_unreachable_database_leaves_every_turn_in_the_outbox(engine: AsyncEngine, tmp_path: Path) -> None:
    # Port 9 (discard) is closed on this machine: every connection is refused at once.
    dead = make_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere")
    try:
        writer = BatchWriter(dead, outbox_dir=tmp_path, flush_interval=0.01, retry_initial=0.01, retry_max=0.05)
        async with writer:
            for i in range(30):
                await writer.persist(closed_turn(f"d{i}"))
        assert writer.stats["written"] == 0
        assert writer.stats["failed_batches"] >= 1
    finally:
        await dead.dispose()
    segments = pending_segments(tmp_path)
    assert segments
    assert sum(line_count(p) for p in segments) == 30

    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted, report.bad_lines) == (30, 30, [])
    assert await stored_turn_ids(engine) == {f"d{i}": 1 for i in range(30)}
    assert pending_segments(tmp_path) == []
    # A second replay finds nothing to do and changes nothing.
    again = await replay_outbox(engine, tmp_path)
    assert (again.files, again.entries) == (0, 0)
    assert await stored_call_count(engine) == 90


async def test_replay_skips_corrupt_and_torn_lines_and_is_idempotent(engine: AsyncEngine, tmp_path: Path) -> None:
    journal = OutboxJournal(tmp_path, writer_id="dead-writer")
    journal.open()
    rows = [turn_rows(closed_turn(f"r{i}"), usage_type="chat") for i in range(4)]
    good = [encode_entry(make_entry(r)) for r in rows]
    damaged = bytearray(good[1])
    damaged[60] ^= 0x01  # one flipped bit: still a line, no longer the line that was written
    journal.append([good[0], bytes(damaged), b"this is not json\n", good[2], good[3][:-40]])
    journal.close()
    # A turn already in the database is skipped, not duplicated (a different turn under its id would be
    # set aside: tests/integration/test_replay_reused_ids.py).
    async with engine.begin() as conn:
        await turnledger.insert_turn_rows(conn, [rows[0]])

    report = await replay_outbox(engine, tmp_path)
    assert report.entries == 2
    assert report.inserted == 1
    assert [(b.lineno, b.reason.split(" (")[0].split(";")[0]) for b in report.bad_lines] == [
        (2, "checksum mismatch"),
        (3, "not an outbox line"),
        (5, "truncated line"),
    ]
    assert "torn write" in report.bad_lines[-1].reason
    assert await stored_turn_ids(engine) == {"r0": 1, "r2": 1}
    rejected = [name for name in files_in(tmp_path) if name.endswith(".rejected")]
    assert rejected == ["dead-writer.000001.jsonl.rejected"]
    assert line_count(tmp_path / rejected[0]) == 3
    assert pending_segments(tmp_path) == []


async def test_replay_syncs_the_lines_it_sets_aside_before_it_deletes_the_segment(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = OutboxJournal(tmp_path, writer_id="dead-writer")
    journal.open()
    journal.append([encode_entry(make_entry(turn_rows(closed_turn("s0"), usage_type="chat"))), b"not json\n"])
    journal.close()
    segment = tmp_path / "dead-writer.000001.jsonl"
    # What reached the disk, in order: a synced file or directory (by its path), a deleted segment.
    steps = record_syncs_and_deletes(monkeypatch)
    report = await replay_outbox(engine, tmp_path)
    assert (report.inserted, len(report.bad_lines)) == (1, 1)
    deleted = steps.index(("unlink", str(segment)))
    synced = steps[:deleted]
    assert ("fsync", str(tmp_path / "dead-writer.000001.jsonl.rejected")) in synced, steps
    assert ("fsync", str(tmp_path)) in synced, "the new file's name is durable too"
    assert line_count(tmp_path / "dead-writer.000001.jsonl.rejected") == 1


async def test_replay_leaves_a_live_writers_segments_alone(engine: AsyncEngine, tmp_path: Path) -> None:
    live = OutboxJournal(tmp_path, writer_id="live-writer")
    live.open()
    try:
        live.append([encode_entry(make_entry(turn_rows(closed_turn("live"), usage_type="chat")))])
        report = await replay_outbox(engine, tmp_path)
        assert report.entries == 0
        assert [p.name for p in report.skipped_files] == ["live-writer.000001.jsonl"]
        assert await stored_turn_ids(engine) == {}
    finally:
        live.close()
    # Once its writer is gone, the segment is anyone's to replay.
    report = await replay_outbox(engine, tmp_path)
    assert report.inserted == 1
    assert files_in(tmp_path) == []


async def test_a_new_writer_replays_what_a_dead_one_left(engine: AsyncEngine, tmp_path: Path) -> None:
    dead = OutboxJournal(tmp_path, writer_id="crashed")
    dead.open()
    dead.append([encode_entry(make_entry(turn_rows(closed_turn(f"x{i}"), usage_type="chat"))) for i in range(5)])
    # As if the process died: its files stay, its flock goes with its file descriptors.
    dead.rotate()
    assert dead._lock_fh is not None
    dead._lock_fh.close()
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        await writer.persist(closed_turn("fresh"))
        await writer.flush(timeout=30)
        assert writer.stats["replayed"] == 5
    assert await stored_turn_ids(engine) == {**{f"x{i}": 1 for i in range(5)}, "fresh": 1}
    assert files_in(tmp_path) == []


async def test_outbox_lines_keep_money_and_times_exact(tmp_path: Path) -> None:
    rows = turn_rows(closed_turn("exact"), usage_type="chat")
    line = encode_entry(make_entry(rows))
    parsed = json.loads(line)
    assert parsed["entry"]["usage"]["cost_usd"] == {"$dec": "0.0000405"}
    from turnledger.store.outbox import decode_line

    back = entry_rows(decode_line(line))
    assert back.usage == rows.usage
    assert back.calls == rows.calls


async def test_close_spills_what_it_cannot_write_within_the_deadline(engine: AsyncEngine, tmp_path: Path) -> None:
    dead = make_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere")
    try:
        writer = BatchWriter(dead, outbox_dir=tmp_path, flush_interval=5, batch_size=1000, retry_initial=5)
        await writer.start()
        for i in range(10):
            await writer.persist(closed_turn(f"s{i}"))
        await writer.close(timeout=0.5)
    finally:
        await dead.dispose()
    report = await replay_outbox(engine, tmp_path)
    assert report.inserted == 10
    assert await stored_turn_ids(engine) == {f"s{i}": 1 for i in range(10)}


@pytest.mark.parametrize("pg_copy", [True, False], ids=["copy", "insert"])
async def test_the_writer_stores_exactly_what_record_turn_stores(
    engine: AsyncEngine, tmp_path: Path, pg_copy: bool
) -> None:
    via_writer, via_record = closed_turn("via-writer"), closed_turn("via-record")
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01, pg_copy=pg_copy) as writer:
        await writer.persist(via_writer, message_id="m-1")
        await writer.flush(timeout=30)
    async with turnledger.session_factory(engine)() as session:
        await turnledger.record_turn(
            session, via_record, usage_type="chat", message_id="m-1", created_at=via_writer.created_at
        )
        await session.commit()
    written, recorded = await stored_rows(engine, "via-writer"), await stored_rows(engine, "via-record")
    assert written == recorded
    usage, calls = written
    assert usage["cost_usd"] == Decimal("0.0000405")
    assert usage["tags"] == ["bench"]
    assert usage["model_breakdown"]["gpt-4o-mini"]["cost_usd"] == "0.0000405"
    assert [c["cost_usd"] for c in calls] == [Decimal("0.0000135")] * 3


async def test_a_sync_scope_hands_its_turn_over_from_another_thread(engine: AsyncEngine, tmp_path: Path) -> None:
    def sync_code(writer: BatchWriter) -> None:
        with turnledger.scoped_turn(turn_id="from-thread", persist=writer) as turn:
            turn.add(turnledger.TokenCallRecord(call_id="c", model="gpt-4o-mini", cost_usd=Decimal("0.5")))

    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        await asyncio.to_thread(sync_code, writer)
        await asyncio.sleep(0)  # the hand-off is scheduled onto this loop
        await writer.flush(timeout=30)
    assert await stored_turn_ids(engine) == {"from-thread": 1}
    assert await stored_cost(engine) == Decimal("0.5")


async def test_a_failed_hand_off_is_logged_never_raised(engine: AsyncEngine, tmp_path: Path) -> None:
    def broken_rows(turn: turnledger.TurnTokenAccumulator, **options: object) -> turnledger.TurnRows:
        raise RuntimeError("cannot build rows")

    writer = BatchWriter(engine, outbox_dir=tmp_path, row_builder=broken_rows)
    async with writer, turnledger.scoped_turn(turn_id="lost", persist=writer) as turn:
        turn.add(turnledger.TokenCallRecord(call_id="c", model="gpt-4o-mini"))
    assert turn.closed
    assert problem_counts["scoped_turn:persist"] == 1


async def test_turns_handed_over_after_close_still_reach_the_outbox(engine: AsyncEngine, tmp_path: Path) -> None:
    writer = BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01)
    async with writer:
        await writer.persist(closed_turn("in-time"))
    # A request still finishing during shutdown: the writer has closed, the turn must not be lost.
    async with turnledger.scoped_turn(turn_id="late", persist=writer) as turn:
        turn.add(turnledger.TokenCallRecord(call_id="c", model="gpt-4o-mini", cost_usd=Decimal("0.25")))
    assert writer.stats["spilled"] == 1
    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted) == (1, 1)
    assert await stored_turn_ids(engine) == {"in-time": 1, "late": 1}
    assert files_in(tmp_path) == []


async def test_a_live_batch_with_stored_turns_writes_the_new_ones_and_skips_the_rest(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a live batch is COPYed straight into the tables; a turn_id stored already makes
    # that fail as a whole, and the batch must then go the conflict-skipping way: nothing refused,
    # nothing doubled, the new turns written.
    import turnledger.store.entries as entries_module

    direct: list[str] = []
    copy_direct = entries_module._copy_direct

    async def spy(
        driver: object, usage_records: list[tuple[object, ...]], call_records: list[tuple[object, ...]]
    ) -> int:
        try:
            written = await copy_direct(driver, usage_records, call_records)
        except Exception as exc:
            direct.append(type(exc).__name__)
            raise
        direct.append("ok")
        return written

    monkeypatch.setattr(entries_module, "_copy_direct", spy)
    async with BatchWriter(engine, outbox_dir=tmp_path, batch_size=50, flush_interval=0.2) as writer:
        # The same turns again (a different turn under a stored id is set aside: see the test above).
        old, new = closed_turn("old-1"), closed_turn("new-2")
        await writer.persist(old)
        await writer.flush(timeout=30)
        futures = [writer.submit(t) for t in (closed_turn("new-1"), old, new, new)]
        await asyncio.gather(*futures)
        await writer.flush(timeout=30)
        assert writer.stats["written"] == 3
        assert writer.stats["rejected"] == 0
        assert writer.stats["failed_batches"] == 0
    assert await stored_turn_ids(engine) == {"old-1": 1, "new-1": 1, "new-2": 1}
    assert await stored_call_count(engine) == 9
    assert await orphan_calls(engine) == 0
    if engine.dialect.name == "postgresql":
        assert direct == ["ok", "UniqueViolationError"]
    else:
        assert direct == []


class _StuckDisk:
    """The outbox's appends wait until ``release()``, as they do when their thread cannot get the GIL."""

    def __init__(self, writer: BatchWriter) -> None:
        self._go = threading.Event()
        self.appended = 0
        self._append = writer.journal.append
        writer.journal.append = self.append  # type: ignore[method-assign]

    def append(self, lines: list[bytes]) -> int:
        if not self._go.wait(timeout=60):
            raise TimeoutError("the test never released the outbox")
        self.appended += len(lines)
        return self._append(lines)

    def release(self) -> None:
        self._go.set()


async def test_the_database_need_not_wait_for_the_outbox(engine: AsyncEngine, tmp_path: Path) -> None:
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        disk = _StuckDisk(writer)
        # Durable in the database before any outbox append has ended: persist() returns.
        await asyncio.wait_for(asyncio.gather(*(writer.persist(closed_turn(f"fast{i}")) for i in range(12))), 10)
        assert disk.appended == 0
        assert await stored_turn_ids(engine) == {f"fast{i}": 1 for i in range(12)}
        disk.release()
        await writer.flush(timeout=30)
        assert disk.appended == 12
        assert writer.stats["written"] == 12
    # Their outbox lines were never needed: the segment is gone, nothing is stored twice.
    assert files_in(tmp_path) == []
    assert await stored_call_count(engine) == 36


async def test_a_batch_that_fails_before_its_outbox_append_ends_is_replayed_from_it(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    dead = make_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere")
    try:
        writer = BatchWriter(dead, outbox_dir=tmp_path, flush_interval=0.01, retry_initial=0.01, retry_max=0.05)
        async with writer:
            disk = _StuckDisk(writer)
            futures = [writer.submit(closed_turn(f"late{i}")) for i in range(8)]
            for _ in range(500):
                if writer.stats["failed_batches"]:
                    break
                await asyncio.sleep(0.01)
            assert writer.stats["failed_batches"] >= 1
            assert not any(f.done() for f in futures)  # neither the database nor the outbox has them yet
            disk.release()
            await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert writer.stats["written"] == 0
    finally:
        await dead.dispose()
    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted) == (8, 8)
    assert await stored_turn_ids(engine) == {f"late{i}": 1 for i in range(8)}


async def test_a_turn_refused_by_both_then_rescued_at_close_is_counted_spilled_once(tmp_path: Path) -> None:
    dead = make_engine("postgresql+asyncpg://postgres@127.0.0.1:9/nowhere")
    try:
        writer = await BatchWriter(
            dead, outbox_dir=tmp_path, flush_interval=0.01, retry_initial=0.01, retry_max=0.05
        ).start()
        go = threading.Event()
        append = writer.journal.append
        calls: list[int] = []

        def first_fails(lines: list[bytes]) -> int:
            calls.append(len(lines))
            if len(calls) == 1:
                go.wait(30)
                raise OSError(28, "No space left on device")
            return append(lines)

        writer.journal.append = first_fails  # type: ignore[method-assign]
        fut = writer.submit(closed_turn("one"))
        for _ in range(500):
            if writer.stats["failed_batches"]:
                break
            await asyncio.sleep(0.01)
        go.set()  # its batch failed before its append ended; now the append fails too
        with pytest.raises(OSError, match="No space left"):
            await fut
        await writer.close(timeout=0.2)
    finally:
        await dead.dispose()
    # close() put it in the outbox after all: one spill, nothing lost.
    assert (writer.stats["spilled"], writer.stats.get("lost", 0)) == (1, 0)
    assert sum(line_count(p) for p in pending_segments(tmp_path)) == 1


async def test_turns_handed_over_from_another_thread_or_loop_after_close_count_as_handed_over(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # Before: handed_over counted a late turn from the writer's own loop but not one from a sync scope's
    # thread or another loop (spilled 3, handed_over 1 here): handed_over - written - spilled went negative.
    writer = BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01)
    async with writer:
        pass

    def sync_request() -> None:
        with turnledger.scoped_turn(turn_id="late-thread", persist=writer):
            pass

    async def other_loop_request() -> None:
        async with turnledger.scoped_turn(turn_id="late-loop", persist=writer):
            pass

    async with turnledger.scoped_turn(turn_id="late-own-loop", persist=writer):
        pass
    await asyncio.to_thread(sync_request)
    await asyncio.to_thread(asyncio.run, other_loop_request())
    assert (writer.stats["handed_over"], writer.stats["spilled"]) == (3, 3)
    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted) == (3, 3)


async def test_a_persist_from_another_loop_returns_when_the_writers_loop_stops_under_it(tmp_path: Path) -> None:
    """The writer's loop stops (its thread's ``run_forever`` returns, at a sync app's shutdown) while a
    ``persist`` from another loop waits for its turn's outbox append: the append's answer goes to a loop
    that no longer runs. It waited forever (measured: still waiting after 5 s); now it writes the turn to
    an outbox segment of its own and returns, and a replay stores it once."""
    # A sync app: the writer's loop, the request's loop and the test's own each in a thread of their own.
    assert await asyncio.to_thread(_persist_while_the_writers_loop_stops, tmp_path) == (1, 1)


def _persist_while_the_writers_loop_stops(tmp_path: Path) -> tuple[int, int]:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    # No tables: the database never makes the turn durable, only the outbox can.
    writer = BatchWriter(make_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"), outbox_dir=tmp_path / "outbox")
    asyncio.run_coroutine_threadsafe(writer.start(), loop).result()
    appending, stopped = threading.Event(), threading.Event()
    append = writer.journal.append

    def append_once_the_loop_stopped(lines: list[bytes]) -> int:
        appending.set()
        stopped.wait(30)
        return append(lines)

    writer.journal.append = append_once_the_loop_stopped  # type: ignore[method-assign]

    def stop_the_loop_during_the_append() -> None:
        appending.wait(30)
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        stopped.set()

    stopper = threading.Thread(target=stop_the_loop_during_the_append)
    stopper.start()

    async def request() -> None:
        # Only so that a hang fails the test instead of stalling the suite.
        await asyncio.wait_for(writer.persist(closed_turn("t-stopped")), 30)

    try:
        asyncio.run(request())
    finally:
        stopper.join()
        stopped.set()
        loop.run_until_complete(writer.close())
        loop.run_until_complete(writer.engine.dispose())
        loop.close()

    async def replay() -> tuple[int, int]:
        target = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
        try:
            await upgrade_async(target.url)
            report = await replay_outbox(target, tmp_path / "outbox")
            return report.inserted, sum((await stored_turn_ids(target)).values())
        finally:
            await target.dispose()

    return asyncio.run(replay())


_REPO_ROOT = Path(__file__).resolve().parents[2]

_PERSIST_AT_EXIT = """
import asyncio, sys, threading
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.integration.writer_support import closed_turn
from turnledger.store.engine import make_engine
from turnledger.store.writer import BatchWriter

directory = Path(sys.argv[2])
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
writer = BatchWriter(make_engine(f"sqlite+aiosqlite:///{directory / 'empty.db'}"), outbox_dir=directory / "outbox")
asyncio.run_coroutine_threadsafe(writer.start(), loop).result()
appending, release = threading.Event(), threading.Event()
append = writer.journal.append

def held_append(lines):
    appending.set()
    release.wait(30)
    return append(lines)

writer.journal.append = held_append

def request():
    try:
        asyncio.run(asyncio.wait_for(writer.persist(closed_turn("t-exit")), 30))
        print("persist returned")
    except BaseException as exc:
        print("persist raised", type(exc).__name__, exc)
    release.set()

threading.Thread(target=request).start()
appending.wait(30)
loop.call_soon_threadsafe(loop.stop)
"""


async def test_a_persist_still_waiting_at_interpreter_exit_puts_its_turn_in_the_outbox(tmp_path: Path) -> None:
    """A sync app's worker thread still in ``persist`` when the interpreter exits, its writer's loop stopped
    at exit: no worker thread can be started any more ("cannot schedule new futures after interpreter
    shutdown"), so the turn goes to the outbox from the waiting thread itself."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _PERSIST_AT_EXIT, str(_REPO_ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.strip() == "persist returned", done.stdout + done.stderr
    target = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    try:
        await upgrade_async(target.url)
        assert (await replay_outbox(target, tmp_path / "outbox")).inserted == 1
        assert await stored_turn_ids(target) == {"t-exit": 1}
    finally:
        await target.dispose()


_CLOSED_AT_EXIT = """
import asyncio, atexit, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.integration.writer_support import closed_turn
from turnledger.store.engine import make_engine
from turnledger.store.writer import BatchWriter

directory = Path(sys.argv[2])
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
writer = BatchWriter(make_engine(f"sqlite+aiosqlite:///{directory / 'empty.db'}"), outbox_dir=directory / "outbox")
asyncio.run_coroutine_threadsafe(writer.start(), loop).result()

def shutdown():
    try:
        asyncio.run_coroutine_threadsafe(writer.close(), loop).result(60)
        print("closed")
    except BaseException as exc:
        print("close raised", type(exc).__name__, exc)

atexit.register(shutdown)
started = threading.Event()

def late_request():
    started.set()
    time.sleep(0.3)  # the main thread has returned: the interpreter is exiting
    for i in range(3):
        writer.submit_threadsafe(closed_turn(f"t-exit-{i}"))

threading.Thread(target=late_request).start()
started.wait(30)
"""


async def test_a_writer_closed_at_interpreter_exit_keeps_its_turns_in_the_outbox(tmp_path: Path) -> None:
    """The README's sync app: its writer closed from an ``atexit`` handler, turns handed over by a request
    thread still finishing as the interpreter exits, the database unreachable (here: no tables). No worker
    thread can be had then ("cannot schedule new futures after shutdown"): the outbox appends failed,
    ``close()`` raised, and the 3 turns were logged LOST; now the outbox is written from the loop's thread."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CLOSED_AT_EXIT, str(_REPO_ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.strip() == "closed", done.stdout + done.stderr
    assert "LOST" not in done.stderr
    target = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    try:
        await upgrade_async(target.url)
        assert (await replay_outbox(target, tmp_path / "outbox")).inserted == 3
        assert await stored_turn_ids(target) == {f"t-exit-{i}": 1 for i in range(3)}
    finally:
        await target.dispose()
