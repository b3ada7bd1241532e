"""What the credits API answers with: journal entries, reservations, balances, verify reports, and
what a :class:`turnledger.credits.credit_scope` charged for its turn.

Frozen dataclasses, amounts at the stored scale; ``replayed`` says a call found its idempotency key
already used and returned the first result unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext

from turnledger.credits_arguments import UnpricedPolicy
from turnledger.credits_models import EXACT_CONTEXT as _EXACT
from turnledger.credits_models import EntryKind, canonical_amount


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
