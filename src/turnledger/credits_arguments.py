"""The checks on what a caller hands the credit ledger: amounts, idempotency keys, accounts, labels.

Each refuses with :class:`ValueError` (or :class:`TypeError` for a float) before anything is written.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from turnledger.credits_models import (
    ACCOUNT_MAX_LENGTH,
    AMOUNT_SCALE,
    DERIVED_KEY_MAX_LENGTH,
    KEY_MAX_LENGTH,
    LABEL_MAX_LENGTH,
    quantize_amount,
)
from turnledger.money import to_decimal

Amount = Decimal | int | str
"""An amount in USD. Floats are refused: a float has already lost the exact figure."""

UnpricedPolicy = Literal["free", "estimate", "error"]

DERIVED_KEY_SUFFIXES = ("/settle", "/release", "/expired")
"""What the ledger appends to a reservation's key for the entries that close it."""


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
    try:
        stored = quantize_amount(parsed)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
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
