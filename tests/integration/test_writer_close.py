"""``BatchWriter.close()`` cut short by its timeout: nothing of the writer touches the outbox once it returns.

Replay reads a segment in a thread. Cancelling the task that waits for it does not stop the thread:
were the writer's lock released while that thread still ran, another replay could take the segment
and both would set its bad lines aside (or one delete the segment under the other). The thread here
is held by a stand-in for the segment's loading until either the replay asks it to stop or the lock
is released, whichever comes first: deterministic, no timing involved.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.writer_support import closed_turn, leave_dead_writers_segment, outbox_lines, stored_turn_ids
from turnledger.store import replay
from turnledger.store.entries import Entry, WriteFn
from turnledger.store.outbox import Claim
from turnledger.store.record import turn_rows
from turnledger.store.replay import pending_segments, replay_outbox
from turnledger.store.writer import BatchWriter

pytestmark = pytest.mark.asyncio

_DAMAGED = b'{"damaged line\n'
_HANG_LIMIT = 30.0
"""Only so that a broken test fails instead of hanging: never reached when the code is right or wrong."""


def _set_aside(directory: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(directory.glob("*.rejected"))]


class _FirstWriteFails:
    def __init__(self, write: WriteFn) -> None:
        self._write = write
        self.calls = 0

    async def __call__(self, entries: Sequence[Entry]) -> int:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionResetError("the link dropped")
        return await self._write(entries)


class _HeldLoad:
    """Holds the replay's loading of a segment in its thread; the segment gains a damaged line meanwhile
    (as a torn write would leave it), so that loading it sets a line aside in ``<segment>.rejected``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.lock_released = threading.Event()
        self.finished = threading.Event()
        self._load = replay._load
        monkeypatch.setattr(replay, "_load", self)

    def __call__(self, path: Path, report: replay.ReplayReport, *rest: Any) -> Any:
        if self.entered.is_set():
            return self._load(path, report, *rest)  # the next replay's
        self.entered.set()
        # The replay's own stop request, if it has one; otherwise held until the lock is gone.
        stop = next((r for r in rest if isinstance(r, threading.Event)), None)
        assert (stop or self.lock_released).wait(_HANG_LIMIT)
        try:
            with open(path, "ab") as fh:
                fh.write(_DAMAGED)
            return self._load(path, report, *rest)
        finally:
            self.finished.set()


async def test_close_cut_short_returns_only_once_its_replay_thread_has_stopped(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldLoad(monkeypatch)
    writer = BatchWriter(
        engine, outbox_dir=tmp_path, flush_interval=0.01, retry_initial=0.01, retry_max=0.05, replay_others=False
    )
    # The first live write fails: its turns are left to the outbox, whose replay the writer then starts.
    writer._write_fresh = _FirstWriteFails(writer._write_fresh)
    journal_close = writer.journal.close
    reader_running_at_release: list[bool] = []

    def close_journal() -> None:
        journal_close()  # the lock is released here: from now on a replay may take the segments
        reader_running_at_release.append(held.entered.is_set() and not held.finished.is_set())
        held.lock_released.set()

    monkeypatch.setattr(writer.journal, "close", close_journal)
    await writer.start()
    await asyncio.gather(*(writer.submit(closed_turn(f"c{i}")) for i in range(3)))
    assert await asyncio.to_thread(held.entered.wait, _HANG_LIMIT)

    await writer.close(timeout=0)
    assert reader_running_at_release == [False]
    assert held.finished.is_set()
    # Stopped before it set the damaged line aside: that is left to the next replay, with the turns.
    assert _set_aside(tmp_path) == []
    [segment] = pending_segments(tmp_path)
    assert segment.read_bytes().endswith(_DAMAGED)

    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted, len(report.bad_lines)) == (3, 3, 1)
    assert await stored_turn_ids(engine) == {f"c{i}": 1 for i in range(3)}
    assert _set_aside(tmp_path) == [_DAMAGED]
    assert pending_segments(tmp_path) == []


async def test_a_replay_cancelled_while_loading_a_segment_keeps_its_claim_until_the_thread_has_stopped(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _HeldLoad(monkeypatch)
    rows = [turn_rows(closed_turn(f"d{i}"), usage_type="chat") for i in range(3)]
    leave_dead_writers_segment(tmp_path, outbox_lines(*rows), writer_id="dead-a")
    release = Claim.release
    reader_running_at_release: list[bool] = []

    def release_claim(claim: Claim, *, remove_lock: bool) -> None:
        release(claim, remove_lock=remove_lock)
        reader_running_at_release.append(held.entered.is_set() and not held.finished.is_set())
        held.lock_released.set()

    monkeypatch.setattr(Claim, "release", release_claim)
    # As a writer's replay of the outboxes others left, cut short by close(), or `turnledger replay` by ^C.
    task = asyncio.create_task(replay_outbox(engine, tmp_path))
    assert await asyncio.to_thread(held.entered.wait, _HANG_LIMIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reader_running_at_release == [False]
    assert _set_aside(tmp_path) == []

    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted, len(report.bad_lines)) == (3, 3, 1)
    assert await stored_turn_ids(engine) == {f"d{i}": 1 for i in range(3)}
    assert _set_aside(tmp_path) == [_DAMAGED]
    assert pending_segments(tmp_path) == []


class _UnstoppableLoad:
    """The replay's loading of a segment caught in an append it cannot leave (a slow fsync): it does not
    see the stop request, and goes on only when ``proceed`` is set. Then it appends a damaged line to the
    segment and loads it, setting that line aside in ``<segment>.rejected``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.finished = threading.Event()
        self._load = replay._load
        monkeypatch.setattr(replay, "_load", self)

    def __call__(self, path: Path, report: replay.ReplayReport, stop: threading.Event) -> Any:
        if self.entered.is_set():
            return self._load(path, report, stop)  # the next replay's
        self.entered.set()
        assert self.proceed.wait(_HANG_LIMIT)
        try:
            with open(path, "ab") as fh:
                fh.write(_DAMAGED)
            return self._load(path, report, threading.Event())  # past its stop checks
        finally:
            self.finished.set()


async def test_a_replay_whose_every_task_is_cancelled_keeps_its_claim_until_the_thread_has_stopped(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What asyncio.run does on its way out (a second ^C of `turnledger replay`, or a writer never closed):
    # every task is cancelled, the replay's and whatever task runs its thread, at once.
    held = _UnstoppableLoad(monkeypatch)
    rows = [turn_rows(closed_turn(f"e{i}"), usage_type="chat") for i in range(3)]
    leave_dead_writers_segment(tmp_path, outbox_lines(*rows), writer_id="dead-a")
    release = Claim.release
    reader_running_at_release: list[bool] = []

    def release_claim(claim: Claim, *, remove_lock: bool) -> None:
        release(claim, remove_lock=remove_lock)
        reader_running_at_release.append(held.entered.is_set() and not held.finished.is_set())
        held.proceed.set()

    monkeypatch.setattr(Claim, "release", release_claim)
    task = asyncio.create_task(replay_outbox(engine, tmp_path))
    assert await asyncio.to_thread(held.entered.wait, _HANG_LIMIT)
    for other in asyncio.all_tasks():
        if other is not asyncio.current_task():
            other.cancel()
    # Loop iterations, not time: a replay that does not wait for its thread lets its claim go in a few.
    for _ in range(50):
        await asyncio.sleep(0)
    held.proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reader_running_at_release == [False]

    # The damaged line the thread set aside before it stopped is skipped by the next replay, not set aside again.
    report = await replay_outbox(engine, tmp_path)
    assert (report.entries, report.inserted, report.set_aside_before) == (3, 3, 1)
    assert await stored_turn_ids(engine) == {f"e{i}": 1 for i in range(3)}
    assert _set_aside(tmp_path) == [_DAMAGED]
    assert pending_segments(tmp_path) == []
