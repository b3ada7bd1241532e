"""BatchWriter: finished turns written in the background, in batches, without ever losing one.

The path of a turn::

    persist(turn) ─► rows ─┬─► journal (outbox segment, fsync'd, group commit) ──────┐
                           └─► queue ─► batch COPY/INSERT ─► database               ├─► durable: the first of the two
                                            │ failed / queue full                    │
                                            └──── replay (when the database is back) ◄┘

A turn is handed over (``persist`` returns) once its rows are durable: in this writer's outbox or in
the database, whichever comes first; from then on it is in the database or in the outbox (possibly
both), whatever dies. The queue in memory is only the fast path: a batch that fails, or a turn that
does not fit in the bounded queue, is left to the outbox files, which the writer replays once a write
succeeds again (and which ``turnledger replay`` or the next writer replays if this process dies).
Every write skips a ``turn_id`` already stored, and inserts a turn's calls only with the turn, in one
transaction (:mod:`turnledger.store.entries`): writing a turn twice stores it once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger._logging import warn_once
from turnledger.store.entries import Entry, make_entry, transaction_writer
from turnledger.store.lines import encode_line
from turnledger.store.outbox import OutboxJournal, fsync_dir, segment_seq
from turnledger.store.record import TurnRows, turn_rows
from turnledger.store.rejects import DirectoryNotSynced, rejected_path, set_aside, write_isolating
from turnledger.store.replay import ReplayReport, ResumeState, replay_outbox, replay_segment
from turnledger.store.reused_ids import REUSED_REASON, TurnIdReused, reused_turn_ids, setting_aside_reused

if TYPE_CHECKING:
    from turnledger.accumulator import TurnTokenAccumulator

logger = logging.getLogger("turnledger.writer")

RowBuilder = Callable[..., TurnRows]
"""``(turn, *, usage_type, ...) -> TurnRows``; the default is :func:`turnledger.store.record.turn_rows`."""


_NOT_JOURNALED = -1
"""A turn's segment when the outbox could not take it: memory is its only copy until the database has it."""

_LOOP_CHECK_S = 0.1
"""How often a ``persist`` from another loop, still waiting, checks that the writer's loop still runs."""


@dataclass(slots=True, eq=False)
class _Turn:
    """A handed-over turn on its two ways to durability: the journal and the database, whichever is first."""

    entry: Entry
    line: bytes
    done: asyncio.Future[None]
    """Resolved once the turn is durable: its outbox append or its database write, whichever ends first."""
    segment: int | None = None
    """The outbox segment holding it; None while its append is in flight; ``_NOT_JOURNALED``."""
    stored: bool = False
    """Written to the database (or set aside as refused): its outbox line is no longer needed."""
    spilled: bool = False
    """Left to the outbox (queue full, or its batch failed): its segment must be replayed once known."""
    set_aside: bool = False
    """Refused, and in ``<writer>.rejected`` (synced), but that file's directory could not be synced: a
    directory sync is all it still needs. Written again, it would be refused and set aside again."""


def _being_cancelled() -> bool:
    """Whether the running task has been asked to stop (not merely seen a task it awaited cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _taking_callbacks(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a callback handed to the writer's loop from another thread will run. A loop stopped but
    not closed (its thread's ``run_forever`` returned, the writer never closed) still takes one and never
    runs it: the turn would be in neither the outbox nor the database, and a ``persist`` waiting for it
    would wait forever."""
    return loop.is_running() and not loop.is_closed()


_T = TypeVar("_T")


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a worker thread, the file I/O the writer keeps off its loop; on the loop's own
    thread once the interpreter is exiting. A writer closed from an ``atexit`` handler (a sync app's
    shutdown) or given turns while the interpreter exits gets no worker thread any more ("cannot
    schedule new futures after shutdown"): its outbox appends failed and turns were lost."""
    loop = asyncio.get_running_loop()
    try:
        work = loop.run_in_executor(None, functools.partial(fn, *args))
    except RuntimeError:
        return fn(*args)
    return await work


def _pass_on(done: asyncio.Future[None], durable: concurrent.futures.Future[None]) -> None:
    """The writer's verdict on a turn handed over from another loop, for the thread that waits on it."""
    if done.cancelled():
        durable.cancel()
        return
    failure = done.exception()
    if failure is not None:
        _pass_on_failure(failure, durable)
        return
    # Cancelled by its waiter meanwhile (that thread's task was): nobody wants the answer.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        durable.set_result(None)


def _pass_on_failure(failure: BaseException, durable: concurrent.futures.Future[None]) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        durable.set_exception(failure)


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
    drains for up to ``shutdown_timeout`` seconds (plus an outbox fsync under way); whatever is left
    stays in the outbox for the next writer on the same directory or ``turnledger replay``. A turn
    handed over before ``start()`` or after ``close()`` is written straight to an outbox segment of its own,
    and so is one handed over from another thread or loop while the writer's loop is not running.
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
        # Live turns are new to the database but for a retried batch: the write assumes so, and checks.
        self._write_fresh = transaction_writer(engine, pg_copy=pg_copy, fresh=True)
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
        """``handed_over``, ``written``, ``batches``, ``failed_batches``, ``spilled`` (left to the outbox
        for replay: queue full, shutdown, its segment replayed while it was queued, or its batch failed
        before the turn was written or set aside;
        the turns of a failed batch written or refused before the failure are not), ``replayed`` (outbox
        entries replayed, whether new, found stored or refused; a replay retried after a failure goes on
        where it stopped, so none is counted twice), ``bad_lines``, ``rejected`` (refused by the database
        for their data, set aside in ``*.rejected``; a turn or a bad line an earlier pass set aside is
        skipped, so each is set aside and counted once; one whose file's directory the writer could not
        sync by ``close()`` is logged as a warning, not lost), ``turn_id_reused`` (a turn, live or
        replayed, not stored because another turn, opened at another time or with other calls, tokens,
        cost or call ids, is stored under its ``turn_id``: also counted in ``rejected``, as it is set aside
        there; a write whose skipped turns could not be checked counts as failed, and its turns are
        replayed), ``lost`` (in neither the outbox nor the database: both failed; each is logged as an
        error with its turn_id).

        ``written`` counts the turns this writer's writes inserted, each once the database acknowledges
        its commit (even if a later write of the same batch fails). A turn found already stored is not
        counted: one handed over twice, or one stored by a commit whose acknowledgement never came (the
        link dropped during COMMIT, the write outlived ``write_timeout``). Such a write counts as failed
        and its turns are retried from the outbox; the retry finds them stored and cannot tell by whom.
        So ``written`` never exceeds the turns this writer stored, and falls short of them only after a
        write failed or was cut short by ``close()``."""
        self._row_builder: RowBuilder = row_builder or turn_rows
        self._handoffs: list[_Turn] = []
        self._appending = False
        self._append_done = asyncio.Event()
        self._queue: deque[_Turn] = deque()
        self._unjournaled: deque[_Turn] = deque()
        """Turns the outbox could not take and the database has not taken yet: memory is their only copy."""
        self._segment_pending: Counter[int] = Counter()
        self._replay_resume: ResumeState = {}
        """Where a replay of a segment that failed part way is to go on: see :func:`replay_segment`."""
        self._dirty: set[int] = set()
        self._others_due = replay_others
        self._wake_journal = asyncio.Event()
        self._wake_writer = asyncio.Event()
        self._closing = False
        self._shutdown: asyncio.Task[None] | None = None
        self._hurry: asyncio.Future[None] | None = None
        """Resolved when a close() is cancelled: the shutdown's drain is cut short."""
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
        await _in_thread(self.journal.open)
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
        """Stop taking turns, write what is queued within ``timeout``, leave the rest in the outbox.

        A replay cut short by the timeout stops its thread, and is waited for (a line read, an append
        under way), before the outbox lock is released: once this returns, the writer is done with it.
        So is an outbox append of turns handed over. Neither can be cut short: on a disk whose fsync
        stalls, ``close()`` returns that much later than ``timeout``.

        Cancelled, it cuts the drain short as if ``timeout`` had run out, but still waits for what is
        under way as above (however often it is cancelled meanwhile) and releases the outbox lock; then
        it raises the cancellation. Every turn handed over is by then durable or told it is not.
        A second ``close()`` waits for the first one's shutdown (whose failure only the first raises).
        """
        if not self._tasks:
            return
        first = self._shutdown is None
        if self._shutdown is None:
            self._closing = True
            self._hurry = asyncio.get_running_loop().create_future()
            self._shutdown = asyncio.create_task(self._shut_down(timeout, self._hurry), name="turnledger-close")
        shutdown, hurry = self._shutdown, self._hurry
        assert hurry is not None
        cancelled: asyncio.CancelledError | None = None
        while not shutdown.done():
            try:
                # Not awaited directly: that would pass the caller's cancellation on to the shutdown.
                await asyncio.wait({shutdown})
            except asyncio.CancelledError as exc:
                cancelled = exc
                if not hurry.done():
                    hurry.set_result(None)
        try:
            if first:
                shutdown.result()
        finally:
            if cancelled is not None:
                raise cancelled

    async def _shut_down(self, timeout: float | None, hurry: asyncio.Future[None]) -> None:
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        self._wake_journal.set()
        self._wake_writer.set()
        journal_task, write_task = self._tasks
        # The journal finishes first: handed-over turns reach the outbox whatever the database does.
        await journal_task
        await asyncio.wait(
            {write_task, hurry}, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
        if not write_task.done():
            write_task.cancel()
            try:
                await write_task
            except asyncio.CancelledError:
                # It ends so once cancelled above; only a cancellation of this task itself goes on.
                if _being_cancelled():
                    raise
        if self._queue:
            logger.warning(
                "turnledger writer closed with %d turns unwritten; they wait in the outbox %s",
                len(self._queue),
                self.journal.directory,
            )
            self._fail_queue()
        await self._rescue_unjournaled()
        self.journal.rotate()
        for path in self.journal.segments():
            self._maybe_discard(segment_seq(path))
        await _in_thread(self.journal.close)
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
        entry = make_entry(rows)
        line = encode_line(entry)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stats["handed_over"] += 1
        if self._closing or not self._tasks:
            self._spill_late(line)
            done.set_result(None)
            return done
        turn = _Turn(entry, line, done)
        self._handoffs.append(turn)
        self._wake_journal.set()
        # Queued for the database at once, not after its outbox append: the append runs in a thread, and
        # a busy event loop can keep that thread from the GIL for as long as it stays busy (CPython 3.11:
        # the loop's frequent short releases reset the waiting thread's switch timer), which would stall
        # every write behind it. Durable is whichever of the two ends first.
        if self._healthy and len(self._queue) < self.max_queue:
            self._queue.append(turn)
            self._wake_writer.set()
        else:
            turn.spilled = True
            self.stats["spilled"] += 1
        return done

    def _spill_late(self, line: bytes) -> None:
        # Before start or after close there is no journal to join: the turn gets an outbox segment of
        # its own (a writer id of its own, closed at once), which the next writer or a replay stores.
        journal = OutboxJournal(self.journal.directory, fsync=self.journal.fsync)
        journal.open()
        try:
            journal.append([line])
        finally:
            journal.close()
        self.stats["spilled"] += 1
        warn_once(
            "writer:not_running",
            "turnledger: turns handed to a BatchWriter that is not running go to the outbox %s",
            self.journal.directory,
        )

    async def persist(self, turn: TurnTokenAccumulator, **options: Any) -> None:
        """Hand a closed turn over and wait until it is durable (one group fsync, shared with other turns).

        From an event loop other than the writer's (``asyncio.run`` in a sync app whose writer runs on a
        loop of its own, a worker thread's loop) the turn crosses over thread-safely; the hand-over is
        made before the first await, so a cancelled wait does not undo it. Should the writer's loop stop
        before the turn is durable, the turn goes to an outbox segment of its own from here.
        """
        loop = self._writer_loop()
        if loop is None or loop is asyncio.get_running_loop():
            await self.submit(turn, **options)
            return
        # The writer's futures and events belong to its loop: set from this thread, they would wake
        # nobody there, and this loop would wait for a future nobody wakes it for.
        rows = self.rows_for(turn, **options)
        taken = threading.Event()
        durable = asyncio.wrap_future(self._submit_across(rows, loop, taken))
        try:
            while not (await asyncio.wait({durable}, timeout=_LOOP_CHECK_S))[0]:
                if not _taking_callbacks(loop):
                    # The writer's loop stopped with the turn in its hands (queued, or its outbox append
                    # answering a loop that no longer runs): nothing will ever say it is durable. Written
                    # to an outbox segment of its own here; if the writer wrote it too, it is stored once.
                    if not taken.is_set():
                        self.stats["handed_over"] += 1
                    await _in_thread(self._spill_late, encode_line(make_entry(rows)))
                    return
        except asyncio.CancelledError:
            durable.cancel()
            raise
        durable.result()

    async def persist_turn(self, turn: TurnTokenAccumulator) -> None:
        """What ``scoped_turn(..., persist=writer)`` calls when its block exits."""
        await self.persist(turn)

    def submit_threadsafe(self, turn: TurnTokenAccumulator) -> None:
        """Hand over from another thread (a sync ``with scoped_turn``); does not wait for durability."""
        rows = self.rows_for(turn)
        loop = self._writer_loop()
        if loop is None or not _taking_callbacks(loop) or self._closing:
            self._spill_handed_over(rows)
            return
        loop.call_soon_threadsafe(self._submit_logged, rows)

    def _spill_handed_over(self, rows: TurnRows) -> None:
        # Counted as handed over, as submit_rows counts a turn it spills: handed_over is every turn given
        # to this writer, from whichever thread or loop.
        self.stats["handed_over"] += 1
        self._spill_late(encode_line(make_entry(rows)))

    def _writer_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._tasks[0].get_loop() if self._tasks else None

    def _submit_across(
        self, rows: TurnRows, loop: asyncio.AbstractEventLoop, taken: threading.Event
    ) -> concurrent.futures.Future[None]:
        """Hand ``rows`` over on the writer's ``loop`` from another thread; the (thread-safe) future
        resolves once they are durable. Cancelling it does not take the turn back. ``taken`` is set
        once the writer has them (or they are in the outbox)."""
        durable: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not _taking_callbacks(loop) or self._closing:
            self._spill_handed_over(rows)
            taken.set()
            durable.set_result(None)
            return durable

        def hand_over() -> None:
            taken.set()
            try:
                self.submit_rows(rows).add_done_callback(lambda done: _pass_on(done, durable))
            except Exception as exc:
                _pass_on_failure(exc, durable)

        try:
            loop.call_soon_threadsafe(hand_over)
        except RuntimeError:
            # Closed since the check above: no writer will take it, the outbox will.
            self._spill_handed_over(rows)
            taken.set()
            durable.set_result(None)
        return durable

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
                segment = await _in_thread(self.journal.append, [t.line for t in batch])
            except Exception as exc:
                # No durable copy: the database may still take them, but whoever waits is told they are not safe.
                warn_once("writer:journal", "turnledger could not write its outbox in %s", self.journal.directory)
                logger.debug("outbox append failed", exc_info=True)
                for t in batch:
                    t.segment = _NOT_JOURNALED
                    if t.stored:
                        continue
                    if t.spilled:
                        # Not queued either, and not in the outbox after all: memory is its only copy.
                        self.stats["spilled"] -= 1
                        self._keep_unjournaled(t)
                    if not t.done.done():
                        t.done.set_exception(exc)
                if before and self.journal.active_seq != before:
                    self._maybe_discard(before)  # the failed append closed it (see OutboxJournal.append)
                self._wake_writer.set()
                continue
            finally:
                self._appending = False
                self._append_done.set()
            if before and segment != before:
                self._maybe_discard(before)
            for t in batch:
                t.segment = segment
                if t.stored:
                    continue  # the database was first
                if t.spilled:
                    self._dirty.add(segment)
                else:
                    self._segment_pending[segment] += 1  # queued: written later, or spilled then
                if not t.done.done():
                    t.done.set_result(None)
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
            if self._unjournaled:
                # After a failure and its backoff: turns without an outbox copy go first.
                self._queue.extendleft(reversed(self._unjournaled))
                self._unjournaled.clear()
            if not self._queue and not self._has_replay_work():
                if self._closing and not self._handoffs and not self._appending:
                    return  # an append in flight may still hand back turns the outbox refused
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
        await self._wait_until(self.flush_interval, lambda: len(self._queue) >= self.batch_size or self._closing)

    async def _sleep(self, seconds: float) -> None:
        # close() sets _closing and wakes us: a writer in backoff stops at once and leaves the rest to the outbox.
        await self._wait_until(seconds, lambda: self._closing)

    async def _wait_until(self, seconds: float, done: Callable[[], bool]) -> None:
        """Wait up to ``seconds``, re-checking ``done`` each time the writer is woken."""
        deadline = time.monotonic() + seconds
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake_writer.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_writer.wait(), remaining)

    async def _bounded_write(self, entries: Sequence[Entry], *, fresh: bool = False) -> int:
        """One transaction, given up after ``write_timeout``.

        A hung connection may not even let a rollback through, so the write runs as its own task and
        is abandoned (cancelled, not awaited) on timeout; its turns are in the outbox, and should the
        abandoned transaction commit after all, replaying them is a no-op.
        """

        task = asyncio.create_task((self._write_fresh if fresh else self._write)(entries))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.write_timeout)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if task in done:
            return task.result()
        self._abandon(task)
        raise TimeoutError(f"database write took longer than {self.write_timeout}s")

    async def _write_live(self, entries: Sequence[Entry]) -> int:
        return await self._bounded_write(entries, fresh=True)

    async def _find_reused(self, entries: Sequence[Entry]) -> list[Entry]:
        return await asyncio.wait_for(reused_turn_ids(self.engine, entries), self.write_timeout)

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
        reject_path = rejected_path(self.journal.directory / self.writer_id)
        if any(t.set_aside for t in batch):
            batch = self._sync_set_aside(batch, reject_path)
            if not batch:
                return
        by_entry = {id(t.entry): t for t in batch}

        def reject(refused: Sequence[Entry], exc: BaseException) -> None:
            try:
                self._reject(reject_path, refused, exc)
            except DirectoryNotSynced:
                for entry in refused:
                    by_entry[id(entry)].set_aside = True
                raise

        new = 0

        def inserted(count: int) -> None:
            nonlocal new
            new += count
            self.stats["written"] += count

        settled = 0

        def settle(count: int) -> None:
            nonlocal settled
            settled += count

        def reject_reused(found: Sequence[Entry]) -> None:
            try:
                reject(found, TurnIdReused(REUSED_REASON))
            except DirectoryNotSynced:
                self.stats["turn_id_reused"] += len(found)  # set aside: a retry skips them
                raise
            self.stats["turn_id_reused"] += len(found)

        # A write that stored fewer turns than it held (some were handed over twice, or another turn
        # holds their id) is done with only once the skipped ones are checked: should the check fail,
        # the write counts as failed and its turns are replayed from the outbox, which checks them.
        write = setting_aside_reused(self._write_live, self._find_reused, reject_reused)
        try:
            await write_isolating(write, [t.entry for t in batch], reject, inserted, settle)
        except BaseException:
            # Only what is neither committed nor set aside is left to the outbox: the rest is done with,
            # and spilling it would count it as waiting there and have its segment replayed for nothing.
            self._spill(batch[settled:])
            self._stored(batch[:settled])
            raise
        self.stats["batches"] += 1
        self._stored(batch)

    def _sync_set_aside(self, batch: list[_Turn], reject_path: Path) -> list[_Turn]:
        """Settle the turns set aside before whose directory sync failed, by syncing it; the rest to write."""
        try:
            fsync_dir(reject_path.parent)
        except BaseException:
            self._spill(batch)  # the set-aside ones stay in memory, still set aside, for the next attempt
            raise
        self._stored(t for t in batch if t.set_aside)
        return [t for t in batch if not t.set_aside]

    def _stored(self, items: Iterable[_Turn]) -> None:
        for t in items:
            t.stored = True
            if t.segment is not None:
                self._entry_done(t.segment)
            if not t.done.done():
                t.done.set_result(None)

    def _reject(self, path: Path, refused: Sequence[Entry], exc: BaseException) -> None:
        # A poison turn would fail every batch it is in, forever: it is set aside, the rest goes on.
        try:
            set_aside(path, refused, exc)
        except DirectoryNotSynced:
            # In the file, where a retry finds and skips them: counted now or never. The failure keeps
            # their other copy (outbox or memory) until the directory is synced.
            self.stats["rejected"] += len(refused)
            raise
        self.stats["rejected"] += len(refused)

    def _spill(self, items: Iterable[_Turn]) -> None:
        for t in items:
            if t.segment == _NOT_JOURNALED:
                # Not in the outbox: replay cannot bring it back, so memory keeps it for the next attempt.
                self._keep_unjournaled(t)
                continue
            self.stats["spilled"] += 1
            if t.segment is None:
                t.spilled = True  # its append, when it ends, marks the segment for replay
            else:
                self._dirty.add(t.segment)

    def _keep_unjournaled(self, t: _Turn) -> None:
        if len(self._queue) + len(self._unjournaled) >= self.max_queue:
            if t.set_aside:
                self._left_unsynced([t])
                return
            self._lose([t.entry], "the outbox cannot be written and the writer holds max_queue turns already")
            return
        self._unjournaled.append(t)
        self._wake_writer.set()

    def _lose(self, entries: Iterable[Entry], why: str) -> None:
        for entry in entries:
            self.stats["lost"] += 1
            # Every one, not once per cause: this is the list of turns someone has to recover by hand.
            logger.error("turnledger LOST turn %r: in neither the database nor the outbox (%s)", entry["turn_id"], why)

    def _left_unsynced(self, items: Iterable[_Turn]) -> None:
        # Set aside (and counted as rejected) already: only the directory sync of its file is missing.
        path = rejected_path(self.journal.directory / self.writer_id)
        for t in items:
            logger.warning(
                "turnledger turn %r is set aside in %s, but that directory is not synced: a crash may lose it",
                t.entry["turn_id"],
                path,
            )

    async def _rescue_unjournaled(self) -> None:
        """On close: a last attempt to put the turns only memory holds into the outbox; log those lost."""
        items = [t for t in self._unjournaled if t.segment == _NOT_JOURNALED]
        self._unjournaled.clear()
        if any(t.set_aside for t in items):
            # A set-aside turn needs only its directory synced; failing that, its outbox copy is kept.
            with contextlib.suppress(OSError):
                await _in_thread(fsync_dir, self.journal.directory)
                self._stored(t for t in items if t.set_aside)
                items = [t for t in items if not t.set_aside]
        if not items:
            return
        try:
            segment = await _in_thread(self.journal.append, [t.line for t in items])
        except Exception as exc:
            self._left_unsynced(t for t in items if t.set_aside)
            why = f"writer closed; outbox append failed: {type(exc).__name__}"
            self._lose((t.entry for t in items if not t.set_aside), why)
            return
        self._dirty.add(segment)
        self.stats["spilled"] += len(items)

    def _fail_queue(self) -> None:
        # The database is failing: what waits in memory is already in the outbox, and replay takes it from there.
        items = list(self._queue)
        self._queue.clear()
        self._spill(items)

    def _entry_done(self, segment: int) -> None:
        if self._segment_pending.get(segment, 0) <= 0:
            return
        self._segment_pending[segment] -= 1
        self._maybe_discard(segment)

    def _has_replay_work(self) -> bool:
        return bool(self._dirty) or (self._others_due and self._healthy and not self._closing)

    async def _replay_step(self) -> None:
        report = ReplayReport()
        try:
            if self._dirty:
                await self._replay_own(min(self._dirty), report)
            elif self._others_due:
                await replay_outbox(
                    self.engine,
                    self.journal.directory,
                    batch_size=self.batch_size,
                    exclude_writer=self.writer_id,
                    write=self._bounded_write,
                    report=report,
                    resume=self._replay_resume,
                    reused=self._find_reused,
                )
                self._others_due = False
        finally:
            # Counted even if a write failed: what was written or set aside before it stays so, and
            # the retry goes on after it (``_replay_resume``), so it is counted now or never.
            self.stats["replayed"] += report.entries
            self.stats["written"] += report.inserted
            self.stats["bad_lines"] += len(report.bad_lines)
            self.stats["rejected"] += report.rejected
            self.stats["turn_id_reused"] += report.turn_id_reused

    async def _replay_own(self, segment: int, report: ReplayReport) -> None:
        await self._close_segment(segment)
        self._leave_to_replay(segment)
        path = self.journal.segment_path(segment)
        # Gone if it was replayed before and a turn of it, still queued then, has been spilled since.
        if path.exists():
            await replay_segment(
                self._bounded_write,
                path,
                batch_size=self.batch_size,
                report=report,
                resume=self._replay_resume,
                reused=self._find_reused,
            )
        self._replay_resume.pop(path, None)
        self._dirty.discard(segment)
        self._segment_pending.pop(segment, None)
        self._maybe_discard(segment)

    def _leave_to_replay(self, segment: int) -> None:
        """Take the turns of a segment about to be replayed out of the queue: the replay writes them.

        Written live as well, a stored turn would be a no-op, but a refused one would be set aside (and
        counted) twice: the replay puts it in ``<segment>.rejected``, which the live write does not read.
        """
        queued = [t for t in self._queue if t.segment == segment]
        if not queued:
            return
        kept = [t for t in self._queue if t.segment != segment]
        self._queue.clear()
        self._queue.extend(kept)
        self._spill(queued)
