"""The credit API's own refusals, under :class:`turnledger.errors.CreditError`.

CreditError
├── InsufficientCredits     (turnledger.errors)
├── ReservationClosed       renew found the reservation settled, released or expired
├── TurnKeyReused           a credit_scope's reservation key was used before: the turn is not run
└── UnpricedCallsError      a turn under unpriced="error" made calls nobody could price
"""

from __future__ import annotations

from turnledger.credits_models import EntryKind
from turnledger.credits_results import Entry, Reservation, TurnCharge
from turnledger.errors import CreditError


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
