"""BatchWriter: finished turns written in the background, in batches, without ever losing one.

The path of a turn::

    persist(turn) ─► rows ─► journal (outbox segment, fsync'd, group commit) ─► queue ─► batch INSERT
                                   │                                              │ failed / queue full
                                   └────────── replay (when the database is back) ◄┘

A turn is handed over when its rows are durable in this writer's outbox: from then on it is in the
database or in the outbox (possibly both), whatever dies. The queue in memory is only the fast path;
a batch that fails, or a turn that does not fit in the bounded queue, is simply left to the outbox
files, which the writer replays once a write succeeds again (and which ``turnledger replay`` or the next
writer replays if this process dies). Every write is ``INSERT ... ON CONFLICT (turn_id) DO NOTHING`` and
the turn's calls are inserted only for turns that insert, in one transaction: writing a turn twice
stores it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import asyncpg
from sqlalchemy import JSON
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from turnledger._logging import warn_once
from turnledger.store.engine import storage_error
from turnledger.store.outbox import (
    FORMAT_VERSION,
    BadLine,
    OutboxJournal,
    claim_writer,
    claimable_writers,
    encode_entry,
    read_segment,
    segment_seq,
)
from turnledger.store.record import CALLS_TABLE, USAGE_TABLE, TurnRows, insert_turn_rows, turn_rows

if TYPE_CHECKING:
    from turnledger.accumulator import TurnTokenAccumulator

logger = logging.getLogger("turnledger.writer")

Entry = Mapping[str, Any]
"""``{"v": 1, "turn_id": ..., "usage": {token_usage row}, "calls": [token_usage_calls rows, no usage_id]}``."""

RowBuilder = Callable[..., TurnRows]
"""``(turn, *, usage_type, ...) -> TurnRows``; the default is :func:`turnledger.store.record.turn_rows`."""


# -- entries: a turn's rows as one outbox line ---------------------------------------------------


_USAGE_COLUMNS = [c.name for c in USAGE_TABLE.columns if c.name != "id"]
_CALL_COLUMNS = [c.name for c in CALLS_TABLE.columns if c.name != "usage_id"]
_JSON_COLUMNS = frozenset(
    c.name for table in (USAGE_TABLE, CALLS_TABLE) for c in table.columns if c.type._type_affinity is JSON
)
_USAGE_JSON_NAMES = [c for c in _USAGE_COLUMNS if c in _JSON_COLUMNS]
_CALL_JSON_NAMES = [c for c in _CALL_COLUMNS if c in _JSON_COLUMNS]


def _with_json(row: Mapping[str, Any], names: list[str], convert: Callable[[Any], Any]) -> dict[str, Any]:
    out = dict(row)
    for name in names:
        if out.get(name) is not None:
            out[name] = convert(out[name])
    return out


def make_entry(rows: TurnRows) -> dict[str, Any]:
    """A turn's rows as an outbox entry. JSON document columns are kept as their JSON text: serialized
    once, that text is both what the outbox line carries and what COPY sends to PostgreSQL."""
    return {
        "v": FORMAT_VERSION,
        "turn_id": rows.turn_id,
        "usage": _with_json(rows.usage, _USAGE_JSON_NAMES, _dumps),
        "calls": [_with_json(call, _CALL_JSON_NAMES, _dumps) for call in rows.calls],
    }


def entry_rows(entry: Entry) -> TurnRows:
    """An entry back as :class:`TurnRows`, JSON documents parsed again (for the multi-row INSERT path)."""
    return TurnRows(
        turn_id=entry["turn_id"],
        usage=_with_json(entry["usage"], _USAGE_JSON_NAMES, json.loads),
        calls=[_with_json(call, _CALL_JSON_NAMES, json.loads) for call in entry["calls"]],
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def is_entry(value: Mapping[str, Any]) -> bool:
    usage = value.get("usage")
    return (
        value.get("v") == FORMAT_VERSION
        and isinstance(value.get("turn_id"), str)
        and isinstance(usage, Mapping)
        and usage.get("turn_id") == value.get("turn_id")
        and isinstance(value.get("calls"), list)
    )


async def write_entries(conn: AsyncConnection, entries: Sequence[Entry], *, pg_copy: bool = True) -> int:
    """Insert the entries' turns in the caller's transaction; returns how many were not yet stored.

    On PostgreSQL with ``pg_copy`` the rows are COPYed into session-temporary staging tables and moved
    with one ``INSERT ... SELECT ... ON CONFLICT (turn_id) DO NOTHING`` (bench/write_bench.py measures
    it against multi-row INSERTs); elsewhere, :func:`~turnledger.store.record.insert_turn_rows`.
    """
    if pg_copy and conn.dialect.name == "postgresql":
        return await _copy_entries(conn, entries)
    written = await insert_turn_rows(conn, [entry_rows(e) for e in entries])
    return len(written)


def _quoted(names: Iterable[str], prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{n}"' for n in names)


_STAGE_USAGE = "turnledger_stage_usage"
_STAGE_CALLS = "turnledger_stage_calls"
_CREATE_STAGES = [
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_USAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT {_quoted(_USAGE_COLUMNS)} FROM token_usage WITH NO DATA",
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_CALLS} ON COMMIT DELETE ROWS AS "
    f'SELECT u."turn_id", {_quoted(_CALL_COLUMNS, "c.")} FROM token_usage_calls c '
    f'JOIN token_usage u ON u."id" = c."usage_id" WITH NO DATA',
]
_MOVE_STAGED = (
    f"WITH new AS (INSERT INTO token_usage ({_quoted(_USAGE_COLUMNS)}) "
    f"SELECT {_quoted(_USAGE_COLUMNS)} FROM {_STAGE_USAGE} "
    f'ON CONFLICT ("turn_id") DO NOTHING RETURNING "id", "turn_id"), '
    f'moved AS (INSERT INTO token_usage_calls ("usage_id", {_quoted(_CALL_COLUMNS)}) '
    f'SELECT new."id", {_quoted(_CALL_COLUMNS, "s.")} FROM {_STAGE_CALLS} s JOIN new ON new."turn_id" = s."turn_id") '
    "SELECT count(*) FROM new"
)


def _copy_records(entries: Sequence[Entry]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The staging tables' records: turns (deduplicated by ``turn_id``) and their calls keyed by ``turn_id``.

    JSON documents are already text in an entry, which is what asyncpg's COPY takes for JSONB.
    """
    unique: dict[str, Entry] = {}
    for entry in entries:
        unique.setdefault(entry["turn_id"], entry)
    usage_records = [tuple([e["usage"].get(c) for c in _USAGE_COLUMNS]) for e in unique.values()]
    call_records = [
        (turn_id, *[call.get(c) for c in _CALL_COLUMNS]) for turn_id, e in unique.items() for call in e["calls"]
    ]
    return usage_records, call_records


async def _copy_entries(conn: AsyncConnection, entries: Sequence[Entry]) -> int:
    usage_records, call_records = _copy_records(entries)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    # The staging tables live as long as the connection; creating them is skipped (a round trip per
    # table) once a top-level transaction that created them has committed on this connection.
    top_level = not driver.is_in_transaction()
    staged = top_level and conn.info.get(_STAGED_KEY, False)
    conn.info.pop(_STAGED_KEY, None)
    try:
        # A savepoint if the caller's transaction already began on this connection, else a transaction.
        async with driver.transaction():
            if not staged:
                await driver.execute(";".join(_CREATE_STAGES))
            await driver.copy_records_to_table(_STAGE_USAGE, records=usage_records, columns=_USAGE_COLUMNS)
            if call_records:
                await driver.copy_records_to_table(
                    _STAGE_CALLS, records=call_records, columns=["turn_id", *_CALL_COLUMNS]
                )
            inserted: int = await driver.fetchval(_MOVE_STAGED)
    except asyncpg.PostgresError as exc:
        raise storage_error(exc) from exc
    except BaseException:
        # Not an answer from the server (a dropped link, a cancelled wait): the connection cannot be trusted.
        await conn.invalidate()
        raise
    if top_level:
        conn.info[_STAGED_KEY] = True
    return inserted


_STAGED_KEY = "turnledger_staging_tables"


# -- replaying segment files ---------------------------------------------------------------------


@dataclass(slots=True)
class ReplayReport:
    """What a replay did. ``bad_lines`` were reported and skipped; they are kept in ``*.rejected`` files."""

    files: int = 0
    entries: int = 0
    inserted: int = 0
    """Turns that were not yet in the database."""
    bad_lines: list[BadLine] = field(default_factory=list)
    skipped_files: list[Path] = field(default_factory=list)
    """Segments of a writer that is still alive: it replays its own."""

    @property
    def already_present(self) -> int:
        return self.entries - self.inserted

    def merge(self, other: ReplayReport) -> None:
        self.files += other.files
        self.entries += other.entries
        self.inserted += other.inserted
        self.bad_lines.extend(other.bad_lines)
        self.skipped_files.extend(other.skipped_files)


ProgressFn = Callable[[int], None]
"""Called with the number of entries just written (for a progress bar)."""


def load_segment(path: Path, report: ReplayReport) -> list[Entry]:
    """The entries of one segment; bad lines are logged, counted in ``report`` and set aside."""
    entries: list[Entry] = []
    bad: list[BadLine] = []
    for item in read_segment(path):
        if isinstance(item, BadLine):
            bad.append(item)
        elif is_entry(item):
            entries.append(item)
        else:
            bad.append(BadLine(path, -1, "not a turn entry of a known format version", b""))
    for line in bad:
        logger.warning("turnledger outbox %s line %s skipped: %s", line.path, line.lineno, line.reason)
    if bad:
        # Set aside rather than deleted: a damaged line may still be read by a person.
        with open(path.with_name(path.name + ".rejected"), "ab") as fh:
            for line in bad:
                fh.write(line.raw if line.raw.endswith(b"\n") else line.raw + b"\n")
    report.bad_lines.extend(bad)
    return entries


WriteFn = Callable[[Sequence[Entry]], Coroutine[Any, Any, int]]
"""Writes a batch of entries in one transaction; returns how many turns were new."""


def transaction_writer(engine: AsyncEngine, *, pg_copy: bool = True) -> WriteFn:
    async def write(entries: Sequence[Entry]) -> int:
        async with engine.begin() as conn:
            return await write_entries(conn, entries, pg_copy=pg_copy)

    return write


async def replay_segment(
    write: WriteFn, path: Path, *, batch_size: int = 500, progress: ProgressFn | None = None
) -> ReplayReport:
    """Write every entry of one segment file, then delete it. Raises if the database refuses a batch."""
    report = ReplayReport(files=1)
    entries = await asyncio.to_thread(load_segment, path, report)
    for start in range(0, len(entries), batch_size):
        chunk = entries[start : start + batch_size]
        report.inserted += await write(chunk)
        report.entries += len(chunk)
        if progress is not None:
            progress(len(chunk))
    await asyncio.to_thread(path.unlink, missing_ok=True)
    return report


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
) -> ReplayReport:
    """Replay the segments that writers which are gone left in ``directory`` (or only ``files``, all in one directory).

    Safe to run twice, and next to live writers: a live writer's segments are skipped (it replays
    its own), two replays never take the same writer's segments, and rows already stored are skipped.
    """
    from turnledger.store.outbox import outbox_dir, segment_writer

    root = outbox_dir(directory)
    write = write or transaction_writer(engine)
    report = ReplayReport()
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
                report.merge(await replay_segment(write, path, batch_size=batch_size, progress=progress))
        finally:
            left = [p for p in claim.segments if p.exists()]
            claim.release(remove_lock=not left)
    return report


# -- the writer ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Queued:
    entry: Entry
    segment: int
    """The outbox segment holding the entry (-1: none, the outbox could not be written)."""


@dataclass(slots=True)
class _Handoff:
    entry: Entry
    line: bytes
    done: asyncio.Future[None]


class BatchWriter:
    """Writes finished turns to the database in batches, in the background. An async context manager::

        async with BatchWriter(engine, outbox_dir="/var/lib/app/turnledger-outbox") as writer:
            async with turnledger.scoped_turn(user_id="u-42", persist=writer) as turn:
                ...

    In a FastAPI lifespan: ``async with BatchWriter(engine) as writer: app.state.writer = writer; yield``.

    Up to ``batch_size`` turns are written together, at most ``flush_interval`` seconds after the first
    of them was handed over. ``max_queue`` bounds the turns held in memory; beyond it they wait in the
    outbox. A write that fails or takes longer than ``write_timeout`` is left to the outbox and retried
    from it after a backoff (``retry_initial`` doubling up to ``retry_max``, jittered). ``close()``
    drains for up to ``shutdown_timeout`` seconds; whatever is left stays in the outbox for the next
    writer on the same directory or ``turnledger replay``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        outbox_dir: str | Path | None = None,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        max_queue: int = 10_000,
        write_timeout: float = 10.0,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        shutdown_timeout: float = 10.0,
        usage_type: str = "chat",
        fsync: bool = True,
        replay_others: bool = True,
        row_builder: RowBuilder | None = None,
        pg_copy: bool = True,
    ) -> None:
        self.engine = engine
        self.pg_copy = pg_copy
        self._write = transaction_writer(engine, pg_copy=pg_copy)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.write_timeout = write_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.shutdown_timeout = shutdown_timeout
        self.usage_type = usage_type
        self.replay_others = replay_others
        self.journal = OutboxJournal(outbox_dir, fsync=fsync)
        self.stats: Counter[str] = Counter()
        """``handed_over``, ``written`` (turns new to the database), ``batches``, ``failed_batches``,
        ``spilled`` (left to the outbox: queue full, batch failed, or shutdown), ``replayed``, ``bad_lines``."""
        self._row_builder: RowBuilder = row_builder or turn_rows
        self._handoffs: list[_Handoff] = []
        self._appending = False
        self._append_done = asyncio.Event()
        self._queue: deque[_Queued] = deque()
        self._segment_pending: Counter[int] = Counter()
        self._dirty: set[int] = set()
        self._others_due = replay_others
        self._wake_journal = asyncio.Event()
        self._wake_writer = asyncio.Event()
        self._closing = False
        self._healthy = True
        self._tasks: list[asyncio.Task[None]] = []
        self._abandoned: set[asyncio.Task[Any]] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def writer_id(self) -> str:
        return self.journal.writer_id

    @property
    def healthy(self) -> bool:
        """False from a failed write until the next one succeeds."""
        return self._healthy

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> BatchWriter:
        await asyncio.to_thread(self.journal.open)
        self._tasks = [
            asyncio.create_task(self._journal_loop(), name="turnledger-journal"),
            asyncio.create_task(self._write_loop(), name="turnledger-writer"),
        ]
        return self

    async def __aenter__(self) -> BatchWriter:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking turns, write what is queued within ``timeout``, leave the rest in the outbox."""
        if self._closing or not self._tasks:
            return
        self._closing = True
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        self._wake_journal.set()
        self._wake_writer.set()
        journal_task, write_task = self._tasks
        # The journal finishes first: handed-over turns reach the outbox whatever the database does.
        await journal_task
        done, _ = await asyncio.wait({write_task}, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            write_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write_task
        if self._queue:
            logger.warning(
                "turnledger writer closed with %d turns unwritten; they wait in the outbox %s",
                len(self._queue),
                self.journal.directory,
            )
            self._fail_queue()
        self.journal.rotate()
        for path in self.journal.segments():
            self._maybe_discard(segment_seq(path))
        await asyncio.to_thread(self.journal.close)
        self._wake_idle()

    # -- hand-off --------------------------------------------------------------------------------
    def rows_for(self, turn: TurnTokenAccumulator, **options: Any) -> TurnRows:
        options.setdefault("usage_type", turn.labels.get("usage_type", self.usage_type))
        return self._row_builder(turn, **options)

    def submit(self, turn: TurnTokenAccumulator, **options: Any) -> asyncio.Future[None]:
        """Hand a closed turn over; the future resolves once it is durable (in the outbox or beyond).

        ``options`` go to the row builder (``usage_type``, ``message_id``...). Call it on the writer's
        event loop; from another thread use :meth:`submit_threadsafe`.
        """
        return self.submit_rows(self.rows_for(turn, **options))

    def submit_rows(self, rows: TurnRows) -> asyncio.Future[None]:
        """Hand over a turn's rows built elsewhere (:func:`turnledger.store.record.turn_rows`)."""
        if self._closing or not self._tasks:
            raise RuntimeError("BatchWriter is not running")
        entry = make_entry(rows)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handoffs.append(_Handoff(entry, encode_entry(entry), done))
        self.stats["handed_over"] += 1
        self._wake_journal.set()
        return done

    async def persist(self, turn: TurnTokenAccumulator, **options: Any) -> None:
        """Hand a closed turn over and wait until it is durable (one group fsync, shared with other turns)."""
        await self.submit(turn, **options)

    async def persist_turn(self, turn: TurnTokenAccumulator) -> None:
        """What ``scoped_turn(..., persist=writer)`` calls when its block exits."""
        await self.persist(turn)

    def submit_threadsafe(self, turn: TurnTokenAccumulator) -> None:
        """Hand over from another thread (a sync ``with scoped_turn``); does not wait for durability."""
        rows = self.rows_for(turn)
        loop = self._tasks[0].get_loop() if self._tasks else None
        if loop is None or loop.is_closed():
            raise RuntimeError("BatchWriter is not running")
        loop.call_soon_threadsafe(self._submit_logged, rows)

    def _submit_logged(self, rows: TurnRows) -> None:
        try:
            self.submit_rows(rows)
        except Exception:
            warn_once("writer:submit", "turnledger could not hand a turn to the BatchWriter", exc_info=True)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every turn handed over so far is in the database (through the outbox if need be)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(fut)
        self._wake_writer.set()
        self._wake_journal.set()
        await asyncio.wait_for(fut, timeout)

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- the journal: group commit to the outbox --------------------------------------------------
    async def _journal_loop(self) -> None:
        while True:
            if not self._handoffs:
                if self._closing:
                    return
                await self._wake_journal.wait()
                self._wake_journal.clear()
                continue
            batch, self._handoffs = self._handoffs, []
            before = self.journal.active_seq
            self._appending = True
            self._append_done.clear()
            try:
                segment = await asyncio.to_thread(self.journal.append, [h.line for h in batch])
            except Exception as exc:
                # No durable copy: still try the database, and tell whoever waits that the turn is not safe.
                warn_once("writer:journal", "turnledger could not write its outbox in %s", self.journal.directory)
                logger.debug("outbox append failed", exc_info=True)
                for h in batch:
                    self._queue.append(_Queued(h.entry, -1))
                    if not h.done.done():
                        h.done.set_exception(exc)
                self._wake_writer.set()
                continue
            finally:
                self._appending = False
                self._append_done.set()
            if before and segment != before:
                self._maybe_discard(before)
            for h in batch:
                if self._healthy and len(self._queue) < self.max_queue:
                    self._queue.append(_Queued(h.entry, segment))
                    self._segment_pending[segment] += 1
                else:
                    self._dirty.add(segment)
                    self.stats["spilled"] += 1
                if not h.done.done():
                    h.done.set_result(None)
            self._wake_writer.set()

    def _maybe_discard(self, segment: int) -> None:
        """Delete a closed segment once every entry of it is known to be in the database."""
        if segment <= 0 or segment == self.journal.active_seq or segment in self._dirty:
            return
        if self._segment_pending.get(segment, 0) > 0:
            return
        self._segment_pending.pop(segment, None)
        self.journal.discard(segment)

    async def _close_segment(self, segment: int) -> None:
        # Only the journal appends; wait for an append in flight, then close the file between appends.
        if segment != self.journal.active_seq:
            return
        while self._appending:
            await self._append_done.wait()
        if segment == self.journal.active_seq:
            self.journal.rotate()

    # -- the database side -----------------------------------------------------------------------
    async def _write_loop(self) -> None:
        backoff = self.retry_initial
        prefer_replay = False
        while True:
            if not self._queue and not self._has_replay_work():
                if self._closing and not self._handoffs:
                    return
                if not self._handoffs and not self._appending:
                    self._wake_idle()
                self._wake_writer.clear()
                await self._wake_writer.wait()
                continue
            if self._queue and not self._closing and len(self._queue) < self.batch_size:
                await self._gather_batch()
            try:
                # Live turns and replay alternate so that neither starves the other.
                if self._queue and not (prefer_replay and self._has_replay_work()):
                    await self._write_queued()
                else:
                    await self._replay_step()
                prefer_replay = not prefer_replay
            except Exception as exc:
                self.stats["failed_batches"] += 1
                self._healthy = False
                self._fail_queue()
                warn_once(f"writer:batch:{type(exc).__name__}", "turnledger batch write failed: %r", exc)
                if self._closing:
                    return
                await self._sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.retry_max)
            else:
                backoff = self.retry_initial
                if not self._healthy:
                    logger.info("turnledger writer: database writable again")
                    self._healthy = True
                    self._others_due = self.replay_others

    async def _gather_batch(self) -> None:
        # Wait up to flush_interval for the batch to fill; a full batch or closing cuts it short.
        deadline = time.monotonic() + self.flush_interval
        while len(self._queue) < self.batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake_writer.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_writer.wait(), remaining)

    async def _sleep(self, seconds: float) -> None:
        # close() sets _closing and wakes us: a writer in backoff stops at once and leaves the rest to the outbox.
        deadline = time.monotonic() + seconds
        while not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake_writer.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_writer.wait(), remaining)

    async def _bounded_write(self, entries: Sequence[Entry]) -> int:
        """One transaction, given up after ``write_timeout``.

        A hung connection may not even let a rollback through, so the write runs as its own task and
        is abandoned (cancelled, not awaited) on timeout; its turns are in the outbox, and should the
        abandoned transaction commit after all, replaying them is a no-op.
        """

        task = asyncio.create_task(self._write(entries))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.write_timeout)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if task in done:
            return task.result()
        self._abandon(task)
        raise TimeoutError(f"database write took longer than {self.write_timeout}s")

    def _abandon(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget_abandoned)

    def _forget_abandoned(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not report it as lost

    async def _write_queued(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
        try:
            written = await self._bounded_write([q.entry for q in batch])
        except BaseException:
            self._spill(batch)
            raise
        self.stats["batches"] += 1
        self.stats["written"] += written
        for q in batch:
            self._entry_done(q.segment)

    def _spill(self, items: Iterable[_Queued]) -> None:
        for q in items:
            if q.segment > 0:
                self._dirty.add(q.segment)
            self.stats["spilled"] += 1

    def _fail_queue(self) -> None:
        # The database is failing: what waits in memory is already in the outbox, and replay takes it from there.
        self._spill(self._queue)
        self._queue.clear()

    def _entry_done(self, segment: int) -> None:
        if self._segment_pending.get(segment, 0) <= 0:
            return
        self._segment_pending[segment] -= 1
        self._maybe_discard(segment)

    def _has_replay_work(self) -> bool:
        return bool(self._dirty) or (self._others_due and self._healthy and not self._closing)

    async def _replay_step(self) -> None:
        if self._dirty:
            segment = min(self._dirty)
            await self._close_segment(segment)
            path = self.journal.segment_path(segment)
            report = ReplayReport(files=1)
            entries = await asyncio.to_thread(load_segment, path, report) if path.exists() else []
            self.stats["bad_lines"] += len(report.bad_lines)
            for start in range(0, len(entries), self.batch_size):
                chunk = entries[start : start + self.batch_size]
                self.stats["written"] += await self._bounded_write(chunk)
                self.stats["replayed"] += len(chunk)
            self._dirty.discard(segment)
            self._segment_pending.pop(segment, None)
            # Entries of it still queued in memory will be written again: a no-op, by turn_id.
            self._maybe_discard(segment)
            return
        if self._others_due:
            report = await replay_outbox(
                self.engine,
                self.journal.directory,
                batch_size=self.batch_size,
                exclude_writer=self.writer_id,
                write=self._bounded_write,
            )
            self._others_due = False
            self.stats["replayed"] += report.entries
            self.stats["written"] += report.inserted
            self.stats["bad_lines"] += len(report.bad_lines)
