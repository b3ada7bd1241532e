"""A Router deployment's own prices bill every call it makes, LiteLLM's usage or turnledger's estimate.

LiteLLM keeps such prices under the deployment's id, not the model's name (``litellm.model_cost[id]``),
and prices a call it has usage for there. A call priced from counts turnledger estimated (a stream
without usage, an embedding server that sends none, a call cancelled in flight) must find them too:
at the model's list price, or unpriced for a model LiteLLM does not know, it would be billed wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal
from typing import Any

import pytest
from litellm.router import Router

import turnledger
from turnledger import CallStatus, CostSource, TokenCallRecord
from turnledger.fake_provider import FakeProvider

MESSAGES: Any = [{"role": "user", "content": "say hello to everyone in the room"}]
# The deployments' own rates: gpt-4o-mini's list price is 0.15 / 0.60 per 1M, acme-7b has none.
IN_RATE = Decimal("0.000001")
OUT_RATE = Decimal("0.000002")

pytestmark = pytest.mark.usefixtures("tracker")


def priced_router(provider_kwargs: dict[str, Any]) -> Router:
    rates = {"input_cost_per_token": float(IN_RATE), "output_cost_per_token": float(OUT_RATE)}
    return Router(
        model_list=[
            # Prices in litellm_params, for a model LiteLLM knows (at another price) and one it does not.
            {"model_name": "mini", "litellm_params": {"model": "openai/gpt-4o-mini", **rates, **provider_kwargs}},
            {"model_name": "acme", "litellm_params": {"model": "openai/acme-7b", **rates, **provider_kwargs}},
            # Prices in model_info.
            {
                "model_name": "mini-info",
                "litellm_params": {"model": "openai/gpt-4o-mini", **provider_kwargs},
                "model_info": rates,
            },
            {
                "model_name": "embed",
                "litellm_params": {
                    "model": "openai/acme-embed",
                    "input_cost_per_token": float(IN_RATE),
                    **provider_kwargs,
                },
            },
        ]
    )


def assert_billed_at_the_deployment_rates(record: TokenCallRecord) -> None:
    assert record.usage_estimated and record.prompt_tokens > 0
    assert record.cost_source is CostSource.ESTIMATED
    assert record.cost_usd == record.prompt_tokens * IN_RATE + record.completion_tokens * OUT_RATE


@pytest.mark.parametrize("deployment", ["mini", "acme", "mini-info"])
async def test_a_stream_without_usage_is_estimated_at_its_deployments_prices(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], deployment: str
) -> None:
    fake_provider.script("gpt-4o-mini", content="hello to all of you")
    fake_provider.script("acme-7b", content="hello to all of you")
    router = priced_router(provider_kwargs)
    async with turnledger.scoped_turn() as turn:
        stream = await router.acompletion(model=deployment, messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
    [record] = turn.calls
    assert record.status is CallStatus.SUCCESS and record.completion_tokens > 0
    assert_billed_at_the_deployment_rates(record)


async def test_an_embedding_without_usage_is_estimated_at_its_deployments_price(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("acme-embed", send_usage=False)
    async with turnledger.scoped_turn() as turn:
        await priced_router(provider_kwargs).aembedding(model="embed", input=["one text", "another one"])
    [record] = turn.calls
    assert_billed_at_the_deployment_rates(record)


async def test_a_call_cancelled_in_flight_is_estimated_at_its_deployments_prices(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    router = priced_router(provider_kwargs)
    await router.acompletion(model="mini", messages=MESSAGES)  # warm: a cold first call starts late
    fake_provider.script("gpt-4o-mini", delay_s=5)
    async with turnledger.scoped_turn(settle_timeout=0.2) as turn:
        task = asyncio.create_task(router.acompletion(model="mini", messages=MESSAGES))
        while not fake_provider.requests[1:]:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    [record] = turn.calls
    assert record.status is CallStatus.ABANDONED
    assert_billed_at_the_deployment_rates(record)


async def test_a_usage_litellm_cannot_believe_is_priced_at_its_deployments_prices(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # A negative total: turnledger prices the counts as read, not LiteLLM's figure for the raw block.
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": -1})
    async with turnledger.scoped_turn() as turn:
        await priced_router(provider_kwargs).acompletion(model="mini", messages=MESSAGES)
    [record] = turn.calls
    assert (record.prompt_tokens, record.completion_tokens) == (1000, 100)
    assert (record.cost_usd, record.cost_source) == (1000 * IN_RATE + 100 * OUT_RATE, CostSource.COST_PER_TOKEN)
