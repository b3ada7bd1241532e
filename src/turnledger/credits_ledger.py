"""Prepaid credits: reserve before a turn, settle with its exact cost, debit exactly once.

:class:`CreditLedger` keeps each account's balance as the sum of an append-only journal
(:mod:`turnledger.credits_models`). Every operation carries an idempotency key: calling it again
with the same key returns the first result and changes nothing, so a retried request, a replayed
message or a crashed worker that runs again cannot charge twice.

Concurrency: **row locks**. Each write is one transaction that first locks the account's row
(``SELECT ... FOR UPDATE`` on PostgreSQL, under READ COMMITTED; on SQLite the transaction opens
with ``BEGIN IMMEDIATE``, which takes the database's single write lock, and the tasks of one
process queue for it on an asyncio lock rather than in SQLite's sleeping busy loop). One operation has to read
and write several things as a unit: the idempotency key, the holds that expired and must be
released first, the available balance, a journal row, a hold row and the account's running sums.
A single conditional ``UPDATE ... WHERE balance - held + overdraft >= :x`` guards only the
balance; the key check, the expiry and the journal insert around it would each need their own
retry loop and would still race one another. The lock is per account, so different accounts never
wait for each other, and reads (balance, history) never wait at all. Under READ COMMITTED each
statement after the lock is granted sees everything the previous holder committed, so the second
of two concurrent calls with one key finds the first's entry and replays it. The unique index on
the key is the last line: a key reused on another account at the same instant fails one insert,
which is rolled back and answered with the winner's entry.

Holds expire (``hold_ttl``, default 15 minutes) so that a process that died between reserve and
settle does not lock credits forever: :meth:`CreditLedger.expire_holds` releases them, and so does
every operation that next locks the account. A settle that arrives after its hold expired still
debits the actual cost: the calls were made, and the provider bills them.

A turn ties in through :class:`turnledger.credits.credit_scope`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from turnledger.credits_arguments import Amount, _amount, _check_account, _check_key, _check_labels
from turnledger.credits_errors import ReservationClosed
from turnledger.credits_models import EXACT_CONTEXT as _EXACT
from turnledger.credits_models import LABEL_MAX_LENGTH, MAX_INTEGER_DIGITS, EntryKind, canonical_amount, quantize_amount
from turnledger.credits_models import CreditAccount as _A
from turnledger.credits_models import CreditHold as _H
from turnledger.credits_models import CreditJournalEntry as _J
from turnledger.credits_queries import (
    _Account,
    _account_of,
    _account_select,
    _balance_of,
    _entry_of,
    _entry_select,
    _execute,
    _storage_error,
)
from turnledger.credits_replay import _closing_replay, _entry_replay, _replayed, _reservation_replay
from turnledger.credits_results import AccountBalance, Entry, Reservation, VerifyReport, _reservation_of
from turnledger.errors import CreditError, InsufficientCredits, StorageError

DEFAULT_HOLD_TTL = timedelta(minutes=15)
"""How long a reservation holds credits if nobody settles or releases it."""


T = TypeVar("T")

_SPENDING = frozenset({EntryKind.RESERVE, EntryKind.DEBIT})
"""The operations that need credits available, refused with InsufficientCredits when they are not."""


class CreditLedger:
    """Prepaid credit accounts on an :class:`AsyncEngine` (PostgreSQL or SQLite).

    Every method is its own transaction. Amounts are exact ``Decimal`` (``int`` and ``str`` are
    accepted); anything finer than 18 decimal places is rounded half-even once, when written, and an
    amount that must be positive may not round to 0. Keys ending in ``/settle``, ``/release`` or
    ``/expired`` are the ledger's own (derived from reservation keys) and refused from callers.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        hold_ttl: timedelta = DEFAULT_HOLD_TTL,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if hold_ttl <= timedelta(0):
            raise ValueError("hold_ttl must be positive")
        self.engine = engine
        self.hold_ttl = hold_ttl
        self._clock = clock or (lambda: datetime.now(UTC))
        self._writer_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    # -- public operations -------------------------------------------------------------------
    async def open_account(self, account: str, *, overdraft_limit: Amount = 0) -> AccountBalance:
        """Create ``account`` (balance 0) if it does not exist, and set its overdraft limit."""
        _check_account(account)
        limit = _amount(overdraft_limit, "overdraft_limit", minimum="zero")
        async with self._write() as conn:
            now = self._now()
            acct = await self._lock_account(conn, account, create=True, now=now)
            assert acct is not None
            await conn.execute(update(_A).where(_A.account_id == account).values(overdraft_limit=limit, updated_at=now))
            acct.overdraft_limit = quantize_amount(limit)
            await self._expire_locked(conn, acct, now)
            return _balance_of(acct)

    async def grant(
        self, account: str, amount: Amount, key: str, *, turn_id: str | None = None, note: str | None = None
    ) -> Entry:
        """Add credits to ``account``, creating it if needed."""
        _check_key(key)
        _check_labels(turn_id=turn_id, note=note)
        value = _amount(amount, "amount", minimum="positive")

        async def op(conn: AsyncConnection, acct: _Account, now: datetime) -> Entry:
            return await self._append(conn, acct, now, EntryKind.GRANT, key, amount=value, turn_id=turn_id, note=note)

        return await self._run(account, key, EntryKind.GRANT, op, _entry_replay, create=True)

    async def debit(
        self, account: str, amount: Amount, key: str, *, turn_id: str | None = None, note: str | None = None
    ) -> Entry:
        """Spend credits without a reservation; :class:`InsufficientCredits` if ``available`` is short (or no
        such account exists)."""
        _check_key(key)
        _check_labels(turn_id=turn_id, note=note)
        value = _amount(amount, "amount", minimum="positive")

        async def op(conn: AsyncConnection, acct: _Account, now: datetime) -> Entry:
            _require_available(acct, value, "debit")
            return await self._append(conn, acct, now, EntryKind.DEBIT, key, amount=-value, turn_id=turn_id, note=note)

        return await self._run(account, key, EntryKind.DEBIT, op, _entry_replay)

    async def refund(
        self, account: str, amount: Amount, key: str, *, turn_id: str | None = None, note: str | None = None
    ) -> Entry:
        """Give credits back to an existing account."""
        _check_key(key)
        _check_labels(turn_id=turn_id, note=note)
        value = _amount(amount, "amount", minimum="positive")

        async def op(conn: AsyncConnection, acct: _Account, now: datetime) -> Entry:
            return await self._append(conn, acct, now, EntryKind.REFUND, key, amount=value, turn_id=turn_id, note=note)

        return await self._run(account, key, EntryKind.REFUND, op, _entry_replay)

    async def adjust(self, account: str, amount: Amount, key: str, *, note: str | None = None) -> Entry:
        """An operator's correction, either sign; not checked against the available balance."""
        _check_key(key)
        _check_labels(note=note)
        value = _amount(amount, "amount", minimum="nonzero")

        async def op(conn: AsyncConnection, acct: _Account, now: datetime) -> Entry:
            return await self._append(conn, acct, now, EntryKind.ADJUST, key, amount=value, note=note)

        return await self._run(account, key, EntryKind.ADJUST, op, _entry_replay)

    async def reserve(
        self,
        account: str,
        estimate: Amount,
        key: str,
        *,
        turn_id: str | None = None,
        ttl: timedelta | None = None,
    ) -> Reservation:
        """Hold ``estimate`` for a turn; :class:`InsufficientCredits` if ``available`` cannot cover it
        (or the account does not exist: nobody opened it or granted it anything).

        A refusal writes nothing, so the same key may succeed later, after a grant.

        Called again with the same key, account and estimate (a retry whose first answer was lost,
        say, after its COMMIT), it takes no second hold and returns the first reservation, with
        ``replayed`` set and ``expires_at`` where the hold stands now (:meth:`renew` moves it). That
        holds also when the reservation has since been settled, released or has expired, as every
        operation's replay returns its first result: a settle of it then replays too, so nothing is
        charged twice; ``expires_at`` in the past, or :meth:`renew` raising :class:`ReservationClosed`,
        says its credits are no longer held. The same key with another account or estimate is
        refused (:class:`CreditError`): that is a different request, not a retry. ``turn_id`` and
        ``ttl`` are not compared (a retried request may run under a new turn id).
        """
        _check_key(key)
        _check_labels(turn_id=turn_id)
        value = _amount(estimate, "estimate", minimum="zero")
        lifetime = self.hold_ttl if ttl is None else ttl
        if lifetime <= timedelta(0):
            raise ValueError("ttl must be positive")

        async def op(conn: AsyncConnection, acct: _Account, now: datetime) -> Reservation:
            _require_available(acct, value, "reservation")
            entry = await self._append(
                conn,
                acct,
                now,
                EntryKind.RESERVE,
                key,
                hold_amount=value,
                turn_id=turn_id,
                expires_at=now + lifetime,
            )
            await conn.execute(
                insert(_H).values(
                    reservation_id=entry.id, account_id=acct.account_id, amount=value, expires_at=now + lifetime
                )
            )
            return _reservation_of(entry)

        reservation = await self._run(account, key, EntryKind.RESERVE, op, _reservation_replay(value))
        if not reservation.replayed:
            return reservation
        async with self._read() as conn:
            stmt = select(_H.expires_at).where(_H.reservation_id == reservation.id)
            held_until = (await _execute(conn, stmt)).scalar_one_or_none()
        return reservation if held_until is None else dataclasses.replace(reservation, expires_at=held_until)

    async def renew(self, reservation: Reservation, ttl: timedelta | None = None) -> Reservation:
        """Extend an open reservation's hold to ``ttl`` (default ``hold_ttl``) from now.

        For a turn that runs longer than its hold's TTL (:class:`credit_scope` renews its own while
        it is open). Returns the reservation with its new ``expires_at``. A hold is never shortened,
        so calling it again (a retry) changes nothing more. :class:`ReservationClosed` if the
        reservation was already settled or released, or its hold expired: a hold past its
        ``expires_at`` is expired even if nothing has released it yet, because any operation on
        the account may do so at any moment and give its credits to another turn. The journal is
        not written (the balance does not change): the reserve entry keeps its first expiry, and
        :meth:`get_reservation` answers with the current one.
        """
        lifetime = self.hold_ttl if ttl is None else ttl
        if lifetime <= timedelta(0):
            raise ValueError("ttl must be positive")
        _check_account(reservation.account)
        async with self._write() as conn:
            now = self._now()
            acct = await self._lock_account(conn, reservation.account, create=False, now=now)
            if acct is None:
                raise CreditError(f"no credit account {reservation.account!r}")
            if acct.has_expired_holds:
                await self._expire_locked(conn, acct, now)
            stmt = select(_H.expires_at).where(
                _H.reservation_id == reservation.id, _H.account_id == reservation.account
            )
            held_until: datetime | None = (await _execute(conn, stmt)).scalar_one_or_none()
            if held_until is None:
                await self._check_reservation(conn, reservation)
                closing = await self._closing_entries(conn, reservation.id)
                if not closing:
                    raise StorageError(f"reservation {reservation.id} has neither a hold nor a closing entry")
                # The expired holds released above stay released, as after any refusal.
                await conn.commit()
                raise ReservationClosed(reservation, closing[0])
            expires_at = max(held_until, now + lifetime)
            if expires_at != held_until:
                await conn.execute(update(_H).where(_H.reservation_id == reservation.id).values(expires_at=expires_at))
        return dataclasses.replace(reservation, expires_at=expires_at, replayed=False)

    async def settle(
        self, reservation: Reservation, actual_cost: Amount, key: str | None = None, *, note: str | None = None
    ) -> Entry:
        """Debit the turn's actual cost and free its hold, once per reservation.

        The actual cost is debited in full even when it exceeds the hold or the hold already
        expired (the calls were made); that is the one way a balance can end below the overdraft
        limit, and the entry's ``balance_after`` shows it. A second settle of the same
        reservation, under any key, returns the first settle entry and changes nothing.
        """
        cost = _amount(actual_cost, "actual_cost", minimum="zero")
        _check_labels(note=note)
        if key is not None and key != reservation.settle_key:
            _check_key(key)
        settle_key = key or reservation.settle_key

        async def op(conn: AsyncConnection, acct: _Account, now: datetime) -> Entry:
            # The common case in one statement: the hold is still open, so nothing has closed it.
            hold = await self._take_hold(conn, reservation)
            entry_note = note
            if hold is None:
                await self._check_reservation(conn, reservation)
                for prior in await self._closing_entries(conn, reservation.id):
                    if prior.kind is EntryKind.SETTLE:
                        return _replayed(prior)
                late = "hold had already been released; actual cost debited anyway"
                entry_note = late if not note else f"{note}; {late}"
                if len(entry_note) > LABEL_MAX_LENGTH:
                    entry_note = note
            return await self._append(
                conn,
                acct,
                now,
                EntryKind.SETTLE,
                settle_key,
                amount=-cost,
                hold_amount=-(hold or Decimal(0)),
                turn_id=reservation.turn_id,
                reservation_id=reservation.id,
                note=entry_note,
            )

        replay = _closing_replay(reservation)
        return await self._run(reservation.account, settle_key, EntryKind.SETTLE, op, replay, keep_hold=reservation.id)

    async def release(self, reservation: Reservation, key: str | None = None) -> Entry:
        """Free a reservation's hold without charging. If it was already settled or released (or
        expired), returns that closing entry and changes nothing."""
        if key is not None and key != reservation.release_key:
            _check_key(key)
        release_key = key or reservation.release_key

        async def op(conn: AsyncConnection, acct: _Account, now: datetime) -> Entry:
            hold = await self._take_hold(conn, reservation)
            if hold is None:
                await self._check_reservation(conn, reservation)
                closing = await self._closing_entries(conn, reservation.id)
                if not closing:
                    raise StorageError(f"reservation {reservation.id} has neither a hold nor a closing entry")
                return _replayed(closing[0])
            return await self._append(
                conn,
                acct,
                now,
                EntryKind.RELEASE,
                release_key,
                hold_amount=-hold,
                turn_id=reservation.turn_id,
                reservation_id=reservation.id,
            )

        replay = _closing_replay(reservation)
        account, kind = reservation.account, EntryKind.RELEASE
        return await self._run(account, release_key, kind, op, replay, keep_hold=reservation.id)

    async def expire_holds(self, account: str | None = None) -> list[Entry]:
        """Release every hold past its expiry (on ``account``, or on all accounts); the release entries."""
        now = self._now()
        if account is None:
            async with self._read() as conn:
                rows = await _execute(
                    conn, select(_H.account_id).where(_H.expires_at <= now).distinct().order_by(_H.account_id)
                )
                accounts = [r[0] for r in rows]
        else:
            accounts = [account]
        released: list[Entry] = []
        for name in accounts:
            async with self._write() as conn:
                acct = await self._lock_account(conn, name, create=False, now=self._now())
                if acct is None:
                    raise CreditError(f"no credit account {name!r}")
                released.extend(await self._expire_locked(conn, acct, self._now()))
        return released

    async def balance(self, account: str) -> AccountBalance:
        """The account's balance, held credits and overdraft limit (expired holds released first)."""
        async with self._read() as conn:
            acct = await self._read_account(conn, account, self._now())
            if acct is None:
                raise CreditError(f"no credit account {account!r}")
            if not acct.has_expired_holds:
                return _balance_of(acct)
        await self.expire_holds(account)
        async with self._read() as conn:
            acct = await self._read_account(conn, account, self._now())
            assert acct is not None
            return _balance_of(acct)

    async def get_reservation(self, reservation_id: int) -> Reservation | None:
        """A reservation by id (e.g. to settle one that another process opened).

        Its ``expires_at`` is where its hold stands now, if it is still open (:meth:`renew` moves it).
        """
        stmt = (
            _entry_select()
            .add_columns(_H.expires_at.label("held_until"))
            .outerjoin(_H, _H.reservation_id == _J.id)
            .where(_J.id == reservation_id, _J.kind == EntryKind.RESERVE)
        )
        async with self._read() as conn:
            row = (await _execute(conn, stmt)).mappings().first()
        if row is None:
            return None
        reservation = _reservation_of(_entry_of(row))
        if row["held_until"] is None:
            return reservation
        return dataclasses.replace(reservation, expires_at=row["held_until"])

    async def history(
        self,
        account: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """The account's journal, oldest first (the last ``limit`` entries when a limit is given)."""
        stmt = _entry_select().where(_J.account_id == account)
        if since is not None:
            stmt = stmt.where(_J.created_at >= since)
        if until is not None:
            stmt = stmt.where(_J.created_at < until)
        stmt = stmt.order_by(_J.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self._read() as conn:
            rows = (await _execute(conn, stmt)).mappings().all()
        return [_entry_of(r) for r in reversed(rows)]

    async def verify(self, account: str | None = None) -> VerifyReport:
        """Prove that each account's balance and held credits equal the sums of its journal.

        Also replays the journal in order and checks every entry's ``balance_after`` and
        ``held_after``: a lost update or an entry written outside the account lock shows up as a
        break in that chain. Reads one consistent snapshot on PostgreSQL (REPEATABLE READ).
        """
        problems: list[str] = []
        async with self._read() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            acct_stmt = select(_A.account_id, _A.balance, _A.held, _A.overdraft_limit).order_by(_A.account_id)
            entry_stmt = select(
                _J.id, _J.account_id, _J.kind, _J.amount, _J.hold_amount, _J.balance_after, _J.held_after
            )
            hold_stmt = select(_H.account_id, _H.amount, _H.reservation_id)
            if account is not None:
                acct_stmt = acct_stmt.where(_A.account_id == account)
                entry_stmt = entry_stmt.where(_J.account_id == account)
                hold_stmt = hold_stmt.where(_H.account_id == account)
            accounts = {r.account_id: r for r in (await _execute(conn, acct_stmt)).all()}
            if account is not None and account not in accounts:
                raise CreditError(f"no credit account {account!r}")
            sums: dict[str, list[Decimal]] = {name: [Decimal(0), Decimal(0)] for name in accounts}
            entries = 0
            with localcontext(_EXACT):
                result = await conn.stream(entry_stmt.order_by(_J.account_id, _J.id))
                async for row in result:
                    entries += 1
                    running = sums.setdefault(row.account_id, [Decimal(0), Decimal(0)])
                    running[0] += row.amount
                    running[1] += row.hold_amount
                    if running[0] != row.balance_after or running[1] != row.held_after:
                        problems.append(
                            f"{row.account_id}: entry {row.id} ({row.kind}) records balance {row.balance_after} "
                            f"held {row.held_after}, the journal up to it sums to {running[0]} and {running[1]}"
                        )
                open_holds: dict[str, Decimal] = {}
                hold_count = 0
                for hold in (await _execute(conn, hold_stmt)).all():
                    hold_count += 1
                    open_holds[hold.account_id] = open_holds.get(hold.account_id, Decimal(0)) + hold.amount
            for name, (balance, held) in sums.items():
                acct_row = accounts.get(name)
                if acct_row is None:
                    problems.append(f"{name}: journal entries for an account that does not exist")
                    continue
                if acct_row.balance != balance:
                    problems.append(f"{name}: balance {acct_row.balance} but the journal sums to {balance}")
                if acct_row.held != held:
                    problems.append(f"{name}: held {acct_row.held} but the journal's holds sum to {held}")
                if open_holds.get(name, Decimal(0)) != acct_row.held:
                    problems.append(f"{name}: held {acct_row.held} but the open holds sum to {open_holds.get(name, 0)}")
        return VerifyReport(accounts=len(accounts), entries=entries, open_holds=hold_count, problems=tuple(problems))

    # -- the transaction skeleton ------------------------------------------------------------
    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the ledger's clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; committed when the block ends normally, rolled back otherwise."""
        if self.engine.dialect.name == "sqlite":
            # SQLite has one writer at a time. Tasks of this process take turns here, in a queue;
            # left to SQLite, they would poll for its lock in a busy loop that sleeps up to 100 ms
            # a time. Writers in other processes still meet at BEGIN IMMEDIATE.
            async with self._sqlite_writer_lock(), self._transaction() as conn:
                yield conn
        else:
            async with self._transaction() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    await conn.execution_options(isolation_level="READ COMMITTED")
                elif conn.dialect.name == "sqlite":
                    # The write lock up front: a deferred transaction that reads, then writes, can
                    # fail with SQLITE_BUSY instead of waiting when another writer got in between.
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
                await conn.commit()
        except DBAPIError as exc:
            raise _storage_error(exc) from exc

    def _sqlite_writer_lock(self) -> asyncio.Lock:
        # One lock per event loop: an asyncio.Lock belongs to the loop it is first used on.
        loop = asyncio.get_running_loop()
        lock = self._writer_locks.get(loop)
        if lock is None:
            lock = self._writer_locks[loop] = asyncio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise _storage_error(exc) from exc

    async def _run(
        self,
        account: str,
        key: str,
        kind: EntryKind,
        op: Callable[[AsyncConnection, _Account, datetime], Awaitable[T]],
        replay: Callable[[Entry, EntryKind, str], T],
        *,
        create: bool = False,
        keep_hold: int | None = None,
    ) -> T:
        """Lock the account, release its expired holds, run ``op``; a used key answers with its first result.

        The key is not looked up before ``op`` runs: the unique index on it refuses a second entry
        (the transaction is rolled back and the first entry returned), which saves a query under
        the lock on every call. Only a refusal looks the key up first, because a replay must
        return its first result even when the account could no longer afford it.
        """
        _check_account(account)
        _check_key(key, derived=True)
        try:
            async with self._write() as conn:
                now = self._now()
                acct = await self._lock_account(conn, account, create=create, now=now)
                if acct is None:
                    existing = await self._find_key(conn, key)
                    if existing is not None:
                        return replay(existing, kind, account)
                    if kind in _SPENDING:
                        # Nothing is available in an account nobody opened: refused as a short one is, so
                        # that an app's handler for InsufficientCredits also answers a user never granted any.
                        raise InsufficientCredits(f"no credit account {account!r}: nothing is available")
                    raise CreditError(f"no credit account {account!r}")
                if acct.has_expired_holds:
                    await self._expire_locked(conn, acct, now, keep=keep_hold)
                try:
                    return await op(conn, acct, now)
                except CreditError:
                    existing = await self._find_key(conn, key)
                    if existing is not None:
                        return replay(existing, kind, account)
                    # A refusal writes nothing of its own; the expired holds released above stay released.
                    await conn.commit()
                    raise
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            # The key was used before (or by a concurrent call that committed first): the first
            # entry is the answer.
            async with self._read() as conn:
                existing = await self._find_key(conn, key)
            if existing is None:
                raise
            return replay(existing, kind, account)

    # -- steps, all under the account lock ---------------------------------------------------
    async def _lock_account(
        self, conn: AsyncConnection, account: str, *, create: bool, now: datetime
    ) -> _Account | None:
        if create:
            values: dict[str, Any] = {
                "account_id": account,
                "balance": Decimal(0),
                "held": Decimal(0),
                "overdraft_limit": Decimal(0),
                "created_at": now,
                "updated_at": now,
            }
            dialect_insert = pg.insert if conn.dialect.name == "postgresql" else sqlite.insert
            await _execute(
                conn, dialect_insert(_A).values(**values).on_conflict_do_nothing(index_elements=["account_id"])
            )
        row = (await _execute(conn, _account_select(account, now).with_for_update(of=_A))).first()
        return _account_of(row)

    async def _read_account(self, conn: AsyncConnection, account: str, now: datetime) -> _Account | None:
        return _account_of((await _execute(conn, _account_select(account, now))).first())

    async def _find_key(self, conn: AsyncConnection, key: str) -> Entry | None:
        row = (await _execute(conn, _entry_select().where(_J.idempotency_key == key))).mappings().first()
        return _entry_of(row) if row is not None else None

    async def _expire_locked(
        self, conn: AsyncConnection, acct: _Account, now: datetime, *, keep: int | None = None
    ) -> list[Entry]:
        stmt = (
            select(_H.reservation_id, _H.amount, _J.idempotency_key, _J.turn_id)
            .join(_J, _J.id == _H.reservation_id)
            .where(_H.account_id == acct.account_id, _H.expires_at <= now)
            .order_by(_H.expires_at, _H.reservation_id)
        )
        released: list[Entry] = []
        for row in (await _execute(conn, stmt)).all():
            if row.reservation_id == keep:
                # The reservation being settled right now: close it by that settle, not by expiry.
                continue
            await conn.execute(delete(_H).where(_H.reservation_id == row.reservation_id))
            released.append(
                await self._append(
                    conn,
                    acct,
                    now,
                    EntryKind.RELEASE,
                    f"{row.idempotency_key}/expired",
                    hold_amount=-row.amount,
                    turn_id=row.turn_id,
                    reservation_id=row.reservation_id,
                    note="hold expired",
                )
            )
        return released

    async def _check_reservation(self, conn: AsyncConnection, reservation: Reservation) -> None:
        stmt = select(_J.account_id, _J.kind, _J.hold_amount).where(_J.id == reservation.id)
        row = (await _execute(conn, stmt)).first()
        if row is None or row.kind != EntryKind.RESERVE or row.account_id != reservation.account:
            raise CreditError(f"no reservation {reservation.id} on account {reservation.account!r}")

    async def _closing_entries(self, conn: AsyncConnection, reservation_id: int) -> list[Entry]:
        stmt = _entry_select().where(_J.reservation_id == reservation_id).order_by(_J.id)
        return [_entry_of(r) for r in (await _execute(conn, stmt)).mappings().all()]

    async def _take_hold(self, conn: AsyncConnection, reservation: Reservation) -> Decimal | None:
        stmt = (
            delete(_H)
            .where(_H.reservation_id == reservation.id, _H.account_id == reservation.account)
            .returning(_H.amount)
        )
        row = (await _execute(conn, stmt)).first()
        return None if row is None else Decimal(row.amount)

    async def _append(
        self,
        conn: AsyncConnection,
        acct: _Account,
        now: datetime,
        kind: EntryKind,
        key: str,
        *,
        amount: Decimal = Decimal(0),
        hold_amount: Decimal = Decimal(0),
        turn_id: str | None = None,
        reservation_id: int | None = None,
        expires_at: datetime | None = None,
        note: str | None = None,
    ) -> Entry:
        amount, hold_amount = quantize_amount(amount), quantize_amount(hold_amount)
        with localcontext(_EXACT):
            balance_after = acct.balance + amount
            held_after = acct.held + hold_amount
        for figure, value in (("balance", balance_after), ("held credits", held_after)):
            try:
                quantize_amount(value)
            except ValueError:
                # Refused here, in the ledger's words; the column's own check would fail the insert
                # with a driver-level StatementError that names no account.
                raise ValueError(
                    f"account {acct.account_id!r}: this {kind} would take its {figure} to {canonical_amount(value)}, "
                    f"beyond what the ledger holds ({MAX_INTEGER_DIGITS} integer digits)"
                ) from None
        values: dict[str, Any] = {
            "idempotency_key": key,
            "account_id": acct.account_id,
            "kind": kind.value,
            "amount": amount,
            "hold_amount": hold_amount,
            "balance_after": balance_after,
            "held_after": held_after,
            "turn_id": turn_id,
            "reservation_id": reservation_id,
            "expires_at": expires_at,
            "note": note or None,
            "created_at": now,
        }
        result = await _execute(conn, insert(_J).values(**values))
        entry_id = int(result.inserted_primary_key[0])
        await conn.execute(
            update(_A)
            .where(_A.account_id == acct.account_id)
            .values(balance=balance_after, held=held_after, updated_at=now)
        )
        acct.balance, acct.held = balance_after, held_after
        return Entry(
            id=entry_id,
            key=key,
            account=acct.account_id,
            kind=kind,
            amount=canonical_amount(amount),
            hold_amount=canonical_amount(hold_amount),
            balance_after=canonical_amount(balance_after),
            held_after=canonical_amount(held_after),
            turn_id=turn_id,
            reservation_id=reservation_id,
            expires_at=expires_at,
            note=values["note"],
            created_at=now,
        )


def _require_available(acct: _Account, amount: Decimal, what: str) -> None:
    available = acct.available
    if quantize_amount(amount) > available:
        raise InsufficientCredits(
            f"account {acct.account_id!r}: available {canonical_amount(available)} cannot cover the {what} of {amount}"
        )
