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

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.exc import DataError, IntegrityError

from turnledger.errors import TurnledgerError
from turnledger.store.entries import Entry, WriteFn
from turnledger.store.outbox import encode_entry, fsync_dir

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
    write: WriteFn, entries: Sequence[Entry], reject: RejectFn, inserted: Callable[[int], None]
) -> None:
    """``write(entries)``; on a data error, halve until the refused entries are alone and ``reject`` them.

    ``inserted`` gets the number of new turns of each write as it commits, not a total at the end:
    should a later half fail, the halves written before it stay stored and the retry finds them
    stored (inserted=0), so they are counted then or never. A non-data error propagates (what was
    written before it stays written; writing it again is a no-op by ``turn_id``).
    """
    try:
        new = await write(entries)
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if len(entries) == 1:
            reject(entries, exc)
            return
    else:
        inserted(new)
        return
    middle = len(entries) // 2
    await write_isolating(write, entries[:middle], reject, inserted)
    await write_isolating(write, entries[middle:], reject, inserted)


def rejected_path(path: Path) -> Path:
    """Where entries refused from ``path`` (a segment, or a writer's base name) are set aside."""
    return path.with_name(path.name + ".rejected")


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and sync it and its directory: the caller forgets, or deletes, the
    only other copy next. The directory every time: whoever created the file may have died before
    syncing it."""
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(path.parent)


def set_aside(path: Path, entries: Sequence[Entry], exc: BaseException) -> None:
    """Append refused entries to ``path`` (durably: the caller then forgets them) and name each turn."""
    append_durably(path, b"".join(encode_entry(e) for e in entries))
    for entry in entries:
        logger.warning(
            "turnledger: the database refused turn %r (%s); its rows are set aside in %s",
            entry.get("turn_id"),
            # turnledger's own errors never quote row values; a driver's might, so only its class is named.
            exc if isinstance(exc, TurnledgerError) else type(exc).__name__,
            path,
        )
