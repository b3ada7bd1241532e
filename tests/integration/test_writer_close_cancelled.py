"""``BatchWriter.close()`` cancelled: it still shuts down (bounded), then raises the cancellation.

A cancelled ``close()`` cuts the drain short, as its timeout would, but still waits for what is under
way in a thread (an outbox append, a replay's segment loading) before it releases the outbox lock, and
only then raises: every turn handed over is durable or told it is not, and no thread of the writer
touches the outbox any more. The threads are held by Events; no timing is involved.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.writer_support import closed_turn, leave_dead_writers_segment, outbox_lines, stored_turn_ids
from turnledger.store import replay
from turnledger.store.outbox import claim_writer
from turnledger.store.record import turn_rows
from turnledger.store.replay import pending_segments, replay_outbox
from turnledger.store.writer import BatchWriter

pytestmark = pytest.mark.asyncio

_HANG_LIMIT = 30.0
"""Only so that a broken test fails instead of hanging: never reached when the code is right."""


class _HeldLoad:
    """Holds the replay's loading of a segment in its thread: until the replay asks it to stop, or, if
    ``unstoppable`` (caught in a slow read it cannot leave), until ``proceed`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, unstoppable: bool) -> None:
        self.unstoppable = unstoppable
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.finished = threading.Event()
        self._load = replay._load
        monkeypatch.setattr(replay, "_load", self)

    def __call__(self, path: Path, report: replay.ReplayReport, stop: threading.Event) -> Any:
        if self.entered.is_set():
            return self._load(path, report, stop)  # the next replay's
        self.entered.set()
        assert (self.proceed if self.unstoppable else stop).wait(_HANG_LIMIT)
        try:
            return self._load(path, report, stop)
        finally:
            self.finished.set()


class _HeldSegmentSync:
    """Holds the first fsync of an outbox segment's data (a stalled disk) until ``proceed`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.finished = threading.Event()
        self._fsync = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl") and not self.entered.is_set():
            self.entered.set()
            assert self.proceed.wait(_HANG_LIMIT)
            try:
                self._fsync(fd)
            finally:
                self.finished.set()
            return
        self._fsync(fd)


def _dead_writer(directory: Path, turn_ids: list[str]) -> None:
    rows = [turn_rows(closed_turn(t), usage_type="chat") for t in turn_ids]
    leave_dead_writers_segment(directory, outbox_lines(*rows), writer_id="dead-a")


async def _each_turn_stored_once_by_a_replay(engine: AsyncEngine, directory: Path, turn_ids: list[str]) -> None:
    """What the cancelled close left in the outbox: every turn, written once by the next replay."""
    report = await replay_outbox(engine, directory)
    assert (report.entries, report.inserted) == (len(turn_ids), len(turn_ids))
    assert await stored_turn_ids(engine) == dict.fromkeys(turn_ids, 1)
    assert pending_segments(directory) == []


class _LockWatch:
    """Records, each time the writer's outbox lock is released, whether the held thread was still running."""

    def __init__(self, writer: BatchWriter, running: threading.Event, finished: threading.Event) -> None:
        self.thread_running_at_release: list[bool] = []
        journal_close = writer.journal.close

        def close_journal() -> None:
            journal_close()
            self.thread_running_at_release.append(running.is_set() and not finished.is_set())

        writer.journal.close = close_journal  # type: ignore[method-assign]


async def _until(condition: Any) -> None:
    # Loop iterations, not time: the close() task gets to the point the test means to cancel it at.
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never got there")


def _lock_released(directory: Path, writer_id: str) -> bool:
    claim = claim_writer(directory, writer_id)
    if claim is None:
        return False
    claim.release(remove_lock=False)
    return True


async def test_close_cancelled_while_it_waits_for_its_cancelled_write_task_raises_the_cancellation(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write task, cancelled by close(timeout=0), ends with CancelledError: that is close()'s doing.
    # A cancellation of close() itself meanwhile is the caller's, and must reach the caller.
    held = _HeldLoad(monkeypatch, unstoppable=True)
    _dead_writer(tmp_path, ["d1"])
    writer = BatchWriter(engine, outbox_dir=tmp_path)
    watch = _LockWatch(writer, held.entered, held.finished)
    await writer.start()
    assert await asyncio.to_thread(held.entered.wait, _HANG_LIMIT)
    write_task = writer._tasks[1]
    closing = asyncio.create_task(writer.close(timeout=0))
    await _until(lambda: write_task.cancelling() > 0)

    closing.cancel()
    held.proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert closing.cancelled()
    assert watch.thread_running_at_release == [False]
    assert write_task.done()
    assert _lock_released(tmp_path, writer.writer_id)

    await _each_turn_stored_once_by_a_replay(engine, tmp_path, ["d1"])


async def test_close_cancelled_while_it_drains_cuts_the_drain_short_and_still_shuts_down(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write task is replaying an outbox another writer left, well within close()'s timeout. The
    # cancellation stops that replay (its thread is asked to stop, and is waited for), as the timeout
    # would have; the lock is released before close() raises.
    held = _HeldLoad(monkeypatch, unstoppable=False)
    _dead_writer(tmp_path, ["d1", "d2"])
    writer = BatchWriter(engine, outbox_dir=tmp_path)
    watch = _LockWatch(writer, held.entered, held.finished)
    await writer.start()
    assert await asyncio.to_thread(held.entered.wait, _HANG_LIMIT)
    write_task = writer._tasks[1]
    # A timeout the held thread would not outlast: only the cancellation can stop the replay.
    closing = asyncio.create_task(writer.close(timeout=10 * _HANG_LIMIT))
    await _until(lambda: writer._closing)

    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert watch.thread_running_at_release == [False]
    assert write_task.done()
    assert _lock_released(tmp_path, writer.writer_id)

    await _each_turn_stored_once_by_a_replay(engine, tmp_path, ["d1", "d2"])


async def test_close_cancelled_during_an_outbox_append_leaves_no_turn_waiting_and_releases_the_lock(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # max_queue=0: the database does not take the turn live, the outbox append (held in its fsync) is its
    # only way to durability. close() is cancelled while it waits for that append.
    sync = _HeldSegmentSync(monkeypatch)
    writer = BatchWriter(engine, outbox_dir=tmp_path, max_queue=0, replay_others=False)
    watch = _LockWatch(writer, sync.entered, sync.finished)
    await writer.start()
    persisted = writer.submit(closed_turn("k1"))
    assert await asyncio.to_thread(sync.entered.wait, _HANG_LIMIT)
    closing = asyncio.create_task(writer.close(timeout=_HANG_LIMIT))
    await _until(lambda: writer._closing)

    closing.cancel()
    sync.proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    # Durable in the outbox, and told so; the writer is done with the outbox.
    assert persisted.done()
    assert persisted.exception() is None
    assert all(task.done() for task in writer._tasks)
    assert watch.thread_running_at_release == [False]
    assert _lock_released(tmp_path, writer.writer_id)

    await _each_turn_stored_once_by_a_replay(engine, tmp_path, ["k1"])


async def test_a_second_close_returns_only_once_the_first_has_shut_down(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `async with writer` exiting while another task closes the writer: either close() returning
    # means the writer is done with the outbox.
    held = _HeldLoad(monkeypatch, unstoppable=True)
    _dead_writer(tmp_path, ["d1"])
    writer = BatchWriter(engine, outbox_dir=tmp_path)
    watch = _LockWatch(writer, held.entered, held.finished)
    await writer.start()
    assert await asyncio.to_thread(held.entered.wait, _HANG_LIMIT)
    first = asyncio.create_task(writer.close(timeout=0))
    await _until(lambda: writer._closing)
    second = asyncio.create_task(writer.close())
    thread_finished_when_second_returned: list[bool] = []
    second.add_done_callback(lambda _: thread_finished_when_second_returned.append(held.finished.is_set()))
    # Loop iterations, not time: a second close() that does not wait returns in one.
    for _ in range(50):
        await asyncio.sleep(0)
    held.proceed.set()
    await asyncio.gather(first, second)
    assert thread_finished_when_second_returned == [True]
    assert watch.thread_running_at_release == [False]
    assert _lock_released(tmp_path, writer.writer_id)
