"""turnledger's exceptions, all under one root so that callers can catch them together.

    TurnledgerError
    ├── ConfigurationError      bad settings: a database URL, a price file, an option value
    ├── StorageError            the database could not be read or written
    │   ├── SchemaMissingError  the tables are not there: run ``turnledger migrate``
    │   └── TurnIdReused        another turn is stored under this turn's ``turn_id``: not recorded
    └── CreditError             the credit ledger refused an operation
        └── InsufficientCredits the available balance cannot cover a reservation or debit

Capture never raises any of these into an LLM call: the callback logs and goes on.
"""

from __future__ import annotations


class TurnledgerError(Exception):
    """Root of every exception turnledger raises on purpose."""


class ConfigurationError(TurnledgerError):
    """A setting is missing or invalid."""


class StorageError(TurnledgerError):
    """The database could not be read or written."""


class SchemaMissingError(StorageError):
    """turnledger's tables do not exist in the database; ``turnledger migrate`` creates them."""


class TurnIdReused(StorageError):
    """Another turn is stored under this turn's ``turn_id``: this one was not stored.

    Told from the same turn recorded again (a quiet no-op) by when it opened, its calls and their cost.
    """


class CreditError(TurnledgerError):
    """The credit ledger refused an operation."""


class InsufficientCredits(CreditError):
    """The account's available balance (balance minus open holds, plus overdraft) is too small."""
