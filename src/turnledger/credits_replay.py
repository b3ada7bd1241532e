"""What an idempotency key already used answers: the first result, marked ``replayed``, or a
:class:`CreditError` when the key was used for another request."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import Decimal

from turnledger.credits_models import EntryKind, canonical_amount, quantize_amount
from turnledger.credits_results import Entry, Reservation, _reservation_of
from turnledger.errors import CreditError


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
