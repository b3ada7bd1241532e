"""The credit ledger's tables: accounts, the append-only journal, and the open holds.

``credit_journal`` is the truth: every change to an account is one row with a unique idempotency
key, and an account's ``balance`` (and ``held``) always equal the sums of its rows' ``amount``
(and ``hold_amount``). ``credit_accounts`` keeps those sums current so that a reservation is
checked in O(1); ``credit_holds`` lists the reservations still open so that expiry finds them
without scanning history. ``turnledger credits verify`` proves all three agree.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, Numeric, String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from turnledger.store.base import Base, UTCDateTime

AMOUNT_PRECISION = 38
AMOUNT_SCALE = 18
"""Amounts are stored with 18 decimal places: far below any per-token price, so an LLM cost is
stored exactly; anything finer is rounded half-even, once, when the row is written."""

QUANTUM = Decimal(1).scaleb(-AMOUNT_SCALE)
MAX_INTEGER_DIGITS = AMOUNT_PRECISION - AMOUNT_SCALE

# The default 28-digit context would round a 38-digit amount (and its sums) without a word.
EXACT_CONTEXT = Context(prec=2 * AMOUNT_PRECISION, rounding=ROUND_HALF_EVEN)

KEY_MAX_LENGTH = 200
"""The longest idempotency key a caller may pass."""
DERIVED_KEY_MAX_LENGTH = KEY_MAX_LENGTH + 40
"""The column's width: room for the keys the ledger derives from a caller's (``<key>/settle``)."""

ACCOUNT_MAX_LENGTH = 200

LABEL_MAX_LENGTH = 200
"""The longest ``turn_id`` or ``note`` an entry keeps."""


class EntryKind(StrEnum):
    """What a journal entry did. Its ``amount`` is its signed effect on the balance, its
    ``hold_amount`` its signed effect on the money held for open reservations."""

    GRANT = "grant"
    """Credits added (amount > 0)."""
    RESERVE = "reserve"
    """A hold taken for a turn about to run (hold_amount > 0, amount 0)."""
    SETTLE = "settle"
    """A reservation closed with its actual cost: amount = -cost, hold_amount = -the hold (or 0 if
    the hold had already expired)."""
    RELEASE = "release"
    """A hold given back unused, by the caller or because it expired (hold_amount < 0)."""
    DEBIT = "debit"
    """Credits spent without a reservation (amount < 0)."""
    REFUND = "refund"
    """Credits given back (amount > 0)."""
    ADJUST = "adjust"
    """A correction, either sign."""


def quantize_amount(value: Decimal) -> Decimal:
    """``value`` at the stored scale (half-even): what the database will hold, exactly.

    :class:`ValueError` if it has more integer digits than the column holds.
    """
    too_large = f"{value} is too large for a credit amount (at most {MAX_INTEGER_DIGITS} integer digits)"
    try:
        exact = value.quantize(QUANTUM, context=EXACT_CONTEXT)
    except InvalidOperation:
        # More digits than even the exact context holds (1e400): far past the column too.
        raise ValueError(too_large) from None
    if exact != 0 and exact.adjusted() >= MAX_INTEGER_DIGITS:
        raise ValueError(too_large)
    # A cost of 4e-19 settled is -(4e-19), which rounds to -0: stored and shown as "-0" otherwise.
    return exact.copy_abs() if exact.is_zero() else exact


def canonical_amount(value: Decimal) -> Decimal:
    """An amount without the trailing zeros of the stored scale (``Decimal('1.5')``, not ``1.500...0``)."""
    if value == value.to_integral_value(context=EXACT_CONTEXT):
        return value.quantize(Decimal(1), context=EXACT_CONTEXT)
    return value.normalize(EXACT_CONTEXT)


class ExactAmount(TypeDecorator[Decimal]):
    """An exact decimal amount: ``NUMERIC(38, 18)`` on PostgreSQL, text on SQLite.

    SQLite has no exact decimal type (NUMERIC affinity turns ``0.1`` into a binary float), so the
    amount is kept as its fixed-point text there; the ledger does its arithmetic in Python, under
    SQLite's database-wide write lock, and never in SQLite's SQL.
    """

    impl = Numeric(AMOUNT_PRECISION, AMOUNT_SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(AMOUNT_PRECISION + 2))
        return dialect.type_descriptor(Numeric(AMOUNT_PRECISION, AMOUNT_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValueError(f"an amount must be a finite Decimal, not {value!r}")
        exact = quantize_amount(value)
        return format(exact, "f") if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return canonical_amount(Decimal(str(value)))


# BIGINT ids on PostgreSQL; SQLite only autoincrements a column declared exactly INTEGER.
_EntryId = BigInteger().with_variant(Integer(), "sqlite")


class CreditAccount(Base):
    """One prepaid account and the running sums of its journal."""

    __tablename__ = "credit_accounts"

    account_id: Mapped[str] = mapped_column(String(ACCOUNT_MAX_LENGTH), primary_key=True)
    balance: Mapped[Decimal] = mapped_column(ExactAmount(), nullable=False)
    """The sum of the journal's ``amount`` for this account."""
    held: Mapped[Decimal] = mapped_column(ExactAmount(), nullable=False)
    """The sum of the journal's ``hold_amount``: money set aside for open reservations."""
    overdraft_limit: Mapped[Decimal] = mapped_column(ExactAmount(), nullable=False)
    """How far below zero ``balance - held`` may go for a reservation or debit (>= 0)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class CreditJournalEntry(Base):
    """One change to an account. Rows are only ever inserted; a trigger refuses updates."""

    __tablename__ = "credit_journal"
    __table_args__ = (
        CheckConstraint("kind IN ('grant', 'reserve', 'settle', 'release', 'debit', 'refund', 'adjust')", name="kind"),
        Index("ix_credit_journal_account_id_id", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(_EntryId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(DERIVED_KEY_MAX_LENGTH), nullable=False, unique=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("credit_accounts.account_id"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    amount: Mapped[Decimal] = mapped_column(ExactAmount(), nullable=False)
    """Signed effect on the balance."""
    hold_amount: Mapped[Decimal] = mapped_column(ExactAmount(), nullable=False)
    """Signed effect on the money held for open reservations."""
    balance_after: Mapped[Decimal] = mapped_column(ExactAmount(), nullable=False)
    held_after: Mapped[Decimal] = mapped_column(ExactAmount(), nullable=False)
    turn_id: Mapped[str | None] = mapped_column(String(LABEL_MAX_LENGTH), index=True)
    reservation_id: Mapped[int | None] = mapped_column(_EntryId, ForeignKey("credit_journal.id"), index=True)
    """For settle and release: the reserve entry they close."""
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """For reserve: when the hold lapses if nobody settles or releases it."""
    note: Mapped[str | None] = mapped_column(String(LABEL_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class CreditHold(Base):
    """A reservation still open. Deleted when it is settled, released or expires; the journal keeps the story."""

    __tablename__ = "credit_holds"
    __table_args__ = (Index("ix_credit_holds_account_id_expires_at", "account_id", "expires_at"),)

    reservation_id: Mapped[int] = mapped_column(_EntryId, ForeignKey("credit_journal.id"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("credit_accounts.account_id"), nullable=False)
    amount: Mapped[Decimal] = mapped_column(ExactAmount(), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
