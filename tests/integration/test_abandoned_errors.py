"""A call LiteLLM never logged, whose provider had answered with an HTTP error: real HTTP to the fake provider.

LiteLLM's ``num_retries`` without ``tenacity`` installed: a failing sync ``completion`` raises "tenacity
import failed" before LiteLLM logs the failure, so turnledger hears of no end event. LiteLLM has written
the error into its call details by then (measured on 1.106): the turn must not bill it.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

import litellm
import pytest

import turnledger
from turnledger import CallStatus, CostSource, RecordFlag
from turnledger.fake_provider import FakeProvider

MESSAGES: Any = [{"role": "user", "content": "say hello to the whole wide world"}]

pytestmark = pytest.mark.usefixtures("tracker")


@pytest.fixture
def without_tenacity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever is installed here: LiteLLM imports tenacity only when a call asks for num_retries.
    monkeypatch.setitem(sys.modules, "tenacity", None)


@pytest.mark.usefixtures("without_tenacity")
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [500, 429])
@pytest.mark.parametrize(
    "provider",
    [
        "openai",  # through the openai SDK: LiteLLM keeps "Error code: 500 - {...}"
        "deepseek",  # through LiteLLM's own HTTP handler: it keeps the provider's error body
    ],
)
def test_an_unlogged_call_the_provider_refused_is_recorded_unbilled(
    fake_provider: FakeProvider,
    provider_kwargs: dict[str, Any],
    tracker: turnledger.TokenTrackingCallback,
    provider: str,
    status: int,
    stream: bool,
) -> None:
    fake_provider.script("deepseek-chat", status=status)
    with (
        turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn,
        pytest.raises(Exception, match="tenacity import failed"),
    ):
        litellm.completion(
            model=f"{provider}/deepseek-chat", messages=MESSAGES, num_retries=2, stream=stream, **provider_kwargs
        )
    [record] = turn.calls
    # Providers bill no error answer: neither an estimated prompt nor anything else.
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (0, 0, 0)
    assert (record.cost_usd, record.cost_source, record.usage_estimated) == (Decimal(0), CostSource.NOT_BILLED, False)
    assert record.status is CallStatus.ABANDONED
    assert record.flags == (RecordFlag.NO_CALLBACK, RecordFlag.PROVIDER_ERROR)
    assert (record.model, record.provider, record.stream) == ("deepseek-chat", provider, stream)
    assert turn.total_cost_usd == Decimal(0)
    assert tracker.stats["abandoned"] == 1
