"""A deployment's own prices, or the base model it names, bill every call it makes, from LiteLLM's usage
or from turnledger's estimate.

LiteLLM keeps a Router deployment's prices under the deployment's id, not the model's name
(``litellm.model_cost[id]``), and prices an Azure deployment named ``base_model`` at that model's
rates, for a call it has usage for. A call priced from counts turnledger estimated (a stream without
usage, an embedding server that sends none, a call cancelled in flight) must find them too: at the
model's list price, or unpriced for a name LiteLLM does not know, it would be billed wrong.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import litellm
import pytest
from litellm.router import Router

import turnledger
from tests.integration.in_flight import cancel_once_received
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
        await cancel_once_received(fake_provider, router.acompletion(model="mini", messages=MESSAGES), received=2)
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


# gpt-4o in LiteLLM's bundled map (1.106): $2.50 / 1M input, $10 / 1M output.
GPT_4O_IN = Decimal("0.0000025")
GPT_4O_OUT = Decimal("0.00001")


@pytest.mark.parametrize("named_in", ["model_info", "litellm_params", "the call"])
async def test_a_stream_without_usage_from_an_azure_deployment_is_estimated_at_its_base_models_prices(
    fake_provider: FakeProvider, named_in: str
) -> None:
    azure = {"api_base": fake_provider.anthropic_base_url, "api_key": "fake", "api_version": "2024-10-21"}
    base = {"base_model": "azure/gpt-4o"}
    fake_provider.script("prod-deployment", content="hello to all of you")
    async with turnledger.scoped_turn() as turn:
        if named_in == "the call":
            stream: Any = await litellm.acompletion(
                model="azure/prod-deployment", messages=MESSAGES, stream=True, **base, **azure
            )
        else:
            deployment: dict[str, Any] = {"model": "azure/prod-deployment", **azure}
            entry: dict[str, Any] = {"model_name": "prod", "litellm_params": deployment}
            if named_in == "model_info":
                entry["model_info"] = base
            else:
                deployment.update(base)
            stream = await Router(model_list=[entry]).acompletion(model="prod", messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
    [record] = turn.calls
    assert record.usage_estimated and record.prompt_tokens > 0 and record.completion_tokens > 0
    assert record.cost_source is CostSource.ESTIMATED
    assert record.cost_usd == record.prompt_tokens * GPT_4O_IN + record.completion_tokens * GPT_4O_OUT
