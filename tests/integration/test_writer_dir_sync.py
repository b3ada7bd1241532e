"""A set-aside whose directory cannot be synced: the turn (or bad line) is set aside once and counted once.

The data of a ``*.rejected`` file is synced first, then its directory (a file created since the
directory's last sync may vanish in a crash). When only the directory sync fails, the entries are in
the file, where every later pass finds them and skips them: they are counted then, by the pass that
put them there, and their other copy (the outbox segment, or memory) is kept until a directory sync
succeeds. The faults are ``os.fsync`` failing on directory descriptors.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.writer_support import closed_turn, poison_rows, stored_turn_ids
from turnledger.store.entries import make_entry
from turnledger.store.lines import encode_line
from turnledger.store.outbox import CorruptLine, OutboxJournal, decode_line, encode_entry
from turnledger.store.record import turn_rows
from turnledger.store.replay import pending_segments
from turnledger.store.writer import _NOT_JOURNALED, BatchWriter, _Turn

pytestmark = pytest.mark.asyncio

_DAMAGED = b'{"damaged line\n'


class _DirectorySync:
    """``os.fsync`` on a directory fails: the next ``after_set_aside`` times it follows the sync of a
    ``*.rejected`` file's data, and every time while ``broken``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, after_set_aside: int = 0, broken: bool = False) -> None:
        self.after_set_aside = after_set_aside
        self.broken = broken
        self.failures = 0
        self._last = ""
        self._fsync = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        follows_set_aside, self._last = self._last.endswith(".rejected"), os.readlink(f"/proc/self/fd/{fd}")
        if stat.S_ISDIR(os.fstat(fd).st_mode) and (self.broken or (self.after_set_aside and follows_set_aside)):
            if not self.broken:
                self.after_set_aside -= 1
            self.failures += 1
            raise OSError(errno.EIO, "Input/output error")
        self._fsync(fd)


def _set_aside(directory: Path) -> list[str]:
    """Every line of every ``*.rejected`` file: its turn_id, or ``"<bad line>"``."""

    def what(line: bytes) -> str:
        try:
            return str(decode_line(line)["turn_id"])
        except CorruptLine:
            return "<bad line>"

    return [what(line) for p in sorted(directory.glob("*.rejected")) for line in p.read_bytes().splitlines()]


def _writer(engine: AsyncEngine, directory: Path) -> BatchWriter:
    return BatchWriter(
        engine, outbox_dir=directory, batch_size=4, flush_interval=0.05, retry_initial=0.01, retry_max=0.05
    )


async def _until(writer: BatchWriter, stat_name: str, count: int) -> None:
    for _ in range(1000):
        if writer.stats[stat_name] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{stat_name} never reached {count}: {dict(writer.stats)}")


async def test_a_turn_refused_live_whose_directory_sync_failed_is_counted_once(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = _DirectorySync(monkeypatch, after_set_aside=1)
    rows = [turn_rows(closed_turn("g1"), usage_type="chat"), poison_rows(engine)]
    async with _writer(engine, tmp_path) as writer:
        await asyncio.gather(*(writer.submit_rows(r) for r in rows))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    assert fault.failures == 1
    assert await stored_turn_ids(engine) == {"g1": 1}
    # Its segment's replay found it in <writer>.rejected: skipped, not set aside or counted again.
    assert _set_aside(tmp_path) == ["poison"]
    assert stats["rejected"] == 1
    assert pending_segments(tmp_path) == []


async def test_a_turn_only_memory_holds_is_set_aside_once_however_often_the_directory_sync_fails(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory cannot be synced at all: the outbox cannot start a segment (the turns stay in
    # memory) and the refused turn's set-aside cannot be made durable. The writer retries.
    fault = _DirectorySync(monkeypatch, broken=True)
    rows = [turn_rows(closed_turn("g1"), usage_type="chat"), poison_rows(engine)]
    async with _writer(engine, tmp_path) as writer:
        # Told they are not durable (the outbox failed), unless the database took them first.
        await asyncio.gather(*(writer.submit_rows(r) for r in rows), return_exceptions=True)
        await _until(writer, "failed_batches", 3)
        fault.broken = False
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    assert await stored_turn_ids(engine) == {"g1": 1}
    assert _set_aside(tmp_path) == ["poison"]
    assert (stats["rejected"], stats.get("lost", 0)) == (1, 0)
    assert pending_segments(tmp_path) == []


async def test_a_set_aside_turn_only_memory_holds_is_not_counted_lost_when_the_outbox_fails_at_close(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Refused, and in <writer>.rejected (its data synced), but the directory never syncs: memory keeps
    # it until a directory sync succeeds. None does before close(), whose last attempt to put it in the
    # outbox fails too. It is set aside, its directory not synced: not lost.
    _DirectorySync(monkeypatch, broken=True)
    writer = await _writer(engine, tmp_path).start()
    with pytest.raises(OSError, match="Input/output error"):
        await writer.submit_rows(poison_rows(engine))  # the outbox could not take it
    await _until(writer, "failed_batches", 2)
    with caplog.at_level(logging.WARNING, logger="turnledger.writer"):
        await writer.close()
    assert _set_aside(tmp_path) == ["poison"]
    assert (writer.stats["rejected"], writer.stats.get("lost", 0)) == (1, 0)
    assert "LOST" not in caplog.text
    [warning] = [
        r.getMessage() for r in caplog.records if r.name == "turnledger.writer" and "'poison'" in r.getMessage()
    ]
    assert "set aside" in warning
    assert "not synced" in warning


async def test_a_set_aside_turn_memory_has_no_room_for_is_not_counted_lost(
    engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A failed batch hands a set-aside turn back to memory, which holds max_queue turns already: it is
    # set aside all the same, its directory not synced. (Built by hand: the writer gets there only when
    # turns queue up between the failed directory sync and the hand-back.)
    writer = BatchWriter(engine, outbox_dir=tmp_path, max_queue=0)
    entry = make_entry(poison_rows(engine))
    turn = _Turn(entry, encode_line(entry), asyncio.get_running_loop().create_future(), segment=_NOT_JOURNALED)
    turn.set_aside = True
    with caplog.at_level(logging.WARNING, logger="turnledger.writer"):
        writer._spill([turn])
    assert writer.stats.get("lost", 0) == 0
    assert "LOST" not in caplog.text
    [warning] = [r.getMessage() for r in caplog.records if r.name == "turnledger.writer"]
    assert "'poison' is set aside" in warning
    assert "not synced" in warning


def _dead_writer(directory: Path, lines: list[bytes]) -> None:
    journal = OutboxJournal(directory, writer_id="dead-a")
    journal.open()
    journal.append(lines)
    journal.rotate()
    assert journal._lock_fh is not None
    journal._lock_fh.close()  # the process died: its flock went with it


@pytest.mark.parametrize("what", ["poison", "<bad line>"])
async def test_a_replay_whose_directory_sync_failed_counts_what_it_set_aside_once(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    good = [encode_entry(make_entry(turn_rows(closed_turn(t), usage_type="chat"))) for t in ("a1", "a2")]
    first = _DAMAGED if what == "<bad line>" else encode_entry(make_entry(poison_rows(engine)))
    _dead_writer(tmp_path, [first, *good])
    fault = _DirectorySync(monkeypatch, after_set_aside=1)
    async with _writer(engine, tmp_path) as writer:
        await _until(writer, "failed_batches", 1)
        # The outboxes of others are tried again once a write succeeds: a live turn's.
        await writer.persist(closed_turn("live"))
        await writer.flush(timeout=30)
        stats = dict(writer.stats)
    assert fault.failures == 1
    assert await stored_turn_ids(engine) == {"a1": 1, "a2": 1, "live": 1}
    assert _set_aside(tmp_path) == [what]
    assert (stats["rejected"], stats["bad_lines"]) == ((1, 0) if what == "poison" else (0, 1))
    assert pending_segments(tmp_path) == []
