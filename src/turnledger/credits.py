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

A turn ties in through :class:`credit_scope`, which reserves on entry and settles the turn's exact
cost on exit (see its docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from types import TracebackType
from typing import Any, Literal, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from turnledger._logging import logger, problem_counts, warn_once
from turnledger.accumulator import TurnTokenAccumulator, scoped_turn
from turnledger.credits_models import (
    ACCOUNT_MAX_LENGTH,
    AMOUNT_SCALE,
    DERIVED_KEY_MAX_LENGTH,
    EXACT_CONTEXT,
    KEY_MAX_LENGTH,
    LABEL_MAX_LENGTH,
    MAX_INTEGER_DIGITS,
    CreditAccount,
    CreditHold,
    CreditJournalEntry,
    EntryKind,
    canonical_amount,
    quantize_amount,
)
from turnledger.errors import CreditError, InsufficientCredits, SchemaMissingError, StorageError
from turnledger.money import sum_costs, to_decimal

DEFAULT_HOLD_TTL = timedelta(minutes=15)
"""How long a reservation holds credits if nobody settles or releases it."""

CANCELLED_SETTLE_GRACE = timedelta(seconds=10)
"""How long a cancelled :class:`credit_scope` still waits for its settle (ms when the database is well).
Unbounded, a database that hangs (a lock held by a stuck session, a peer gone without a word) would
make the request impossible to cancel, and its server impossible to stop."""

Amount = Decimal | int | str
"""An amount in USD. Floats are refused: a float has already lost the exact figure."""

UnpricedPolicy = Literal["free", "estimate", "error"]

DERIVED_KEY_SUFFIXES = ("/settle", "/release", "/expired")
"""What the ledger appends to a reservation's key for the entries that close it."""

T = TypeVar("T")

_EXACT = EXACT_CONTEXT

_SPENDING = frozenset({EntryKind.RESERVE, EntryKind.DEBIT})
"""The operations that need credits available, refused with InsufficientCredits when they are not."""

_J = CreditJournalEntry
_A = CreditAccount
_H = CreditHold


# -- results -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Entry:
    """One journal entry, as written (amounts at the stored scale)."""

    id: int
    key: str
    account: str
    kind: EntryKind
    amount: Decimal
    """Signed effect on the balance."""
    hold_amount: Decimal
    """Signed effect on the credits held for open reservations."""
    balance_after: Decimal
    held_after: Decimal
    turn_id: str | None
    reservation_id: int | None
    """For settle and release: the reservation they close."""
    expires_at: datetime | None
    note: str | None
    created_at: datetime
    replayed: bool = field(default=False, compare=False)
    """True when this call found the key already used and returned the first result unchanged."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """Credits held for a turn until it is settled or released (or the hold expires)."""

    id: int
    key: str
    account: str
    amount: Decimal
    """The estimate held."""
    expires_at: datetime
    turn_id: str | None
    created_at: datetime
    replayed: bool = field(default=False, compare=False)

    @property
    def settle_key(self) -> str:
        return f"{self.key}/settle"

    @property
    def release_key(self) -> str:
        return f"{self.key}/release"


@dataclass(frozen=True, slots=True)
class AccountBalance:
    account: str
    balance: Decimal
    """The sum of the journal: what the account owns (negative within an overdraft)."""
    held: Decimal
    """Credits held for open reservations."""
    overdraft_limit: Decimal

    @property
    def available(self) -> Decimal:
        """What a new reservation or debit may take: ``balance - held + overdraft_limit``."""
        with localcontext(_EXACT):
            return canonical_amount(self.balance - self.held + self.overdraft_limit)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :meth:`CreditLedger.verify`: empty ``problems`` means every account adds up."""

    accounts: int
    entries: int
    open_holds: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class _Account:
    account_id: str
    balance: Decimal
    held: Decimal
    overdraft_limit: Decimal
    has_expired_holds: bool = False

    @property
    def available(self) -> Decimal:
        with localcontext(_EXACT):
            return self.balance - self.held + self.overdraft_limit


# -- the ledger ----------------------------------------------------------------------------------
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


class ReservationClosed(CreditError):
    """:meth:`CreditLedger.renew` was asked to extend a reservation that is no longer open.

    :attr:`closed_by` is the entry that closed it: its settle, its release, or the release of its
    expired hold (``closed_by.key`` ends in ``/expired``). Its credits may be held by another turn
    by now, so the hold cannot be taken back; a settle of it still debits the actual cost.
    """

    def __init__(self, reservation: Reservation, closed_by: Entry) -> None:
        if closed_by.kind is EntryKind.SETTLE:
            how = "was already settled"
        elif closed_by.key.endswith("/expired"):
            how = "has expired (its hold was released)"
        else:
            how = "was already released"
        super().__init__(
            f"reservation {reservation.id} on account {reservation.account!r} {how} (entry {closed_by.id}); "
            "there is no hold left to renew"
        )
        self.reservation = reservation
        self.closed_by = closed_by


# -- the turn tie-in -----------------------------------------------------------------------------
class TurnKeyReused(CreditError):
    """A :class:`credit_scope` was opened with a reservation key that was already used.

    Running the turn again would make real (billed) provider calls that the replayed settle could
    never charge, so the block is not run. A retried request should answer from its first attempt,
    or open a scope with a new key to be charged again. :attr:`reservation` is the first attempt's.
    """

    def __init__(self, message: str, reservation: Reservation) -> None:
        super().__init__(message)
        self.reservation = reservation


class UnpricedCallsError(CreditError):
    """A turn under ``unpriced="error"`` made calls nobody could price. Its priced part was settled;
    :attr:`charge` says what was charged and how many calls were left unpriced."""

    def __init__(self, message: str, charge: TurnCharge) -> None:
        super().__init__(message)
        self.charge = charge


@dataclass(frozen=True, slots=True)
class TurnCharge:
    """What a :class:`credit_scope` charged for its turn, and why."""

    reservation: Reservation
    entry: Entry
    """The settle entry (the first one, if the scope was replayed)."""
    charged: Decimal
    """What the settle asked to debit."""
    priced_cost: Decimal
    """The exact sum of the turn's priced calls, abandoned ones at their estimate included."""
    unpriced_calls: int
    abandoned_calls: int
    policy: UnpricedPolicy


def turn_charge(turn: TurnTokenAccumulator, estimate: Decimal, policy: UnpricedPolicy) -> tuple[Decimal, Decimal, int]:
    """``(charged, priced_cost, unpriced_calls)`` for a closed turn under ``policy``.

    ``free`` charges the priced calls only; ``estimate`` charges at least the reserved estimate
    when any call is unpriced (the estimate stands in for what nobody could price); ``error``
    charges the priced calls and lets the caller decide the rest.
    """
    _check_policy(policy)
    priced, unpriced = sum_costs(record.cost_usd for record in turn.calls)
    priced_cost = priced if priced is not None else Decimal(0)
    if unpriced and policy == "estimate":
        return max(priced_cost, estimate), priced_cost, unpriced
    return priced_cost, priced_cost, unpriced


class credit_scope:
    """A turn that is paid for: reserve ``estimate`` on entry, settle the turn's exact cost on exit.

        scope = credit_scope(ledger, account="u-42", estimate=Decimal("0.05"), user_id="u-42")
        async with scope as turn:
            await litellm.acompletion(...)
        scope.charge.charged        # Decimal('0.000405')

    Entry raises :class:`InsufficientCredits` before the block runs. On exit the turn closes as in
    :class:`scoped_turn` (calls that never reported become ``abandoned`` at their estimated cost)
    and its cost is settled, also when the block raised or was cancelled, however often (anyio
    cancels every await; the settle is finished first, the cancellation raised after it): calls that
    were made are paid for. Once cancelled, it waits for its settle at most ``cancel_grace`` (default
    :data:`CANCELLED_SETTLE_GRACE`) more, so a hung database cannot make it uncancellable. A settle
    that fails or runs out of that time is logged with the amount owed and how to settle it by hand,
    then raises (the cancellation, if there was one). Unpriced calls follow ``unpriced`` (see
    :func:`turn_charge`), are counted in :attr:`charge` either way and noted on the settle entry;
    under ``"error"`` an :class:`UnpricedCallsError` is raised after the priced part is settled
    (unless the block already raised).

    The reservation key defaults to ``turn:<turn_id>``. Pass a ``key`` that is stable across retries
    of one request and a retry neither reserves nor charges twice: its entry raises
    :class:`TurnKeyReused` before the block runs, because the block's calls would cost real money
    that the first attempt's settle could never charge. Late events, after the turn closed, change
    nothing: the turn's totals, and so the charge, are fixed when it closes. A reserve whose answer
    was lost (a :class:`StorageError`, the connection dropped after its COMMIT, say) is asked once
    more: a reservation this scope's own turn wrote is taken as its own and the block runs; any
    other still raises :class:`TurnKeyReused`.

    While the block runs, the scope renews its hold (:meth:`CreditLedger.renew`) every
    ``renew_every`` (default a third of the hold's ``ttl``), so a turn that runs longer than the TTL
    keeps its credits held; the TTL still frees them within ``ttl`` of a process that died. A failed
    renewal is logged (once per run of failures) and tried again at the next interval; it never
    reaches the block. Renewal stops when the turn has closed, before the settle, cancelled or not.

    Why a scope of its own rather than a ``credits=`` argument on :class:`scoped_turn`: the
    accumulator stays free of the database, and a refused reservation is an ordinary exception
    raised before any turn is opened.
    """

    def __init__(
        self,
        ledger: CreditLedger,
        *,
        account: str,
        estimate: Amount,
        key: str | None = None,
        turn: TurnTokenAccumulator | None = None,
        unpriced: UnpricedPolicy = "estimate",
        ttl: timedelta | None = None,
        renew_every: timedelta | None = None,
        cancel_grace: timedelta | None = None,
        **labels: Any,
    ) -> None:
        _check_policy(unpriced)
        if ttl is not None and ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        if renew_every is not None and renew_every <= timedelta(0):
            raise ValueError("renew_every must be positive")
        self.ledger = ledger
        self.account = account
        self.estimate = _amount(estimate, "estimate", minimum="zero")
        self.unpriced: UnpricedPolicy = unpriced
        self.ttl = ttl
        lifetime = ledger.hold_ttl if ttl is None else ttl
        self.renew_every = lifetime / 3 if renew_every is None else renew_every
        if self.renew_every >= lifetime:
            raise ValueError(f"renew_every must be shorter than the hold's ttl ({lifetime}), or the hold lapses first")
        self.cancel_grace = cancel_grace
        self._scope = scoped_turn(turn=turn, **labels)
        self.turn = self._scope.turn
        self.key = key or f"turn:{self.turn.turn_id}"
        self.reservation: Reservation | None = None
        """The turn's reservation; its ``expires_at`` follows the renewals."""
        self.charge: TurnCharge | None = None
        self._renewal: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TurnTokenAccumulator:
        self.reservation = await self._reserve()
        if self.reservation.replayed:
            raise TurnKeyReused(
                f"reservation key {self.key!r} was already used (turn {self.reservation.turn_id}); "
                "the turn is not run again, so nothing is spent that could not be charged",
                self.reservation,
            )
        turn = await self._scope.__aenter__()
        self._renewal = asyncio.create_task(self._keep_hold(), name=f"turnledger-renew-{self.reservation.id}")
        return turn

    async def _reserve(self) -> Reservation:
        began = self.ledger._now()

        async def reserve() -> Reservation:
            return await self.ledger.reserve(
                self.account, self.estimate, self.key, turn_id=self.turn.turn_id, ttl=self.ttl
            )

        try:
            return await reserve()
        except SchemaMissingError:
            raise
        except StorageError:
            # The reserve may have committed and only its answer been lost: asked again, the
            # ledger answers with what was written. A turn's id is its own (a uuid, unless the
            # caller names it), and a reservation written before this attempt began is another
            # attempt's, which this turn must not run under (see TurnKeyReused).
            again = await reserve()
        if again.replayed and again.turn_id == self.turn.turn_id and again.created_at >= began:
            return dataclasses.replace(again, replayed=False)
        return again

    async def _keep_hold(self) -> None:
        """Renew the reservation's hold every ``renew_every`` until cancelled; never raises."""
        failing = False
        while True:
            await asyncio.sleep(self.renew_every.total_seconds())
            assert self.reservation is not None
            try:
                self.reservation = await self.ledger.renew(self.reservation, self.ttl)
            except ReservationClosed as closed:
                # Nothing left to renew (the renewals came too late, or someone released it); the
                # settle still debits the turn's cost.
                problem_counts["credit_scope:renew"] += 1
                logger.warning("turnledger could not keep turn %s's credits held: %s", self.turn.turn_id, closed)
                return
            except Exception as failure:
                problem_counts["credit_scope:renew"] += 1
                if not failing:
                    logger.warning(
                        "turnledger could not renew the hold of turn %s (reservation %d, lapses at %s); "
                        "trying again every %s",
                        self.turn.turn_id,
                        self.reservation.id,
                        self.reservation.expires_at.isoformat(),
                        self.renew_every,
                        exc_info=failure,
                    )
                failing = True
            else:
                failing = False

    async def _stop_renewal(self, grace: float) -> asyncio.CancelledError | None:
        """Cancel the renewal and wait for it to end, at most ``grace`` seconds (a renewal stuck in a
        database that hangs is left to end on its own); the cancellation absorbed meanwhile."""
        renewal, self._renewal = self._renewal, None
        if renewal is None:
            return None
        renewal.cancel()
        _, absorbed = await _finish_despite_cancellation(renewal, True, grace)
        return absorbed

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.reservation is not None
        # A cancellation that arrives while the turn closes or settles (anyio, so Starlette and
        # FastAPI, cancels every await after the first) must not skip the settle: the calls were
        # made, and an unsettled hold just expires, so the turn would go unpaid without a word.
        # The turn closes anyway (what is still pending becomes abandoned); the settle is finished
        # and the cancellation raised after it.
        cancelled: asyncio.CancelledError | None = None
        grace = CANCELLED_SETTLE_GRACE if self.cancel_grace is None else self.cancel_grace
        try:
            # Calls still in flight may keep the turn open a while yet: the hold is renewed until it closes.
            await self._scope.__aexit__(exc_type, exc, tb)
        except asyncio.CancelledError as interrupted:
            cancelled = interrupted
        finally:
            stopped = await self._stop_renewal(grace.total_seconds())
        cancelled = cancelled or stopped
        charged, priced_cost, unpriced = turn_charge(self.turn, self.estimate, self.unpriced)
        # The journal is what a bill is argued from: a charge that is not the priced calls' sum
        # says so there, not only in a log line written once per process.
        note = f"{unpriced} unpriced call(s), settled under unpriced={self.unpriced!r}" if unpriced else None
        settle = self.ledger.settle(self.reservation, charged, note=note)
        # A task whose cancellation the body already met is cancelled already (asyncio cancels once).
        current = asyncio.current_task()
        already = cancelled is not None or (current is not None and current.cancelling() > 0)
        settling, late_cancel = await _finish_despite_cancellation(settle, already, grace.total_seconds())
        cancelled = cancelled or late_cancel
        try:
            if not settling.done():
                raise TimeoutError(f"the settle did not answer within {grace} of the cancellation")
            entry = settling.result()
        except (Exception, asyncio.CancelledError) as failure:
            _settle_failed(self.turn, self.reservation, charged, failure)
            if cancelled is not None:
                # The caller asked for a cancellation: an ordinary error in its place would be caught
                # by an error handler that then carries on with a cancelled request.
                raise cancelled from failure
            if isinstance(exc, asyncio.CancelledError):
                raise exc from failure
            raise
        self.charge = TurnCharge(
            reservation=self.reservation,
            entry=entry,
            charged=charged,
            priced_cost=priced_cost,
            unpriced_calls=unpriced,
            abandoned_calls=self.turn.abandoned_calls,
            policy=self.unpriced,
        )
        if unpriced:
            warn_once(
                f"credits.unpriced.{self.unpriced}",
                "turn %s made %d unpriced call(s); settled under unpriced=%r",
                self.turn.turn_id,
                unpriced,
                self.unpriced,
            )
        if cancelled is not None:
            raise cancelled
        if unpriced and self.unpriced == "error" and exc is None:
            raise UnpricedCallsError(
                f"turn {self.turn.turn_id} made {unpriced} unpriced call(s); settled {charged} for the priced ones",
                self.charge,
            )


def _settle_failed(
    turn: TurnTokenAccumulator, reservation: Reservation, charged: Decimal, failure: BaseException
) -> None:
    # Logged with everything needed to settle it by hand, each time: once its hold expires, nothing
    # else remembers that this turn's calls were made and not paid for.
    problem_counts["credit_scope:settle"] += 1
    logger.error(
        "turnledger could not settle turn %s: reservation %d on account %r owes %s; settle it with "
        "ledger.settle(await ledger.get_reservation(%d), Decimal(%r)) (its hold lapses at %s)",
        turn.turn_id,
        reservation.id,
        reservation.account,
        charged,
        reservation.id,
        str(charged),
        reservation.expires_at.isoformat(),
        exc_info=failure,
    )


async def _finish_despite_cancellation(
    work: Awaitable[T], already_cancelled: bool, grace: float
) -> tuple[asyncio.Future[T], asyncio.CancelledError | None]:
    """``work``, awaited to the end however often this task is cancelled meanwhile, but once it is
    cancelled (or ``already_cancelled``) for at most ``grace`` seconds more; then ``work`` is
    cancelled and left to end on its own. Returns ``work``'s future (not done when given up on) and
    the first cancellation absorbed here."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    task.add_done_callback(_retrieve)
    deadline = loop.time() + grace if already_cancelled else None
    absorbed: asyncio.CancelledError | None = None
    while not task.done():
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            # asyncio.wait leaves ``work`` running when this task is cancelled.
            await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError as interrupted:
            absorbed = absorbed or interrupted
            if deadline is None:
                deadline = loop.time() + grace
            continue
        if not task.done():
            task.cancel()  # out of time: the caller logs what is owed
            break
    return task, absorbed


def _retrieve(task: asyncio.Future[Any]) -> None:
    # A settle given up on may still fail later, with nobody awaiting it: the caller logged it already.
    if not task.cancelled():
        task.exception()


# -- helpers -------------------------------------------------------------------------------------
def _amount(value: object, name: str, *, minimum: Literal["zero", "positive", "nonzero"]) -> Decimal:
    if isinstance(value, float):
        raise TypeError(f"{name} must be a Decimal, int or str, not a float (floats are not exact)")
    parsed = to_decimal(value)
    if parsed is None:
        raise ValueError(f"{name} must be a finite amount, not {value!r}")
    if parsed.is_zero():
        parsed = parsed.copy_abs()  # -0 is 0: no "-0" on a bill
    if minimum == "zero" and parsed < 0:
        raise ValueError(f"{name} must not be negative, not {parsed}")
    if minimum == "positive" and parsed <= 0:
        raise ValueError(f"{name} must be positive, not {parsed}")
    if minimum == "nonzero" and parsed == 0:
        raise ValueError(f"{name} must not be zero")
    # Refuses what the column cannot hold, before anything is written; and what the stored scale
    # rounds to 0, which would write a grant or debit of nothing under a key that then replays it.
    stored = quantize_amount(parsed)
    if minimum != "zero" and stored == 0:
        raise ValueError(f"{name} {parsed} rounds to 0 at {AMOUNT_SCALE} decimal places")
    return parsed


def _check_key(key: str | None, *, derived: bool = False) -> None:
    # A caller's key may use KEY_MAX_LENGTH characters; the ledger's own keys derived from it
    # (``<key>/settle``, ``<key>/expired``) use the column's spare room.
    limit = DERIVED_KEY_MAX_LENGTH if derived else KEY_MAX_LENGTH
    if not isinstance(key, str) or not key or len(key) > limit:
        raise ValueError(f"an idempotency key must be a non-empty string of at most {limit} characters")
    # A caller's key shaped like a derived one would take it first: reservation ``a``'s default
    # settle key is then used, and the turn can never be settled (nor its hold released) with it.
    if not derived and key.endswith(DERIVED_KEY_SUFFIXES):
        raise ValueError(
            f"an idempotency key must not end in {', '.join(DERIVED_KEY_SUFFIXES)}: "
            "the ledger derives those from reservation keys"
        )


def _check_labels(**labels: str | None) -> None:
    # Refused rather than cut (nothing is lost silently) or left to the column, which PostgreSQL
    # enforces and SQLite does not.
    for name, value in labels.items():
        if value is not None and (not isinstance(value, str) or len(value) > LABEL_MAX_LENGTH):
            raise ValueError(f"{name} must be a string of at most {LABEL_MAX_LENGTH} characters")


def _check_policy(policy: str) -> None:
    if policy not in ("free", "estimate", "error"):
        raise ValueError(f"unpriced must be 'free', 'estimate' or 'error', not {policy!r}")


def _check_account(account: str) -> None:
    if not isinstance(account, str) or not account or len(account) > ACCOUNT_MAX_LENGTH:
        raise ValueError(f"an account must be a non-empty string of at most {ACCOUNT_MAX_LENGTH} characters")


def _require_available(acct: _Account, amount: Decimal, what: str) -> None:
    available = acct.available
    if quantize_amount(amount) > available:
        raise InsufficientCredits(
            f"account {acct.account_id!r}: available {canonical_amount(available)} cannot cover the {what} of {amount}"
        )


def _account_select(account: str, now: datetime) -> Any:
    # Whether any hold has expired comes with the account's row, in the same round trip: under the
    # lock, every statement makes every other writer of this account wait a little longer.
    expired = select(_H.reservation_id).where(_H.account_id == account, _H.expires_at <= now).exists()
    return select(_A.account_id, _A.balance, _A.held, _A.overdraft_limit, expired.label("has_expired_holds")).where(
        _A.account_id == account
    )


def _account_of(row: Any) -> _Account | None:
    if row is None:
        return None
    return _Account(row.account_id, row.balance, row.held, row.overdraft_limit, bool(row.has_expired_holds))


def _entry_select() -> Any:
    return select(
        _J.id,
        _J.idempotency_key,
        _J.account_id,
        _J.kind,
        _J.amount,
        _J.hold_amount,
        _J.balance_after,
        _J.held_after,
        _J.turn_id,
        _J.reservation_id,
        _J.expires_at,
        _J.note,
        _J.created_at,
    )


def _entry_of(row: Mapping[str, Any]) -> Entry:
    return Entry(
        id=int(row["id"]),
        key=row["idempotency_key"],
        account=row["account_id"],
        kind=EntryKind(row["kind"]),
        amount=row["amount"],
        hold_amount=row["hold_amount"],
        balance_after=row["balance_after"],
        held_after=row["held_after"],
        turn_id=row["turn_id"],
        reservation_id=row["reservation_id"],
        expires_at=row["expires_at"],
        note=row["note"],
        created_at=row["created_at"],
    )


def _replayed(entry: Entry) -> Entry:
    return dataclasses.replace(entry, replayed=True)


def _check_replay(entry: Entry, kind: EntryKind, account: str) -> None:
    if entry.account != account or entry.kind is not kind:
        raise CreditError(
            f"idempotency key {entry.key!r} was already used for a {entry.kind} on account {entry.account!r}"
        )


def _entry_replay(entry: Entry, kind: EntryKind, account: str) -> Entry:
    _check_replay(entry, kind, account)
    return _replayed(entry)


def _closing_replay(reservation: Reservation) -> Callable[[Entry, EntryKind, str], Entry]:
    def replay(entry: Entry, kind: EntryKind, account: str) -> Entry:
        if entry.reservation_id != reservation.id:
            raise CreditError(f"idempotency key {entry.key!r} was already used for another reservation")
        return _entry_replay(entry, kind, account)

    return replay


def _reservation_of(entry: Entry) -> Reservation:
    assert entry.expires_at is not None
    return Reservation(
        id=entry.id,
        key=entry.key,
        account=entry.account,
        amount=entry.hold_amount,
        expires_at=entry.expires_at,
        turn_id=entry.turn_id,
        created_at=entry.created_at,
        replayed=entry.replayed,
    )


def _reservation_replay(estimate: Decimal) -> Callable[[Entry, EntryKind, str], Reservation]:
    def replay(entry: Entry, kind: EntryKind, account: str) -> Reservation:
        _check_replay(entry, EntryKind.RESERVE, account)
        # A retry asks for what the first call asked for; another estimate under the key is another
        # request, which must not be told that its hold is in place.
        if entry.hold_amount != quantize_amount(estimate):
            raise CreditError(
                f"idempotency key {entry.key!r} was already used for a reservation of {entry.hold_amount} "
                f"on account {entry.account!r}, not {canonical_amount(quantize_amount(estimate))}"
            )
        return _reservation_of(_replayed(entry))

    return replay


def _balance_of(acct: _Account) -> AccountBalance:
    return AccountBalance(
        account=acct.account_id,
        balance=canonical_amount(acct.balance),
        held=canonical_amount(acct.held),
        overdraft_limit=canonical_amount(acct.overdraft_limit),
    )


async def _execute(conn: AsyncConnection, stmt: Any) -> Any:
    return await conn.execute(stmt)


def _storage_error(exc: DBAPIError) -> StorageError:
    text = str(exc.orig).lower()
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return SchemaMissingError("the credit tables do not exist: run `turnledger migrate`")
    if isinstance(exc, IntegrityError):
        return StorageError("a concurrent write used the same idempotency key or account")
    # asyncpg's errors arrive wrapped in the adapter's generic Error; the driver's own class says more.
    cause = (exc.orig.__cause__ or exc.orig) if exc.orig is not None else exc
    return StorageError(f"the credit ledger could not read or write the database: {type(cause).__name__}")


__all__ = [
    "DEFAULT_HOLD_TTL",
    "AccountBalance",
    "CreditLedger",
    "Entry",
    "EntryKind",
    "Reservation",
    "ReservationClosed",
    "TurnCharge",
    "UnpricedCallsError",
    "VerifyReport",
    "credit_scope",
    "turn_charge",
]
