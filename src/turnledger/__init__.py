"""turnledger: for every user turn, which LLM calls were made, their tokens and their exact cost.

import turnledger
turnledger.install()
async with turnledger.scoped_turn(user_id="u-42") as turn:
    await litellm.acompletion(...)
turn.total_cost_usd
"""

import os as _os
from typing import TYPE_CHECKING

# LiteLLM fetches its price map over the network at import unless told otherwise; turnledger must
# import (and price) offline, so the bundled map is the default. Set it to "False" to opt back in.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from turnledger.accumulator import (
    ModelMetadata,
    PendingCall,
    TurnTokenAccumulator,
    get_current_accumulator,
    register_model_usage_metadata,
    scoped_turn,
    start_turn,
)
from turnledger.credits import (
    CreditLedger,
    Reservation,
    ReservationClosed,
    TurnCharge,
    TurnKeyReused,
    UnpricedCallsError,
    credit_scope,
)
from turnledger.errors import (
    ConfigurationError,
    CreditError,
    InsufficientCredits,
    SchemaMissingError,
    StorageError,
    TurnIdReused,
    TurnledgerError,
)
from turnledger.price_map import PriceMap, PriceMapOrigin, load_price_map, refresh_price_map
from turnledger.price_table import ModelPrice, PriceTable
from turnledger.records import CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord
from turnledger.store import reports
from turnledger.store.engine import make_engine, session_factory
from turnledger.store.record import TurnRows, insert_turn_rows, record_token_usage, record_turn, turn_rows
from turnledger.store.replay import ReplayReport, replay_outbox
from turnledger.store.reports import ReportBy, ReportRow, usage_report
from turnledger.store.tables import TABLE_NAMES
from turnledger.store.writer import BatchWriter
from turnledger.subscribers import JsonlLedger, subscribe

if TYPE_CHECKING:
    # What type checkers see; at run time __getattr__ below loads them on first use.
    from turnledger.callback import TokenTrackingCallback, install, is_installed, token_tracker, uninstall

_FROM_CALLBACK = frozenset({"TokenTrackingCallback", "install", "is_installed", "token_tracker", "uninstall"})

if not TYPE_CHECKING:
    # Hidden from type checkers: a module __getattr__ would make every misspelled attribute
    # (``turnledger.instal``) type-check as ``object`` instead of an error.

    def __getattr__(name: str) -> object:
        # The callback module imports LiteLLM (about 2 s): loaded on first use, so the CLI's reports,
        # migrations and replays, and any process that only reads or writes the ledger, start without it.
        if name in _FROM_CALLBACK:
            from turnledger import callback

            value = getattr(callback, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module 'turnledger' has no attribute {name!r}")


def __dir__() -> list[str]:
    # dir() and completion list the lazy names before their first use too.
    return sorted(set(globals()) | _FROM_CALLBACK)


__version__ = "0.1.0"

# In plain sorted order (tests/unit/test_public_api.py pins it), not ruff's constants-first one.
__all__ = [  # noqa: RUF022
    "BatchWriter",
    "CallKind",
    "CallStatus",
    "ConfigurationError",
    "CostSource",
    "CreditError",
    "CreditLedger",
    "InsufficientCredits",
    "JsonlLedger",
    "ModelMetadata",
    "ModelPrice",
    "PendingCall",
    "PriceMap",
    "PriceMapOrigin",
    "PriceTable",
    "RecordFlag",
    "ReplayReport",
    "ReportBy",
    "ReportRow",
    "Reservation",
    "ReservationClosed",
    "SchemaMissingError",
    "StorageError",
    "TABLE_NAMES",
    "TokenCallRecord",
    "TokenTrackingCallback",
    "TurnCharge",
    "TurnIdReused",
    "TurnKeyReused",
    "TurnRows",
    "TurnTokenAccumulator",
    "TurnledgerError",
    "UnpricedCallsError",
    "__version__",
    "credit_scope",
    "get_current_accumulator",
    "insert_turn_rows",
    "install",
    "is_installed",
    "load_price_map",
    "make_engine",
    "record_token_usage",
    "record_turn",
    "refresh_price_map",
    "register_model_usage_metadata",
    "replay_outbox",
    "reports",
    "scoped_turn",
    "session_factory",
    "start_turn",
    "subscribe",
    "token_tracker",
    "turn_rows",
    "uninstall",
    "usage_report",
]
