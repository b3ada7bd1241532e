"""The credit ledger's reads: the statements for an account's row and its journal entries, their rows
as the ledger's values, and a database error in the ledger's words."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from turnledger.credits_models import EXACT_CONTEXT as _EXACT
from turnledger.credits_models import CreditAccount as _A
from turnledger.credits_models import CreditHold as _H
from turnledger.credits_models import CreditJournalEntry as _J
from turnledger.credits_models import EntryKind, canonical_amount
from turnledger.credits_results import AccountBalance, Entry
from turnledger.errors import SchemaMissingError, StorageError
from turnledger.store.engine import is_schema_missing


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
    if is_schema_missing(exc):
        return SchemaMissingError("the credit tables do not exist: run `turnledger migrate`")
    if isinstance(exc, IntegrityError):
        return StorageError("a concurrent write used the same idempotency key or account")
    # asyncpg's errors arrive wrapped in the adapter's generic Error; the driver's own class says more.
    cause = (exc.orig.__cause__ or exc.orig) if exc.orig is not None else exc
    return StorageError(f"the credit ledger could not read or write the database: {type(cause).__name__}")
