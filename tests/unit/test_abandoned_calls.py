"""Calls that never reported an end before their turn closed: how they are counted and recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import turnledger
from turnledger import CallStatus


def started(call_id: str) -> dict[str, Any]:
    """LiteLLM's call details as the pre-call hook sees them (nothing arrived yet)."""
    return {
        "litellm_call_id": call_id,
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "completion",
        "start_time": datetime(2026, 11, 25, 12, 0, 0),
    }


def test_each_abandoned_call_is_counted_once_on_the_instance_that_bound_it() -> None:
    first = turnledger.TokenTrackingCallback(name="abandoned-first")
    second = turnledger.TokenTrackingCallback(name="abandoned-second")
    with turnledger.scoped_turn(settle_timeout=0, logging_timeout=0) as turn:
        for call_id in ("never-ends-1", "never-ends-2"):
            # Every installed instance sees each pre-call event, one after another.
            for cb in (first, second):
                cb.log_pre_api_call("gpt-4o-mini", None, started(call_id))
        # Started by the second instance only (installed while the call was in flight, say).
        second.log_pre_api_call("gpt-4o-mini", None, started("never-ends-3"))
        reported = started("reported")
        for cb in (first, second):
            cb.log_pre_api_call("gpt-4o-mini", None, reported)
        for cb in (first, second):
            cb.log_failure_event(reported, None, reported["start_time"], reported["start_time"] + timedelta(seconds=1))
    assert turn.abandoned_calls == 3
    assert (first.stats["abandoned"], second.stats["abandoned"]) == (2, 1)
    assert (first.stats["captured"], second.stats["duplicate"]) == (1, 1)


def test_an_abandoned_call_whose_event_comes_late_is_counted_abandoned_and_late() -> None:
    cb = turnledger.TokenTrackingCallback(name="abandoned-late")
    details = started("late-one")
    with turnledger.scoped_turn(settle_timeout=0, logging_timeout=0) as turn:
        cb.log_pre_api_call("gpt-4o-mini", None, details)
    end = datetime.now(UTC)
    cb.log_failure_event(details, None, end, end)
    assert [r.status for r in turn.calls] == [CallStatus.ABANDONED]
    assert [r.status for r in turn.late_calls] == [CallStatus.FAILURE]
    assert (cb.stats["abandoned"], cb.stats["late"]) == (1, 1)
