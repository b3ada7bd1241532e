"""Poison entries: a batch the database refuses for its data is split until the refused turns are isolated.

One turn whose rows the database refuses (a string too long for its column, a NUL character on
PostgreSQL, a broken constraint) would otherwise fail every batch it is in, forever, and hold up
every turn queued behind it. A *data* error (SQLSTATE class 22 or 23; SQLite's IntegrityError or
DataError) is about the rows, so the batch is halved and each half written on its own until every
refused entry stands alone; those are set aside in a ``*.rejected`` file (one outbox line each, fsync'd,
a warning naming the turn) and the rest is written. Any other error (a dropped link, a timeout, missing
tables) is about the database, not the rows: it propagates and the batch is retried as a whole.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import DataError, IntegrityError

from turnledger.errors import TurnledgerError
from turnledger.store.entries import Entry, WriteFn, is_entry
from turnledger.store.lines import unpack_entry
from turnledger.store.outbox import CorruptLine, decode_line, encode_entry, fsync_dir, segment_writer

logger = logging.getLogger("turnledger.outbox")

_DATA_SQLSTATE_CLASSES = frozenset({"22", "23"})

RejectFn = Callable[[Sequence[Entry], BaseException], None]
"""Sets refused entries aside (durably) before the caller forgets them."""


def is_data_error(exc: BaseException) -> bool:
    """Whether the database refused the rows themselves (as opposed to being unreachable or unready)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # OverflowError: a value too large for its column, refused by sqlite3 before the database sees it.
        if isinstance(current, DataError | IntegrityError | OverflowError):
            return True
        sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _DATA_SQLSTATE_CLASSES:
            return True
        current = current.__cause__ or getattr(current, "orig", None)
    return False


async def write_isolating(
    write: WriteFn,
    entries: Sequence[Entry],
    reject: RejectFn,
    inserted: Callable[[int], None],
    settled: Callable[[int], None] | None = None,
) -> None:
    """``write(entries)``; on a data error, halve until the refused entries are alone and ``reject`` them.

    ``inserted`` gets the number of new turns of each write as it commits, not a total at the end:
    should a later half fail, the halves written before it stay stored and the retry finds them
    stored (inserted=0), so they are counted then or never. A non-data error propagates (what was
    written before it stays written; writing it again is a no-op by ``turn_id``).

    ``settled`` gets the number of entries of each write that committed, or of each refused entry once
    ``reject`` returned. Halves are written in order, so the entries settled always are the first
    ones: after a failure, ``entries[:total settled]`` are done with, and only the rest is left to retry.
    """
    try:
        new = await write(entries)
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if len(entries) == 1:
            reject(entries, exc)
            if settled is not None:
                settled(1)
            return
    else:
        inserted(new)
        if settled is not None:
            settled(len(entries))
        return
    middle = len(entries) // 2
    await write_isolating(write, entries[:middle], reject, inserted, settled)
    await write_isolating(write, entries[middle:], reject, inserted, settled)


def rejected_path(path: Path) -> Path:
    """Where entries refused from ``path`` (a segment, or a writer's base name) are set aside."""
    return path.with_name(path.name + ".rejected")


class DirectoryNotSynced(OSError):
    """An append whose data was synced, but not its file's directory.

    The entries are in the file, where every later pass (in this process or the next) finds them and
    skips them: they are set aside, and counted now or never. But a file created since the directory's
    last sync may still vanish in a crash: their other copy is kept until a directory sync succeeds.
    """


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and sync it and its directory: the caller forgets, or deletes, the
    only other copy next. The directory every time: whoever created the file may have died before
    syncing it. Raises :class:`DirectoryNotSynced` if only the directory's sync failed."""
    # Unbuffered: no bytes of a failed append may linger in a buffer and be written on close. Read too:
    # the last byte tells whether an earlier append was torn.
    with open(path, "a+b", buffering=0) as fh:
        start = os.fstat(fh.fileno()).st_size
        try:
            if data and start and os.pread(fh.fileno(), 1, start - 1) != b"\n":
                # A torn tail (a crash mid-append, or a failed one that could not be cut off) stays a bad
                # line of its own rather than swallow these entries.
                data = b"\n" + data
            view = memoryview(data)
            while view:
                written = fh.write(view)
                if not written:  # a regular file takes a byte or raises: never spin on one that does not
                    raise OSError(errno.EIO, f"no byte written to {path}")
                view = view[written:]
            os.fsync(fh.fileno())
        except BaseException:
            # Bytes whose write or fsync failed may sit in the page cache (marked clean by a failed
            # fsync) and be gone after a reboot: cut them off, so no later replay reads them as set aside.
            try:
                os.ftruncate(fh.fileno(), start)
            except OSError:
                _move_aside(path)
            raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise DirectoryNotSynced(exc.errno, f"{exc.strerror} (syncing the directory of {path.name})") from exc


def _move_aside(path: Path) -> None:
    """A set-aside file whose last append could be neither synced nor cut off: out of the replays' sight
    (they would take that append for safely set aside), kept for a person, never deleted. Its earlier
    entries were synced; replays no longer see them either, so they may set those aside again."""
    target = path.with_name(f"{path.name}.unsynced-{time.time_ns()}")
    try:
        os.replace(path, target)
    except OSError:
        logger.error("turnledger: the last entries appended to %s may not be on disk; it could not be moved", path)
        return
    logger.error(
        "turnledger: the last entries appended to %s may not be on disk; the file is moved aside to %s (keep it)",
        path,
        target.name,
    )


def set_aside(path: Path, entries: Sequence[Entry], exc: BaseException) -> None:
    """Append refused entries to ``path`` (durably: the caller then forgets them) and name each turn.

    :class:`DirectoryNotSynced`: they are set aside (and named), but their other copy is still needed.
    """
    try:
        append_durably(path, b"".join(encode_entry(e) for e in entries))
    except DirectoryNotSynced:
        _name_refused(path, entries, exc)  # a retry finds them in the file and skips them: named now or never
        raise
    _name_refused(path, entries, exc)


def _name_refused(path: Path, entries: Sequence[Entry], exc: BaseException) -> None:
    for entry in entries:
        logger.warning(
            "turnledger: the database refused turn %r (%s); its rows are set aside in %s",
            entry.get("turn_id"),
            # turnledger's own errors never quote row values; a driver's might, so only its class is named.
            exc if isinstance(exc, TurnledgerError) else type(exc).__name__,
            path,
        )


def _as_line(raw: bytes) -> bytes:
    # A torn last line is set aside with the newline it lacked.
    return raw if raw.endswith(b"\n") else raw + b"\n"


@dataclass(slots=True)
class SetAsideBefore:
    """What earlier passes set aside from one segment: read from its ``.rejected`` files before a replay.

    A replay cut short (the link dropped) runs again over the whole segment, in this process or in the
    next one; a writer's segment may hold turns the writer already refused live (in ``<writer>.rejected``).
    Without this, each pass would set the same bad lines and refused turns aside, and count them, again.
    """

    files: list[Path] = field(default_factory=list)
    """The ``.rejected`` files read: synced again (:meth:`sync`) before a segment relying on them is deleted."""
    lines: Counter[bytes] = field(default_factory=Counter)
    """The lines of ``<segment>.rejected``, bad lines included, as many times as they are there."""
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    """Refused entries of ``<segment>.rejected`` and ``<writer>.rejected``, by turn_id."""
    relied_on: bool = False

    @classmethod
    def read(cls, segment: Path) -> SetAsideBefore:
        found = cls()
        own = rejected_path(segment)
        writer = segment_writer(segment)
        candidates = [own] + ([rejected_path(segment.with_name(writer))] if writer is not None else [])
        for path in candidates:
            try:
                fh = open(path, "rb")  # noqa: SIM115  closed below; a missing file is the usual case
            except FileNotFoundError:
                continue
            found.files.append(path)
            with fh:
                for raw in fh:
                    if path == own:
                        found.lines[_as_line(raw)] += 1
                    found._add_entry(raw)
        return found

    def _add_entry(self, raw: bytes) -> None:
        try:
            entry = unpack_entry(decode_line(raw))
        except CorruptLine:
            return
        if entry is not None and is_entry(entry):
            self.entries.setdefault(entry["turn_id"], []).append(entry)

    def take_line(self, raw: bytes) -> bool:
        """Whether this bad line is set aside already (each line there answers for one line of the segment)."""
        line = _as_line(raw)
        if self.lines[line] <= 0:
            return False
        self.lines[line] -= 1
        self.relied_on = True
        return True

    def has_entry(self, entry: Entry) -> bool:
        """Whether this very entry (not only its turn_id) is set aside already."""
        # Compared whole: another entry with the same turn_id is written (or refused) in its own right.
        if not any(entry == known for known in self.entries.get(entry["turn_id"], ())):
            return False
        self.relied_on = True
        return True

    def sync(self) -> None:
        """Make the files relied on durable: whoever wrote them may have died before its fsync ended."""
        if self.relied_on:
            for path in self.files:
                append_durably(path, b"")
