"""Replaying outbox segments into the database: by a live writer, by the next writer, or by hand.

Safe to run twice and next to live writers: rows already stored are skipped by ``turn_id``, a live
writer's segments are left to it (its flock says it is alive), and two replays never take the same
writer's segments. A corrupt or torn line is reported, set aside in ``<segment>.rejected`` and skipped,
and so is a turn whose ``turn_id`` a *different* stored turn holds (:mod:`turnledger.store.reused_ids`).
Each bad line and each refused entry is set aside, and counted, once: a replay run again over a
segment (it was cut short, here or in a process that died) skips what the segment's ``.rejected``
files hold already, and a writer that retries a replay in the same process goes on where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger.store.entries import Entry, WriteFn, is_entry, transaction_writer
from turnledger.store.lines import unpack_entry
from turnledger.store.outbox import BadLine, claim_writer, claimable_writers, encode_entry, read_segment
from turnledger.store.rejects import (
    DirectoryNotSynced,
    SetAsideBefore,
    append_durably,
    rejected_path,
    set_aside,
    write_isolating,
)
from turnledger.store.reused_ids import REUSED_REASON, ReusedFn, TurnIdReused, reused_turn_ids, setting_aside_reused

logger = logging.getLogger("turnledger.outbox")


@dataclass(slots=True)
class ReplayReport:
    """What a replay did. ``bad_lines`` were reported and skipped; they are kept in ``*.rejected`` files."""

    files: int = 0
    entries: int = 0
    inserted: int = 0
    """Turns that were not yet in the database."""
    rejected: int = 0
    """Entries the database refused for their data, or not written because another turn is stored under
    their ``turn_id`` (``turn_id_reused``), set aside in ``<segment>.rejected``."""
    turn_id_reused: int = 0
    """Of ``rejected``: entries whose ``turn_id`` a different stored turn holds (another ``created_at``,
    other calls, tokens, cost or call ids). The same turn stored already is counted in
    ``already_present``."""
    bad_lines: list[BadLine] = field(default_factory=list)
    skipped_files: list[Path] = field(default_factory=list)
    """Segments of a writer that is still alive: it replays its own."""
    set_aside_before: int = 0
    """Bad lines and refused entries skipped because an earlier pass set them aside already (they are
    in the ``*.rejected`` files): not in ``entries``, ``rejected`` or ``bad_lines``."""

    @property
    def already_present(self) -> int:
        return self.entries - self.inserted - self.rejected

    def merge(self, other: ReplayReport) -> None:
        self.files += other.files
        self.entries += other.entries
        self.inserted += other.inserted
        self.rejected += other.rejected
        self.turn_id_reused += other.turn_id_reused
        self.bad_lines.extend(other.bad_lines)
        self.skipped_files.extend(other.skipped_files)
        self.set_aside_before += other.set_aside_before


ProgressFn = Callable[[int], None]
"""Called with the number of entries just written (for a progress bar)."""

_T = TypeVar("_T")

ResumeState = dict[Path, int]
"""Per segment, how many of its entries a replay that then failed got through (written or set aside):
a retry in the same process starts after them, so it neither writes nor counts them again."""


class ReplayStopped(Exception):
    """A replay thread asked to stop did so before it touched the outbox again."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise ReplayStopped


async def _in_thread(work: Callable[[threading.Event], _T]) -> _T:
    """``work(stop)`` in a thread, which a cancelled caller does not outlive.

    Cancelling the task that awaits a thread does not stop the thread. The caller holds the segment's
    lock (its writer's, or a replay's claim) and releases it as the cancellation unwinds; another
    replay may take the segment then, and two threads would set the same lines aside (or one delete
    the segment under the other). So a cancelled caller sets ``stop``, which ``work`` checks between
    lines and before each write, and waits for the thread before it lets the cancellation go on: for
    no more than what is under way then (reading the ``.rejected`` files, a line's decoding, an append).
    """
    stop = threading.Event()
    # The executor's own future, not a task running asyncio.to_thread: asyncio.run on its way out (a
    # second ^C) cancels every task, which would mark such a task done while its thread still runs.
    thread = asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, work, stop)
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        stop.set()
        while not thread.done():
            # A second cancellation must not cut this wait short either: the thread is stopping.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({thread})
        if not thread.cancelled():
            thread.exception()  # retrieved (ReplayStopped, most likely): the cancellation is what goes on
        raise


def load_segment(
    path: Path, report: ReplayReport, before: SetAsideBefore | None = None, *, stop: threading.Event | None = None
) -> list[Entry]:
    """The entries of one segment; bad lines are logged, counted in ``report`` and set aside, but for
    those ``before`` (by default, what ``<segment>.rejected`` holds) says an earlier pass set aside.
    Raises :class:`ReplayStopped` once ``stop`` is set, before it sets anything aside."""
    before = SetAsideBefore.read(path) if before is None else before
    entries: list[Entry] = []
    bad: list[BadLine] = []
    for item in read_segment(path):
        _check(stop)
        if isinstance(item, BadLine):
            bad.append(item)
        elif (entry := unpack_entry(item)) is not None and is_entry(entry):
            entries.append(entry)
        else:
            # Kept as a line of its content: what a person needs to recover the turn by hand.
            bad.append(BadLine(path, -1, "not a turn entry of a known format version", encode_entry(item)))
    # A line set aside by an earlier pass over this segment is neither set aside nor counted again.
    new_bad = [line for line in bad if not before.take_line(line.raw)]
    report.set_aside_before += len(bad) - len(new_bad)
    bad = new_bad
    for line in bad:
        logger.warning("turnledger outbox %s line %s skipped: %s", line.path, line.lineno, line.reason)
    _check(stop)
    if bad:
        # Set aside rather than deleted: a damaged line may still be read by a person. Durably, since
        # the segment, its only other copy, is deleted once its entries are written.
        raw = (line.raw if line.raw.endswith(b"\n") else line.raw + b"\n" for line in bad)
        try:
            append_durably(rejected_path(path), b"".join(raw))
        except DirectoryNotSynced:
            report.bad_lines.extend(bad)  # set aside: the retry skips them, so counted now or never
            raise
    report.bad_lines.extend(bad)
    return entries


async def replay_segment(
    write: WriteFn,
    path: Path,
    *,
    batch_size: int = 500,
    progress: ProgressFn | None = None,
    report: ReplayReport | None = None,
    resume: ResumeState | None = None,
    reused: ReusedFn,
) -> ReplayReport:
    """Write every entry of one segment file, then delete it. Raises if the database cannot be written.

    Entries the database refuses for their data are set aside in ``<segment>.rejected`` (and counted in
    ``report.rejected``); the rest of their batch is written. So are entries ``reused`` finds another
    turn stored under the ``turn_id`` of (also counted in ``report.turn_id_reused``). Entries and bad
    lines an earlier pass set aside already are skipped (``report.set_aside_before``). A ``report``
    passed in is added to as the replay goes, and returned: should a write fail, it still holds what
    was done before the failure, and ``resume`` (kept by the caller across retries) where the next
    attempt is to start.
    """
    report = ReplayReport() if report is None else report
    report.files += 1
    entries, known = await _in_thread(lambda stop: _load(path, report, stop))
    start = resume.get(path, 0) if resume is not None else 0
    todo = [i for i in range(start, len(entries)) if not known[i]]
    report.set_aside_before += sum(known[start:])
    done = 0

    def reject(refused: Sequence[Entry], exc: BaseException) -> None:
        try:
            set_aside(rejected_path(path), refused, exc)
        except DirectoryNotSynced:
            report.rejected += len(refused)  # set aside: the retry skips them, so counted now or never
            raise
        report.rejected += len(refused)

    def reject_reused(found: Sequence[Entry]) -> None:
        try:
            reject(found, TurnIdReused(REUSED_REASON))
        except DirectoryNotSynced:
            report.turn_id_reused += len(found)
            raise
        report.turn_id_reused += len(found)

    checked_write = setting_aside_reused(write, reused, reject_reused)

    def inserted(count: int) -> None:
        report.inserted += count

    def settled(count: int) -> None:
        nonlocal done
        done += count
        report.entries += count
        if resume is not None:
            resume[path] = todo[done - 1] + 1
        if progress is not None:
            progress(count)

    for first in range(0, len(todo), batch_size):
        chunk = [entries[i] for i in todo[first : first + batch_size]]
        await write_isolating(checked_write, chunk, reject, inserted, settled)
    await _in_thread(lambda _: path.unlink(missing_ok=True))
    if resume is not None:
        resume.pop(path, None)
    return report


def _load(path: Path, report: ReplayReport, stop: threading.Event) -> tuple[list[Entry], list[bool]]:
    """The segment's entries, and for each whether an earlier pass set it aside already."""
    _check(stop)  # cancelled before the thread even started
    before = SetAsideBefore.read(path)
    entries = load_segment(path, report, before, stop=stop)
    known = [before.has_entry(entry) for entry in entries]
    _check(stop)
    # Before the segment, their other copy, can be deleted.
    before.sync()
    return entries, known


def count_entries(paths: Iterable[Path]) -> int:
    """Lines in the given files (an upper bound of entries, for a progress bar's total)."""
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
            total += sum(1 for line in fh if line.strip())
    return total


def pending_segments(directory: Path) -> list[Path]:
    """Every segment in an outbox directory, whoever wrote it."""
    return sorted(directory.glob("*.[0-9][0-9][0-9][0-9][0-9][0-9].jsonl")) if directory.is_dir() else []


async def replay_outbox(
    engine: AsyncEngine,
    directory: str | Path | None = None,
    *,
    files: Sequence[Path] | None = None,
    batch_size: int = 500,
    exclude_writer: str | None = None,
    progress: ProgressFn | None = None,
    write: WriteFn | None = None,
    report: ReplayReport | None = None,
    resume: ResumeState | None = None,
    reused: ReusedFn | None = None,
) -> ReplayReport:
    """Replay the segments that writers which are gone left in ``directory`` (or only ``files``, all in one directory).

    Safe to run twice, and next to live writers: a live writer's segments are skipped (it replays
    its own), two replays never take the same writer's segments, and rows already stored are skipped.
    A ``report`` passed in is added to as segments are replayed, and ``resume`` kept across retries
    (see :func:`replay_segment`). ``reused`` (by default, a query on ``engine``) finds the entries a
    write skipped because a different turn holds their ``turn_id``: they are set aside, not dropped.
    """
    from turnledger.config import outbox_dir
    from turnledger.store.outbox import segment_writer

    root = outbox_dir(directory)
    write = write or transaction_writer(engine)
    if reused is None:
        reused = functools.partial(reused_turn_ids, engine)
    report = ReplayReport() if report is None else report
    wanted: set[str] | None = None
    if files is not None:
        wanted = {Path(f).name for f in files}
        writers = sorted({w for f in files if (w := segment_writer(Path(f))) is not None})
        root = Path(files[0]).parent if files else root
    else:
        writers = claimable_writers(root, exclude=exclude_writer)
    for writer_id in writers:
        claim = claim_writer(root, writer_id)
        if claim is None:
            busy = [p for p in pending_segments(root) if segment_writer(p) == writer_id]
            report.skipped_files.extend(p for p in busy if wanted is None or p.name in wanted)
            continue
        try:
            for path in claim.segments:
                if wanted is not None and path.name not in wanted:
                    continue
                await replay_segment(
                    write,
                    path,
                    batch_size=batch_size,
                    progress=progress,
                    report=report,
                    resume=resume,
                    reused=reused,
                )
        finally:
            left = [p for p in claim.segments if p.exists()]
            claim.release(remove_lock=not left)
    return report
