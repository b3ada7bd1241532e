"""turnledger: for every user turn, which LLM calls were made, their tokens and their exact cost.

import turnledger
turnledger.install()
async with turnledger.scoped_turn(user_id="u-42") as turn:
    await litellm.acompletion(...)
turn.total_cost_usd
"""

import os as _os

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
from turnledger.callback import TokenTrackingCallback, install, is_installed, token_tracker, uninstall
from turnledger.errors import (
    ConfigurationError,
    CreditError,
    InsufficientCredits,
    SchemaMissingError,
    StorageError,
    TurnledgerError,
)
from turnledger.records import CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord
from turnledger.subscribers import JsonlLedger, subscribe

__version__ = "0.1.0"

__all__ = [
    "CallKind",
    "CallStatus",
    "ConfigurationError",
    "CostSource",
    "CreditError",
    "InsufficientCredits",
    "JsonlLedger",
    "ModelMetadata",
    "PendingCall",
    "RecordFlag",
    "SchemaMissingError",
    "StorageError",
    "TokenCallRecord",
    "TokenTrackingCallback",
    "TurnTokenAccumulator",
    "TurnledgerError",
    "__version__",
    "get_current_accumulator",
    "install",
    "is_installed",
    "register_model_usage_metadata",
    "scoped_turn",
    "start_turn",
    "subscribe",
    "token_tracker",
    "uninstall",
]
