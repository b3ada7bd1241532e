"""The cost chain: which source prices a call, in exact Decimal. Unpriced is ``None``, never 0."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from turnledger.money import to_decimal
from turnledger.records import CallStatus, CostSource, RecordFlag, TokenCallRecord
from turnledger.usage import TokenCounts

if TYPE_CHECKING:
    from turnledger.accumulator import ModelMetadata, PendingCall


def price_call(
    kwargs: Mapping[str, Any], response_obj: Any, counts: TokenCounts
) -> tuple[Decimal | None, CostSource, list[RecordFlag]]:
    """Price one finished call from LiteLLM's ``response_cost``.

    ``None`` from LiteLLM means it could not price the call: the record is unpriced, not free.
    """
    flags: list[RecordFlag] = []
    cost = to_decimal(kwargs.get("response_cost"))
    if cost is None:
        return None, CostSource.NONE, flags
    if cost < 0:
        flags.append(RecordFlag.NEGATIVE_COST)
        return None, CostSource.NONE, flags
    return cost, CostSource.RESPONSE_COST, flags


def price_abandoned_call(pending: PendingCall, meta: ModelMetadata | None) -> TokenCallRecord:
    """The record of a call that never reported an end: kept, unpriced, flagged ``no_callback``."""
    return TokenCallRecord(
        call_id=pending.call_id,
        model=pending.model,
        provider=pending.provider,
        call_kind=pending.call_kind,
        status=CallStatus.ABANDONED,
        stream=pending.stream,
        started_at=pending.started_at,
        model_ref=meta.model_ref if meta else None,
        model_id=meta.model_id if meta else None,
        display_name=meta.display_name if meta else None,
        flags=(RecordFlag.NO_CALLBACK,),
    )
