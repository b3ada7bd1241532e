"""The cost corpus: realistic provider responses, through the fake provider and LiteLLM for real.

Every expected cost is written out here from the per-token rates of LiteLLM's bundled map (copied
into the constants below, as Decimal strings) or of the test's own price table, and compared with
exact Decimal equality.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import litellm
import pytest

import turnledger
from tests.integration.usage_blocks import AUDIO_USAGE
from turnledger import CallKind, CallStatus, CostSource, PriceTable, RecordFlag, TokenCallRecord, TurnTokenAccumulator
from turnledger.fake_provider import FakeProvider

MESSAGES: Any = [{"role": "user", "content": "say hello"}]
KEY = "sk-fake-not-a-real-key"
D = Decimal

# Per-token rates from LiteLLM's bundled map (litellm 1.106), in USD.
O3_MINI = {"in": D("0.0000011"), "cached": D("0.00000055"), "out": D("0.0000044")}
SONNET_45 = {
    "in": D("0.000003"),
    "read": D("0.0000003"),
    "write_5m": D("0.00000375"),
    "write_1h": D("0.000006"),
    "out": D("0.000015"),
}
GEMINI_25_FLASH = {"in": D("0.0000003"), "cached": D("0.00000003"), "out": D("0.0000025")}
DEEPSEEK_CHAT = {"in": D("0.00000028"), "cached": D("0.000000028"), "out": D("0.00000042")}
GPT_4O = {"in": D("0.0000025"), "cached": D("0.00000125"), "out": D("0.00001")}
BEDROCK_SONNET_35 = {"in": D("0.000003"), "read": D("0.0000003"), "write": D("0.00000375"), "out": D("0.000015")}
GPT_4O_MINI = {"in": D("0.00000015"), "out": D("0.0000006")}
EMBED_3_SMALL = {"in": D("0.00000002")}
GPT_AUDIO_MINI = {"in": D("0.0000006"), "audio_in": D("0.00001"), "out": D("0.0000024"), "audio_out": D("0.00002")}

# The application's own prices (LiteLLM's model_cost schema), for what LiteLLM cannot price.
USER_PRICES = {
    "models": {
        "acme-ft-base": {"input_cost_per_token": "0.000002", "output_cost_per_token": "0.000008"},
        "acme-free": {"input_cost_per_token": 0, "output_cost_per_token": 0},
        "dall-e-3": {"output_cost_per_image": "0.04"},
        # gemini-2.5-pro's entry, copied from LiteLLM's map for a deployment LiteLLM does not know.
        "acme-long": {
            "input_cost_per_token": 1.25e-06,
            "input_cost_per_token_above_200k_tokens": 2.5e-06,
            "output_cost_per_token": 1e-05,
            "output_cost_per_token_above_200k_tokens": 1.5e-05,
        },
        # gpt-audio's entry, copied from LiteLLM's map for a voice deployment LiteLLM does not know.
        "acme-voice": {
            "input_cost_per_token": 2.5e-06,
            "output_cost_per_token": 1e-05,
            "input_cost_per_audio_token": 3.2e-05,
            "output_cost_per_audio_token": 6.4e-05,
        },
    },
    "aliases": {"acme-ft-deployment": "acme-ft-base"},
}
ACME_FT = {"in": D("0.000002"), "out": D("0.000008")}
DALL_E_3_PER_IMAGE = D("0.04")

Call = Callable[[FakeProvider], Awaitable[Any]]


def chat(model: str, **extra: Any) -> Call:
    async def run(fp: FakeProvider) -> Any:
        kwargs: dict[str, Any] = {"api_base": fp.base_url, "api_key": KEY}
        kwargs.update(extra)
        return await litellm.acompletion(model=model, messages=MESSAGES, **kwargs)

    return run


def anthropic(model: str) -> Call:
    async def run(fp: FakeProvider) -> Any:
        return await litellm.acompletion(model=model, messages=MESSAGES, api_base=fp.anthropic_base_url, api_key=KEY)

    return run


def gemini(model: str) -> Call:
    async def run(fp: FakeProvider) -> Any:
        return await litellm.acompletion(
            model=model, messages=MESSAGES, api_base=fp.anthropic_base_url + "/v1beta", api_key=KEY
        )

    return run


def azure(deployment: str) -> Call:
    async def run(fp: FakeProvider) -> Any:
        return await litellm.acompletion(
            model=f"azure/{deployment}",
            messages=MESSAGES,
            api_base=fp.anthropic_base_url,
            api_key=KEY,
            api_version="2024-10-21",
        )

    return run


def bedrock(model_id: str) -> Call:
    async def run(fp: FakeProvider) -> Any:
        return await litellm.acompletion(
            model=f"bedrock/converse/{model_id}",
            messages=MESSAGES,
            aws_bedrock_runtime_endpoint=fp.anthropic_base_url,
            aws_access_key_id="AKIAFAKEFAKEFAKE",
            aws_secret_access_key="fake-secret",
            aws_region_name="us-east-1",
        )

    return run


def embedding(model: str) -> Call:
    async def run(fp: FakeProvider) -> Any:
        return await litellm.aembedding(model=model, input=["one text", "another"], api_base=fp.base_url, api_key=KEY)

    return run


def image(model: str, n: int) -> Call:
    async def run(fp: FakeProvider) -> Any:
        return await litellm.aimage_generation(
            model=model, prompt="a lighthouse", n=n, size="1024x1024", api_base=fp.base_url, api_key=KEY
        )

    return run


async def stream_without_usage(fp: FakeProvider) -> Any:
    # A custom api_base: LiteLLM does not ask for include_usage and the server sends no usage chunk.
    stream = await litellm.acompletion(
        model="openai/gpt-4o-mini", messages=MESSAGES, api_base=fp.base_url, api_key=KEY, stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


@dataclass(frozen=True)
class Case:
    id: str
    wire_model: str
    """The model name the fake provider sees (its script key)."""
    call: Call
    cost: Decimal | None
    source: CostSource
    usage: dict[str, Any] | None = None
    tokens: dict[str, int] = field(default_factory=dict)
    """Expected normalized counts (only those named are checked)."""
    flags: frozenset[RecordFlag] = frozenset()
    """Flags the record must carry; any other flag fails the case."""
    kind: CallKind = CallKind.CHAT
    extra_response: dict[str, Any] = field(default_factory=dict)
    script: dict[str, Any] = field(default_factory=dict)


CORPUS = [
    Case(
        "openai-cache-and-reasoning",
        "o3-mini",
        chat("openai/o3-mini"),
        usage={
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 400},
            "completion_tokens_details": {"reasoning_tokens": 50},
        },
        # OpenAI: prompt_tokens includes the 400 cached; completion includes the 50 reasoning.
        cost=600 * O3_MINI["in"] + 400 * O3_MINI["cached"] + 200 * O3_MINI["out"],
        source=CostSource.RESPONSE_COST,
        tokens={"prompt_tokens": 1000, "cached_tokens": 400, "completion_tokens": 200, "reasoning_tokens": 50},
    ),
    Case(
        "anthropic-cache-read-5m-and-1h-writes",
        "claude-sonnet-4-5-20250929",
        anthropic("anthropic/claude-sonnet-4-5-20250929"),
        usage={
            "input_tokens": 100,
            "output_tokens": 50,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
        },
        cost=(
            100 * SONNET_45["in"]
            + 1000 * SONNET_45["read"]
            + 200 * SONNET_45["write_5m"]
            + 100 * SONNET_45["write_1h"]
            + 50 * SONNET_45["out"]
        ),
        source=CostSource.RESPONSE_COST,
        # Anthropic keeps the cache out of input_tokens; LiteLLM folds it into prompt_tokens.
        tokens={
            "prompt_tokens": 1400,
            "cached_tokens": 1000,
            "cache_creation_tokens": 300,
            "cache_creation_1h_tokens": 100,
            "completion_tokens": 50,
            "total_tokens": 1450,
        },
    ),
    Case(
        "gemini-cached-content-and-thoughts",
        "gemini-2.5-flash",
        gemini("gemini/gemini-2.5-flash"),
        usage={
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 400,
            "candidatesTokenCount": 200,
            "thoughtsTokenCount": 300,
            "totalTokenCount": 1500,
        },
        # Gemini: promptTokenCount includes the cached 400; thoughts are outside candidates.
        cost=600 * GEMINI_25_FLASH["in"] + 400 * GEMINI_25_FLASH["cached"] + 500 * GEMINI_25_FLASH["out"],
        source=CostSource.RESPONSE_COST,
        tokens={"prompt_tokens": 1000, "cached_tokens": 400, "completion_tokens": 500, "reasoning_tokens": 300},
    ),
    Case(
        "deepseek-cache-hit",
        "deepseek-chat",
        chat("deepseek/deepseek-chat"),
        usage={
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_cache_hit_tokens": 600,
            "prompt_cache_miss_tokens": 400,
        },
        # LiteLLM's float is 0.00021280000000000002: the recorded cost must be the exact 0.0002128.
        cost=400 * DEEPSEEK_CHAT["in"] + 600 * DEEPSEEK_CHAT["cached"] + 200 * DEEPSEEK_CHAT["out"],
        source=CostSource.RESPONSE_COST,
        tokens={"prompt_tokens": 1000, "cached_tokens": 600, "completion_tokens": 200},
    ),
    Case(
        "azure-deployment-priced-by-its-base-model",
        "prod-gpt4o",
        azure("prod-gpt4o"),
        usage={
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_tokens_details": {"cached_tokens": 400},
        },
        extra_response={"model": "gpt-4o-2024-08-06"},
        cost=600 * GPT_4O["in"] + 400 * GPT_4O["cached"] + 200 * GPT_4O["out"],
        source=CostSource.RESPONSE_COST,
        tokens={"prompt_tokens": 1000, "cached_tokens": 400},
    ),
    Case(
        "azure-fine-tune-deployment-priced-through-an-alias",
        "acme-ft-deployment",
        azure("acme-ft-deployment"),
        usage={"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340},
        extra_response={"model": "acme-ft-2025-01"},
        cost=300 * ACME_FT["in"] + 40 * ACME_FT["out"],
        source=CostSource.PRICE_TABLE,
    ),
    Case(
        "bedrock-converse-cache",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        bedrock("anthropic.claude-3-5-sonnet-20240620-v1:0"),
        usage={
            "inputTokens": 100,
            "outputTokens": 50,
            "totalTokens": 1450,
            "cacheReadInputTokens": 1000,
            "cacheWriteInputTokens": 300,
        },
        cost=(
            100 * BEDROCK_SONNET_35["in"]
            + 1000 * BEDROCK_SONNET_35["read"]
            + 300 * BEDROCK_SONNET_35["write"]
            + 50 * BEDROCK_SONNET_35["out"]
        ),
        source=CostSource.RESPONSE_COST,
        tokens={"prompt_tokens": 1400, "cached_tokens": 1000, "cache_creation_tokens": 300, "completion_tokens": 50},
    ),
    Case(
        "openrouter-inline-cost",
        "openai/gpt-4o-mini",
        chat("openrouter/openai/gpt-4o-mini"),
        # OpenRouter bills gpt-4o-mini at OpenAI's rates and says so in usage.cost.
        usage={
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "cost": float(1000 * GPT_4O_MINI["in"] + 200 * GPT_4O_MINI["out"]),
        },
        cost=1000 * GPT_4O_MINI["in"] + 200 * GPT_4O_MINI["out"],
        source=CostSource.PROVIDER,
    ),
    Case(
        "embedding",
        "text-embedding-3-small",
        embedding("openai/text-embedding-3-small"),
        usage={"prompt_tokens": 1000, "total_tokens": 1000},
        cost=1000 * EMBED_3_SMALL["in"],
        source=CostSource.RESPONSE_COST,
        kind=CallKind.EMBEDDING,
        tokens={"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1000},
    ),
    Case(
        "image-generation-per-image-from-the-price-table",
        "dall-e-3",
        image("openai/dall-e-3", n=2),
        # LiteLLM's bundled map has no openai dall-e-3 entry: it answers None, the table prices it.
        cost=2 * DALL_E_3_PER_IMAGE,
        source=CostSource.PRICE_TABLE,
        kind=CallKind.IMAGE_GENERATION,
    ),
    Case(
        "unknown-model-is-unpriced-not-free",
        "acme-unknown-7b",
        chat("openai/acme-unknown-7b"),
        usage={"prompt_tokens": 500, "completion_tokens": 20, "total_tokens": 520},
        cost=None,
        source=CostSource.NONE,
        tokens={"prompt_tokens": 500, "completion_tokens": 20},
    ),
    Case(
        "zero-rate-model-is-free",
        "acme-free",
        chat("openai/acme-free"),
        usage={"prompt_tokens": 500, "completion_tokens": 20, "total_tokens": 520},
        cost=D(0),
        source=CostSource.PRICE_TABLE,
    ),
    Case(
        "long-prompt-priced-by-the-table-at-its-long-context-tier",
        "acme-long",
        chat("openai/acme-long"),
        usage={"prompt_tokens": 250_000, "completion_tokens": 1000, "total_tokens": 251_000},
        cost=250_000 * D("0.0000025") + 1000 * D("0.000015"),
        source=CostSource.PRICE_TABLE,
    ),
    Case(
        "audio-deployment-priced-by-the-table-at-audio-rates",
        "acme-voice",
        chat("openai/acme-voice"),
        usage=AUDIO_USAGE,
        cost=200 * D("0.0000025") + 800 * D("0.000032") + 100 * D("0.00001") + 400 * D("0.000064"),
        source=CostSource.PRICE_TABLE,
        tokens={"prompt_tokens": 1000, "completion_tokens": 500},
    ),
    Case(
        "audio-with-a-count-that-cannot-be-believed-priced-by-rates-at-audio-rates",
        "gpt-audio-mini",
        chat("openai/gpt-audio-mini"),
        usage={**AUDIO_USAGE, "total_tokens": -1},
        cost=(
            200 * GPT_AUDIO_MINI["in"]
            + 800 * GPT_AUDIO_MINI["audio_in"]
            + 100 * GPT_AUDIO_MINI["out"]
            + 400 * GPT_AUDIO_MINI["audio_out"]
        ),
        source=CostSource.COST_PER_TOKEN,
        tokens={"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
        flags=frozenset({RecordFlag.MALFORMED_USAGE}),
    ),
    Case(
        "priority-tier-with-a-count-that-cannot-be-believed-priced-at-priority-rates",
        "gpt-5",
        chat("openai/gpt-5", service_tier="priority"),
        usage={"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": -1},
        extra_response={"service_tier": "priority"},
        # gpt-5 priority: 2.5/M in, 20/M out (standard: 1.25/M and 10/M).
        cost=1000 * D("0.0000025") + 100 * D("0.00002"),
        source=CostSource.COST_PER_TOKEN,
        tokens={"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        flags=frozenset({RecordFlag.MALFORMED_USAGE}),
    ),
    Case(
        "malformed-usage-block",
        "gpt-4o-mini",
        chat("openai/gpt-4o-mini"),
        # LiteLLM coerces "12" to 12 and prices -5 output tokens at a negative cost (measured). Its
        # figure is not read at all: the counts as read (12 in, 0 out) are priced.
        usage={"prompt_tokens": "12", "completion_tokens": -5, "total_tokens": 7},
        cost=12 * GPT_4O_MINI["in"],
        source=CostSource.COST_PER_TOKEN,
        tokens={"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12},
        flags=frozenset({RecordFlag.MALFORMED_USAGE}),
    ),
]


@pytest.fixture
def priced_tracker() -> Iterator[turnledger.TokenTrackingCallback]:
    cb = turnledger.install(turnledger.TokenTrackingCallback(price_table=PriceTable.from_dict(USER_PRICES)))
    yield cb
    turnledger.uninstall(cb)


async def run_case(fp: FakeProvider, case: Case) -> TokenCallRecord:
    fp.script(case.wire_model, usage=case.usage, extra_response=case.extra_response, **case.script)
    async with turnledger.scoped_turn(user_id="corpus") as turn:
        await case.call(fp)
    [record] = turn.calls
    return record


@pytest.mark.usefixtures("priced_tracker")
@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
async def test_cost_corpus(fake_provider: FakeProvider, case: Case) -> None:
    record = await run_case(fake_provider, case)
    assert record.status is CallStatus.SUCCESS
    assert record.call_kind is case.kind
    # Exact equality: a binary-noise digit (0.00021280000000000002) would fail it.
    assert record.cost_usd == case.cost
    assert record.cost_source is case.source
    for name, value in case.tokens.items():
        assert getattr(record, name) == value, name
    assert set(record.flags) == set(case.flags)
    assert record.usage_estimated is False


@pytest.mark.usefixtures("priced_tracker")
async def test_stream_without_usage_is_estimated_not_free(fake_provider: FakeProvider) -> None:
    fake_provider.script("gpt-4o-mini", content="Hello from the fake provider.")
    async with turnledger.scoped_turn() as turn:
        received = await stream_without_usage(fake_provider)
    assert received == "Hello from the fake provider."
    # LiteLLM sent no stream_options (custom api_base) and turnledger does not add it either.
    assert "stream_options" not in fake_provider.requests[-1].body
    [record] = turn.calls
    assert record.usage_estimated is True
    assert record.cost_source is CostSource.ESTIMATED
    assert RecordFlag.USAGE_ESTIMATED in record.flags
    # litellm.token_counter: "say hello" as one user message is 9 tokens with the chat framing;
    # the returned text is 6 (cl100k/o200k: Hello| from| the| fake| provider|.).
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (9, 6, 15)
    assert record.cost_usd == 9 * GPT_4O_MINI["in"] + 6 * GPT_4O_MINI["out"]


async def _streamed_turn(
    fake_provider: FakeProvider, model: str, *, abandon: bool, **options: Any
) -> TurnTokenAccumulator:
    """A turn of one stream of ``model`` from the fake provider, read to its end or, with ``abandon``,
    broken off after its first chunk; recorded by a callback installed for it alone."""
    cb = turnledger.install(turnledger.TokenTrackingCallback())
    try:
        async with turnledger.scoped_turn(settle_timeout=0.3) as turn:
            stream = await litellm.acompletion(
                model=model,
                messages=MESSAGES,
                api_base=fake_provider.base_url,
                api_key=KEY,
                stream=True,
                **options,
            )
            async for _chunk in stream:
                if abandon:
                    break
    finally:
        turnledger.uninstall(cb)
    return turn


async def test_abandoned_stream_prompt_is_estimated(fake_provider: FakeProvider) -> None:
    fake_provider.script("gpt-4o-mini", content=" ".join(["word"] * 50), chunk_delay_s=0.02)
    turn = await _streamed_turn(
        fake_provider, "openai/gpt-4o-mini", abandon=True, stream_options={"include_usage": True}
    )
    [record] = turn.calls
    assert record.status is CallStatus.ABANDONED
    assert record.cost_source is CostSource.ESTIMATED and record.usage_estimated is True
    assert {RecordFlag.NO_CALLBACK, RecordFlag.USAGE_ESTIMATED, RecordFlag.COMPLETION_NOT_SEEN} <= set(record.flags)
    assert (record.prompt_tokens, record.completion_tokens) == (9, 0)
    assert record.cost_usd == 9 * GPT_4O_MINI["in"]


ORDER_TOOL: Any = [
    {
        "type": "function",
        "function": {
            "name": "submit_order",
            "description": "Submit the order form with every field the customer gave",
            "parameters": {
                "type": "object",
                "properties": {
                    f"field_{i}": {"type": "string", "description": f"The {i}th field of the order form"}
                    for i in range(30)
                },
            },
        },
    }
]


@pytest.mark.parametrize("abandon", [False, True], ids=["no-usage-sent", "broken-off"])
async def test_an_estimated_prompt_counts_the_tool_definitions_it_sent(
    fake_provider: FakeProvider, abandon: bool
) -> None:
    """The provider bills the tool definitions as input: about 500 tokens here, beside 9 for the question."""
    fake_provider.script("gpt-4o-mini", content=" ".join(["word"] * 20), chunk_delay_s=0.02 if abandon else 0.0)
    turn = await _streamed_turn(
        fake_provider, "openai/gpt-4o-mini", abandon=abandon, tools=ORDER_TOOL, _skip_mcp_handler=True
    )
    [record] = turn.calls
    assert record.status is (CallStatus.ABANDONED if abandon else CallStatus.SUCCESS)
    assert record.cost_source is CostSource.ESTIMATED and record.usage_estimated is True
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES, tools=ORDER_TOOL)
    assert prompt > 500 > litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES)
    assert record.prompt_tokens == prompt
    assert record.cost_usd == prompt * GPT_4O_MINI["in"] + record.completion_tokens * GPT_4O_MINI["out"]


@pytest.mark.parametrize("abandon", [False, True], ids=["no-usage-sent", "broken-off"])
async def test_an_estimated_stream_is_priced_at_the_service_tier_it_asked_for(
    fake_provider: FakeProvider, abandon: bool
) -> None:
    fake_provider.script("o3", chunk_delay_s=0.02 if abandon else 0.0)
    turn = await _streamed_turn(fake_provider, "openai/o3", abandon=abandon, service_tier="flex")
    [record] = turn.calls
    assert record.cost_source is CostSource.ESTIMATED
    assert (record.prompt_tokens, record.completion_tokens) == ((9, 0) if abandon else (9, 6))
    # o3 flex: half its standard 2/M in and 8/M out.
    assert record.cost_usd == 9 * D("0.000001") + record.completion_tokens * D("0.000004")


async def test_corpus_leaves_litellm_model_cost_untouched(fake_provider: FakeProvider) -> None:
    before = {k: dict(v) for k, v in litellm.model_cost.items() if isinstance(v, dict)}
    cb = turnledger.install(turnledger.TokenTrackingCallback(price_table=PriceTable.from_dict(USER_PRICES)))
    try:
        for case in CORPUS:
            if case.source is CostSource.PRICE_TABLE:
                await run_case(fake_provider, case)
    finally:
        turnledger.uninstall(cb)
    after = {k: dict(v) for k, v in litellm.model_cost.items() if isinstance(v, dict)}
    assert after == before
    assert "acme-ft-base" not in litellm.model_cost and "acme-free" not in litellm.model_cost


@pytest.mark.usefixtures("priced_tracker")
async def test_anthropic_stream_with_cache_is_priced_exactly(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        "claude-sonnet-4-5-20250929",
        usage={
            "input_tokens": 100,
            "output_tokens": 50,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
        },
    )
    async with turnledger.scoped_turn() as turn:
        stream = await litellm.acompletion(
            model="anthropic/claude-sonnet-4-5-20250929",
            messages=MESSAGES,
            api_base=fake_provider.anthropic_base_url,
            api_key=KEY,
            stream=True,
        )
        async for _chunk in stream:
            pass
    [record] = turn.calls
    assert record.stream is True and record.usage_estimated is False
    assert (record.prompt_tokens, record.cached_tokens, record.cache_creation_tokens) == (1400, 1000, 300)
    assert record.completion_tokens == 50
    assert record.cost_usd == (
        100 * SONNET_45["in"]
        + 1000 * SONNET_45["read"]
        + 200 * SONNET_45["write_5m"]
        + 100 * SONNET_45["write_1h"]
        + 50 * SONNET_45["out"]
    )


@pytest.mark.usefixtures("priced_tracker")
def test_sync_completion_through_an_alias(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        "acme-ft-deployment", usage={"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340}
    )
    with turnledger.scoped_turn() as turn:
        litellm.completion(
            model="azure/acme-ft-deployment",
            messages=MESSAGES,
            api_base=fake_provider.anthropic_base_url,
            api_key=KEY,
            api_version="2024-10-21",
        )
    [record] = turn.calls
    assert (record.cost_usd, record.cost_source) == (300 * ACME_FT["in"] + 40 * ACME_FT["out"], CostSource.PRICE_TABLE)
