"""The durable local outbox: append-only JSON-lines files where rows wait until the database has them.

Layout of an outbox directory, one writer per id (``<host>-<pid>-<random>``)::

    <writer-id>.lock            held (flock) by the live writer for its whole life
    <writer-id>.000001.jsonl    segments, appended and fsync'd; a new one on rotation
    <writer-id>.000002.jsonl

A line is ``{"crc":"<crc32 of entry, 8 hex>","entry":{...}}``: the checksum catches a line that is
torn (the process died mid-write) or damaged yet still parses. An entry is one unit of idempotent
work, a turn's rows by table; Decimals and datetimes are tagged (``{"$dec": "0.1"}``,
``{"$dt": "..."}``) so a replayed row is exactly the row that was spilled. That is format version 1;
a BatchWriter writes version 2 (rows packed in column order, :mod:`turnledger.store.lines`), and
replay reads both.

A segment is claimable by anyone who can take its writer's lock: the writer died (its flock went with
it) or closed cleanly with rows left over. Replaying a segment twice is harmless: rows are inserted
with ``ON CONFLICT DO NOTHING`` on their unique key. Nothing here touches a database.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from turnledger.config import outbox_dir

logger = logging.getLogger("turnledger.outbox")

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
FORMAT_VERSION = 1

_LINE_PREFIX = b'{"crc":"'
_ENTRY_MARK = b'","entry":'
_SEGMENT_RE = re.compile(r"^(?P<writer>.+)\.(?P<seq>\d{6})\.jsonl$")


# -- the line format ------------------------------------------------------------------------------


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"outbox cannot store a {type(value).__name__}")


_LINE_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False)
"""Built once: ``json.dumps`` with these options would build a new encoder for every line."""


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$dec" in obj:
            return Decimal(obj["$dec"])
        if "$dt" in obj:
            return datetime.fromisoformat(obj["$dt"])
        if "$date" in obj:
            return date.fromisoformat(obj["$date"])
    return obj


def encode_entry(entry: Mapping[str, Any]) -> bytes:
    """One outbox line, newline included, with values tagged by type (format version 1)."""
    return frame_line(_LINE_ENCODER.encode(entry).encode())


def frame_line(body: bytes) -> bytes:
    """An entry's JSON text as a checksummed outbox line, newline included."""
    return b"%s%08x%s%s}\n" % (_LINE_PREFIX, zlib.crc32(body), _ENTRY_MARK, body)


class CorruptLine(ValueError):
    """A line that cannot be trusted: torn, damaged, or not an outbox line at all."""


def decode_line(line: bytes) -> dict[str, Any]:
    """The entry of one line (without or with its newline); :class:`CorruptLine` if it cannot be trusted."""
    line = line.rstrip(b"\r\n")
    head = len(_LINE_PREFIX)
    if not line.startswith(_LINE_PREFIX) or line[head + 8 : head + 8 + len(_ENTRY_MARK)] != _ENTRY_MARK:
        raise CorruptLine("not an outbox line")
    if not line.endswith(b"}"):
        raise CorruptLine("truncated line")
    body = line[head + 8 + len(_ENTRY_MARK) : -1]
    try:
        crc = int(line[head : head + 8], 16)
    except ValueError:
        raise CorruptLine("unreadable checksum") from None
    if zlib.crc32(body) != crc:
        raise CorruptLine("checksum mismatch (torn or damaged line)")
    try:
        entry = json.loads(body, object_hook=_object_hook)
    except (ValueError, ArithmeticError) as exc:
        raise CorruptLine(f"unparseable entry: {exc}") from None
    if not isinstance(entry, dict):
        raise CorruptLine("entry is not an object")
    return entry


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that was reported and skipped."""

    path: Path
    lineno: int
    reason: str
    raw: bytes


def read_segment(path: Path) -> Iterator[dict[str, Any] | BadLine]:
    """Every entry of a segment in order; a bad line yields a :class:`BadLine` and reading goes on."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield decode_line(raw)
            except CorruptLine as exc:
                reason = str(exc) if raw.endswith(b"\n") else f"{exc}; last line has no newline (torn write)"
                yield BadLine(path, lineno, reason, raw)


# -- one writer's journal -------------------------------------------------------------------------


def new_writer_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def fsync_dir(directory: Path) -> None:
    # A new file's directory entry is durable only once the directory itself is synced.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutboxJournal:
    """The segments of one live writer. Not thread-safe: one appender at a time (the writer's)."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        writer_id: str | None = None,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = outbox_dir(directory)
        self.writer_id = writer_id or new_writer_id()
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._lock_fh: IO[bytes] | None = None
        self._fh: IO[bytes] | None = None
        self._seq = 0
        self._size = 0

    @property
    def lock_path(self) -> Path:
        return self.directory / f"{self.writer_id}.lock"

    def segment_path(self, seq: int) -> Path:
        return self.directory / f"{self.writer_id}.{seq:06d}.jsonl"

    @property
    def active_seq(self) -> int:
        """The segment open for appending, or 0 when none is (the next append starts a new one)."""
        return self._seq if self._fh is not None else 0

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fh = open(self.lock_path, "ab")  # noqa: SIM115  held for the writer's life: the flock is its liveness
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise
        self._lock_fh = fh

    def append(self, lines: list[bytes]) -> int:
        """Write ``lines`` and make them durable; returns the segment they are in."""
        if self._lock_fh is None:
            raise RuntimeError("outbox journal is not open")
        if self._fh is None or self._size >= self.segment_bytes:
            self._start_segment()
        assert self._fh is not None
        data = b"".join(lines)
        try:
            self._fh.write(data)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
        except BaseException:
            self._abandon_failed_append()
            raise
        self._size += len(data)
        return self._seq

    def _abandon_failed_append(self) -> None:
        """After a failed append, cut its bytes off the segment and start the next append in a new one.

        A torn tail left in place would glue the next (acknowledged) entry onto it: one undecodable line,
        both lost. The failed entries are the caller's to keep (it was told they are not durable).
        """
        fh, self._fh = self._fh, None
        if fh is None:
            return
        with contextlib.suppress(OSError, ValueError):
            fh.close()  # may flush what the failed write left buffered: cut off below with the rest
        with contextlib.suppress(OSError):
            os.truncate(self.segment_path(self._seq), self._size)

    def rotate(self) -> None:
        """Close the current segment; the next append starts a new one."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _start_segment(self) -> None:
        self.rotate()
        self._seq += 1
        path = self.segment_path(self._seq)
        created = not path.exists()
        fh = open(path, "ab")  # noqa: SIM115  appended to until rotated
        if self.fsync:
            try:
                fsync_dir(self.directory)
            except BaseException:
                # Until its directory is synced the file may vanish in a crash with every entry in it:
                # no entry goes in. The next append starts another segment, and syncs again. A file that
                # was there already (a journal reopened under its old id) holds entries: it stays.
                fh.close()
                if created:
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
        self._fh = fh
        self._size = 0

    def discard(self, seq: int) -> None:
        """Delete a closed segment whose every entry is known to be in the database."""
        if seq == self.active_seq:
            raise ValueError("cannot discard the segment being appended to")
        with contextlib.suppress(FileNotFoundError):
            self.segment_path(seq).unlink()

    def segments(self) -> list[Path]:
        """This writer's segments on disk, oldest first."""
        return sorted(self.directory.glob(f"{glob_escape(self.writer_id)}.[0-9][0-9][0-9][0-9][0-9][0-9].jsonl"))

    def close(self) -> None:
        """Close the files and release the lock; segments left behind are claimable by a replay.

        The lock file is removed only when no segment is left, so a clean close leaves nothing behind.
        """
        self.rotate()
        if self._lock_fh is None:
            return
        if not self.segments():
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
        self._lock_fh.close()
        self._lock_fh = None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# -- claiming segments left by writers that are gone -----------------------------------------------


@dataclass(slots=True)
class Claim:
    """The segments of one writer that is gone, locked for this process until :meth:`release`."""

    writer_id: str
    lock_path: Path
    segments: list[Path]
    _fh: IO[bytes] | None = None

    def release(self, *, remove_lock: bool) -> None:
        if self._fh is None:
            return
        if remove_lock:
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
        self._fh.close()
        self._fh = None


def segment_seq(path: Path) -> int:
    """The sequence number of a segment file (0 if the name is not a segment's)."""
    match = _SEGMENT_RE.match(path.name)
    return int(match.group("seq")) if match else 0


def segment_writer(path: Path) -> str | None:
    """The writer id a segment file belongs to, or ``None`` if the name is not a segment's."""
    match = _SEGMENT_RE.match(path.name)
    return match.group("writer") if match else None


def claim_writer(directory: Path, writer_id: str) -> Claim | None:
    """Lock a writer's segments for replay; ``None`` while that writer is alive (or another replay holds it)."""
    lock_path = directory / f"{writer_id}.lock"
    fh = open(lock_path, "ab")  # noqa: SIM115  held until the claim is released
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    segments = sorted(directory.glob(f"{glob_escape(writer_id)}.[0-9][0-9][0-9][0-9][0-9][0-9].jsonl"))
    return Claim(writer_id, lock_path, segments, fh)


def claimable_writers(directory: Path, *, exclude: str | None = None) -> list[str]:
    """Writer ids that have segments in ``directory`` (their liveness is checked by :func:`claim_writer`)."""
    if not directory.is_dir():
        return []
    ids = {w for p in directory.glob("*.jsonl") if (w := segment_writer(p)) is not None}
    ids.discard(exclude or "")
    return sorted(ids)
