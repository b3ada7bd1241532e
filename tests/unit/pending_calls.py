"""A started chat call as the accumulator keeps it, for tests of turns and their closing."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from turnledger.accumulator import PendingCall
from turnledger.records import CallKind


def pending_call(call_id: str, *, model: str = "m", call_details: Mapping[str, Any] | None = None) -> PendingCall:
    """A non-streamed OpenAI chat call ``call_id``; ``call_details`` as LiteLLM's live details (its
    ``original_response`` tells whether the answer arrived), none by default."""
    return PendingCall(
        call_id=call_id,
        model=model,
        provider="openai",
        call_kind=CallKind.CHAT,
        stream=False,
        started_at=datetime.now(UTC),
        started_monotonic=0.0,
        call_details=call_details,
    )
