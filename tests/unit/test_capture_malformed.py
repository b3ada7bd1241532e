"""Malformed LiteLLM events (found by /tmp/review-fuzz/fuzz.py): what could be read is kept, and flagged."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import litellm
import pytest

import turnledger
from turnledger import CallStatus, RecordFlag
from turnledger.callback import _utc


def _event(call_id: str) -> tuple[dict[str, Any], litellm.ModelResponse]:
    kwargs: dict[str, Any] = {
        "litellm_call_id": call_id,
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "acompletion",
        "response_cost": 0.000015,
    }
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    return kwargs, litellm.ModelResponse(model="gpt-4o-mini", usage=usage)


@pytest.mark.parametrize(
    "bad_time",
    [
        math.nan,
        math.inf,
        -math.inf,
        1e20,
        -1e20,
        datetime.min,
        datetime.max,
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
    ],
    ids=["nan", "inf", "-inf", "1e20", "-1e20", "naive-min", "naive-max", "aware-max-west"],
)
def test_a_time_that_is_no_time_loses_the_timing_not_the_tokens(bad_time: object) -> None:
    assert _utc(bad_time) is None
    cb = turnledger.TokenTrackingCallback(name="bad-times")
    with turnledger.scoped_turn() as turn:
        kwargs, response = _event("t1")
        kwargs["stream"] = True
        kwargs["completion_start_time"] = bad_time
        cb.log_success_event(kwargs, response, bad_time, datetime(2026, 11, 26, 5, 0, 0))
        kwargs, response = _event("t2")
        cb.log_failure_event(kwargs, response, datetime(2026, 11, 26, 5, 0, 0), bad_time)
    first, second = turn.calls
    assert (first.call_id, first.status, first.prompt_tokens, first.completion_tokens) == (
        "t1",
        CallStatus.SUCCESS,
        10,
        5,
    )
    assert first.cost_usd == Decimal("0.000015")
    assert first.started_at is None and first.latency_ms is None and first.ttft_ms is None
    assert RecordFlag.MALFORMED_EVENT not in first.flags
    assert (second.call_id, second.prompt_tokens, second.cost_usd) == ("t2", 10, Decimal("0.000015"))
    assert second.latency_ms is None
    assert cb.stats["errors"] == 0
