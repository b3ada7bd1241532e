"""An append to the outbox or to a ``.rejected`` file that fails leaves none of its bytes behind.

A torn tail left in a segment glued the next, acknowledged, entry onto it (one undecodable line: both
lost); bytes whose fsync failed, left in a ``.rejected`` file, were later trusted as set aside while the
segment holding their only durable copy was deleted.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.writer_support import closed_turn
from turnledger.store import outbox, rejects
from turnledger.store.entries import make_entry
from turnledger.store.lines import encode_line, unpack_entry
from turnledger.store.outbox import BadLine, OutboxJournal, read_segment
from turnledger.store.record import turn_rows
from turnledger.store.rejects import append_durably


def _io_error(*args: Any) -> None:
    """Stands in for an I/O call (fsync, ftruncate, a directory sync) that fails as a bad disk does."""
    raise OSError(errno.EIO, "Input/output error")


def _line(turn_id: str) -> bytes:
    return encode_line(make_entry(turn_rows(closed_turn(turn_id), usage_type="chat")))


class _HalfThenNoSpace:
    """A segment file whose next write gets half its bytes out, then fails as a full disk does."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.armed = True

    def write(self, data: bytes) -> int:
        if self.armed:
            self.armed = False
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self.fh.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def _turn_ids(directory: Path) -> tuple[list[str], list[BadLine]]:
    ids: list[str] = []
    bad: list[BadLine] = []
    for path in sorted(directory.glob("w.*.jsonl")):
        for item in read_segment(path):
            if isinstance(item, BadLine):
                bad.append(item)
            else:
                entry = unpack_entry(item)
                assert entry is not None
                ids.append(entry["turn_id"])
    return ids, bad


def test_a_torn_append_is_cut_off_and_the_next_acknowledged_entry_reads_back(tmp_path: Path) -> None:
    journal = OutboxJournal(tmp_path, writer_id="w")
    journal.open()
    journal.append([_line("first")])
    journal._fh = _HalfThenNoSpace(journal._fh)  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space"):
        journal.append([_line("torn")])  # the writer keeps this turn in memory: it was told so
    journal.append([_line("acknowledged")])
    journal.close()
    ids, bad = _turn_ids(tmp_path)
    assert (ids, bad) == (["first", "acknowledged"], [])


def test_an_append_whose_fsync_fails_leaves_no_bytes_in_its_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = OutboxJournal(tmp_path, writer_id="w")
    journal.open()
    seq = journal.append([_line("first")])
    size = journal.segment_path(seq).stat().st_size
    monkeypatch.setattr(os, "fsync", _io_error)
    with pytest.raises(OSError, match="Input/output"):
        journal.append([_line("unsynced")])
    monkeypatch.undo()
    assert journal.segment_path(seq).stat().st_size == size
    assert journal.active_seq == 0  # the next append starts a new segment
    journal.append([_line("next")])
    journal.close()
    assert _turn_ids(tmp_path) == (["first", "next"], [])


def test_a_set_aside_whose_fsync_fails_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.rejected"
    append_durably(path, b"earlier\n")
    monkeypatch.setattr(os, "fsync", _io_error)
    with pytest.raises(OSError, match="Input/output"):
        append_durably(path, b"refused turn\n")
    monkeypatch.undo()
    assert path.read_bytes() == b"earlier\n"


def test_a_set_aside_after_a_torn_tail_starts_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "w.rejected"
    path.write_bytes(b"earlier\ntorn, no newline")  # a crash mid-append, or a failed one not cut off
    append_durably(path, b"refused turn\n")
    assert path.read_bytes().splitlines() == [b"earlier", b"torn, no newline", b"refused turn"]


def test_a_failed_set_aside_that_cannot_be_cut_off_is_moved_out_of_the_replays_sight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.rejected"
    append_durably(path, b"earlier\n")

    monkeypatch.setattr(os, "fsync", _io_error)
    monkeypatch.setattr(os, "ftruncate", _io_error)
    with pytest.raises(OSError, match="Input/output"):
        append_durably(path, b"refused turn\n")
    # A replay would take what <writer>.rejected holds for safely set aside: this file is no longer it.
    assert not path.exists()
    [kept] = tmp_path.glob("w.rejected.unsynced-*")
    assert kept.read_bytes() == b"earlier\nrefused turn\n"


def test_no_entry_goes_into_a_segment_whose_directory_entry_was_not_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = OutboxJournal(tmp_path, writer_id="w")
    journal.open()
    real_fsync_dir = outbox.fsync_dir
    synced: list[int] = []

    def fsync_dir(directory: Path) -> None:
        if not synced:
            synced.append(0)
            _io_error()
        real_fsync_dir(directory)
        synced.append(1)

    monkeypatch.setattr(outbox, "fsync_dir", fsync_dir)
    with pytest.raises(OSError, match="Input/output"):
        journal.append([_line("unsynced directory")])  # the writer keeps it in memory: it was told so
    assert (journal.active_seq, list(tmp_path.glob("w.*.jsonl"))) == (0, [])
    seq = journal.append([_line("next")])
    assert synced == [0, 1]  # the segment "next" went into had its directory entry synced first
    journal.close()
    assert _turn_ids(tmp_path) == (["next"], [])
    assert seq == 2


def test_a_set_aside_to_a_file_that_takes_no_bytes_fails_instead_of_spinning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class _TakesNothing:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def write(self, data: bytes) -> int:
            return 0

        def __enter__(self) -> _TakesNothing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

    path = tmp_path / "w.rejected"
    append_durably(path, b"earlier\n")
    real_open = open
    monkeypatch.setattr(rejects, "open", lambda *a, **k: _TakesNothing(real_open(*a, **k)), raising=False)
    with pytest.raises(OSError, match="no byte written"):
        append_durably(path, b"refused turn\n")
    assert path.read_bytes() == b"earlier\n"


def test_a_segment_that_was_there_already_is_never_removed_for_a_failed_directory_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = OutboxJournal(tmp_path, writer_id="w")
    earlier.open()
    earlier.append([_line("acknowledged")])
    earlier.close()

    reopened = OutboxJournal(tmp_path, writer_id="w")  # a caller reusing its writer id
    reopened.open()
    monkeypatch.setattr(outbox, "fsync_dir", _io_error)
    with pytest.raises(OSError, match="Input/output"):
        reopened.append([_line("next")])
    assert _turn_ids(tmp_path) == (["acknowledged"], [])
