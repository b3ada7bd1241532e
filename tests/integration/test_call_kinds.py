"""Call kinds beyond chat and embeddings, through the fake provider and LiteLLM's real request code.

Each is in its turn once, with the counts the provider sent and LiteLLM's own price for them, read
exactly: the Responses API (streamed or not, cache reads and reasoning), text completions, moderation,
rerank, speech, and a Router's fallback to another model after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import types
from decimal import Decimal
from typing import Any

import litellm
import pytest
from litellm.exceptions import Timeout
from litellm.router import Router

import turnledger
from tests.integration.in_flight import cancel_once_received
from turnledger import CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord
from turnledger.fake_provider import FakeProvider

D = Decimal
# LiteLLM's bundled map (1.106), USD.
O3_MINI = {"in": D("0.0000011"), "cached": D("0.00000055"), "out": D("0.0000044")}
GPT_4O_MINI = {"in": D("0.00000015"), "out": D("0.0000006")}
INSTRUCT = {"in": D("0.0000015"), "out": D("0.000002")}  # gpt-3.5-turbo-instruct
RERANK_PER_QUERY = D("0.002")  # cohere rerank-english-v3.0
TTS_1_PER_CHARACTER = D("0.000015")
RESPONSES_USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 400},
    "output_tokens": 200,
    "output_tokens_details": {"reasoning_tokens": 50},
    "total_tokens": 1200,
}
# OpenAI's Responses usage: input_tokens includes the 400 cached, output_tokens the 50 reasoning.
RESPONSES_COST = 600 * O3_MINI["in"] + 400 * O3_MINI["cached"] + 200 * O3_MINI["out"]
MCP_HANDLER = "litellm.responses.mcp.litellm_proxy_mcp_handler"

pytestmark = pytest.mark.usefixtures("tracker")


@pytest.fixture
def responses_without_mcp(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM 1.106.12 imports its MCP gateway on every Responses call, and that module imports the
    optional ``mcp`` package, failing the call before it is sent when ``mcp`` is missing (README, Known
    limits). For a call with no MCP tools the gateway only answers "not mine": without ``mcp``, a
    stand-in module answers that, and everything else LiteLLM does for the call runs as is."""
    if importlib.util.find_spec("mcp") is None:
        handler = type(
            "LiteLLM_Proxy_MCP_Handler", (), {"should_use_litellm_mcp_gateway": staticmethod(lambda tools: False)}
        )
        stand_in = types.ModuleType(MCP_HANDLER)
        stand_in.LiteLLM_Proxy_MCP_Handler = handler  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, MCP_HANDLER, stand_in)


def only_record(turn: turnledger.TurnTokenAccumulator, kind: CallKind) -> TokenCallRecord:
    [record] = turn.calls
    assert (record.call_kind, record.status) == (kind, CallStatus.SUCCESS)
    return record


@pytest.mark.usefixtures("responses_without_mcp")
@pytest.mark.parametrize("stream", [False, True])
async def test_a_responses_call_is_billed_its_cache_reads_and_reasoning_as_litellm_prices_them(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], stream: bool
) -> None:
    fake_provider.script("o3-mini", usage=RESPONSES_USAGE, content="one two three")
    async with turnledger.scoped_turn() as turn:
        response: Any = await litellm.aresponses(
            model="openai/o3-mini", input="hello", stream=stream, **provider_kwargs
        )
        if stream:
            async for _ in response:
                pass
        else:
            assert response._hidden_params["response_cost"] == pytest.approx(float(RESPONSES_COST), rel=1e-12)
    record = only_record(turn, CallKind.RESPONSES)
    assert record.stream is stream
    assert (record.prompt_tokens, record.cached_tokens) == (1000, 400)
    assert (record.completion_tokens, record.reasoning_tokens, record.total_tokens) == (200, 50, 1200)
    assert (record.cost_usd, record.cost_source) == (RESPONSES_COST, CostSource.RESPONSE_COST)


@pytest.mark.usefixtures("responses_without_mcp")
async def test_a_responses_call_to_a_model_nobody_prices_is_unpriced_not_free(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("acme-unknown", usage={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15})
    async with turnledger.scoped_turn() as turn:
        await litellm.aresponses(model="openai/acme-unknown", input="hello", **provider_kwargs)
    record = only_record(turn, CallKind.RESPONSES)
    assert (record.prompt_tokens, record.completion_tokens) == (10, 5)
    assert (record.cost_usd, record.cost_source) == (None, CostSource.NONE)
    assert turn.total_cost_usd is None and turn.unpriced_calls == 1


@pytest.mark.usefixtures("responses_without_mcp")
async def test_a_responses_answer_without_usage_is_estimated_with_its_output(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # A Responses-compatible server that sends no usage: LiteLLM prices it $0.0, turnledger estimates it.
    content = "one two three four five six seven eight nine ten"
    fake_provider.script("gpt-4o-mini", send_usage=False, content=content)
    async with turnledger.scoped_turn() as turn:
        await litellm.aresponses(model="openai/gpt-4o-mini", input="hello there", **provider_kwargs)
    record = only_record(turn, CallKind.RESPONSES)
    completion = litellm.token_counter(model="gpt-4o-mini", text=content)
    assert record.usage_estimated and record.prompt_tokens > 0
    assert (record.completion_tokens, record.cost_source) == (completion, CostSource.ESTIMATED)
    assert record.cost_usd == record.prompt_tokens * GPT_4O_MINI["in"] + completion * GPT_4O_MINI["out"]


@pytest.mark.usefixtures("responses_without_mcp")
async def test_a_responses_stream_the_caller_breaks_off_is_billed_its_estimated_input(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", content="one two three four five six seven eight", chunk_delay_s=0.02)
    async with turnledger.scoped_turn(settle_timeout=0.3) as turn:
        stream: Any = await litellm.aresponses(
            model="openai/gpt-4o-mini", input="hello there", stream=True, **provider_kwargs
        )
        async for _ in stream:
            break
    [record] = turn.calls
    assert (record.call_kind, record.status) == (CallKind.RESPONSES, CallStatus.ABANDONED)
    assert record.prompt_tokens > 0 and record.completion_tokens == 0
    assert (record.cost_usd, record.cost_source) == (record.prompt_tokens * GPT_4O_MINI["in"], CostSource.ESTIMATED)
    assert RecordFlag.COMPLETION_NOT_SEEN in record.flags


@pytest.mark.parametrize("include_usage", [True, False])
async def test_a_text_completion_is_billed_the_usage_sent_or_its_estimate(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], include_usage: bool
) -> None:
    fake_provider.script(
        "gpt-3.5-turbo-instruct",
        content="one two three",
        usage={"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    )
    async with turnledger.scoped_turn() as turn:
        await litellm.atext_completion(model="openai/gpt-3.5-turbo-instruct", prompt="hello", **provider_kwargs)
        options = {"stream_options": {"include_usage": True}} if include_usage else {}
        stream = await litellm.atext_completion(
            model="openai/gpt-3.5-turbo-instruct", prompt="hello", stream=True, **options, **provider_kwargs
        )
        async for _ in stream:
            pass
    assert [(r.call_kind, r.status, r.stream) for r in turn.calls] == [
        (CallKind.TEXT_COMPLETION, CallStatus.SUCCESS, False),
        (CallKind.TEXT_COMPLETION, CallStatus.SUCCESS, True),
    ]
    sent = 100 * INSTRUCT["in"] + 20 * INSTRUCT["out"]
    plain, streamed = turn.calls
    assert (plain.prompt_tokens, plain.completion_tokens, plain.cost_usd) == (100, 20, sent)
    if include_usage:
        assert (streamed.prompt_tokens, streamed.completion_tokens, streamed.cost_usd) == (100, 20, sent)
        assert streamed.cost_source is CostSource.RESPONSE_COST
    else:
        # No usage chunk: the three words it returned and its prompt, estimated, not $0.
        assert streamed.usage_estimated and streamed.prompt_tokens > 0 and streamed.completion_tokens == 3
        assert streamed.cost_source is CostSource.ESTIMATED
        assert streamed.cost_usd == streamed.prompt_tokens * INSTRUCT["in"] + 3 * INSTRUCT["out"]


async def test_moderation_rerank_and_speech_are_billed_as_litellms_map_prices_them(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    text = "read this aloud"
    async with turnledger.scoped_turn() as turn:
        await litellm.amoderation(model="openai/omni-moderation-latest", input="hello", **provider_kwargs)
        await litellm.arerank(
            model="cohere/rerank-english-v3.0",
            query="which?",
            documents=["a", "b", "c"],
            api_base=fake_provider.anthropic_base_url,
            api_key="fake",
        )
        await litellm.aspeech(model="openai/tts-1", input=text, voice="alloy", **provider_kwargs)
    by_kind = {r.call_kind: r for r in turn.calls}
    assert list(by_kind) == [CallKind.MODERATION, CallKind.RERANK, CallKind.SPEECH]
    assert all(r.status is CallStatus.SUCCESS for r in turn.calls)
    # omni-moderation-latest is listed at zero rates: free, and said so by LiteLLM's own figure.
    assert (by_kind[CallKind.MODERATION].cost_usd, by_kind[CallKind.MODERATION].cost_source) == (
        D(0),
        CostSource.RESPONSE_COST,
    )
    assert by_kind[CallKind.RERANK].cost_usd == RERANK_PER_QUERY
    # LiteLLM counts a speech input's characters without its whitespace (litellm.utils.count_characters).
    assert by_kind[CallKind.SPEECH].cost_usd == len(text.replace(" ", "")) * TTS_1_PER_CHARACTER
    assert turn.unpriced_calls == 0


async def test_a_router_fallback_bills_the_failed_call_nothing_and_the_fallback_at_its_own_price(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o", status=500)
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110})
    router = Router(
        model_list=[
            {"model_name": "big", "litellm_params": {"model": "openai/gpt-4o", **provider_kwargs}},
            {"model_name": "small", "litellm_params": {"model": "openai/gpt-4o-mini", **provider_kwargs}},
        ],
        fallbacks=[{"big": ["small"]}],
        num_retries=0,
    )
    async with turnledger.scoped_turn() as turn:
        await router.acompletion(model="big", messages=[{"role": "user", "content": "hi"}])
    assert [r.body["model"] for r in fake_provider.requests] == ["gpt-4o", "gpt-4o-mini"]
    failed, answered = turn.calls
    assert (failed.model, failed.status, failed.cost_usd, failed.cost_source) == (
        "gpt-4o",
        CallStatus.FAILURE,
        D(0),
        CostSource.NOT_BILLED,
    )
    assert (answered.model, answered.status) == ("gpt-4o-mini", CallStatus.SUCCESS)
    assert answered.cost_usd == 100 * GPT_4O_MINI["in"] + 10 * GPT_4O_MINI["out"]
    assert turn.total_cost_usd == answered.cost_usd


async def test_a_router_context_window_fallback_bills_the_refused_call_nothing_and_the_fallback_its_usage(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script(
        "gpt-4o-mini",
        status=400,
        error_message="This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "130000 tokens. Please reduce the length of the messages.",
    )
    fake_provider.script(
        "gpt-4.1-mini", usage={"prompt_tokens": 130_000, "completion_tokens": 100, "total_tokens": 130_100}
    )
    router = Router(
        model_list=[
            {"model_name": "short", "litellm_params": {"model": "openai/gpt-4o-mini", **provider_kwargs}},
            {"model_name": "long", "litellm_params": {"model": "openai/gpt-4.1-mini", **provider_kwargs}},
        ],
        context_window_fallbacks=[{"short": ["long"]}],
        num_retries=0,
    )
    async with turnledger.scoped_turn() as turn:
        await router.acompletion(model="short", messages=[{"role": "user", "content": "a long prompt"}])
    refused, answered = turn.calls
    assert (refused.error_type, refused.cost_usd, refused.cost_source) == (
        "ContextWindowExceededError",
        D(0),
        CostSource.NOT_BILLED,
    )
    # gpt-4.1-mini: $0.40 / 1M input, $1.60 / 1M output.
    assert (answered.model, answered.prompt_tokens, answered.completion_tokens) == ("gpt-4.1-mini", 130_000, 100)
    assert answered.cost_usd == 130_000 * D("0.0000004") + 100 * D("0.0000016") == turn.total_cost_usd


async def test_a_stream_of_tool_calls_without_usage_is_estimated_with_its_tools_and_arguments(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    arguments = '{"city": "Paris, France", "unit": "celsius", "days": 7}'
    messages = [{"role": "user", "content": "what is the weather in Paris this week"}]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    fake_provider.script(
        "gpt-4o-mini",
        tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}],
    )
    async with turnledger.scoped_turn() as turn:
        stream = await litellm.acompletion(
            model="openai/gpt-4o-mini",
            messages=messages,
            tools=tools,
            stream=True,
            _skip_mcp_handler=True,
            **provider_kwargs,
        )
        async for _ in stream:
            pass
    [record] = turn.calls
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages, tools=tools)
    completion = litellm.token_counter(model="gpt-4o-mini", text="get_weather" + arguments)
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    assert record.cost_source is CostSource.ESTIMATED and record.usage_estimated
    assert record.cost_usd == prompt * GPT_4O_MINI["in"] + completion * GPT_4O_MINI["out"]


async def test_a_stream_of_several_choices_without_usage_is_estimated_with_every_choice(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", content="one two three four")
    async with turnledger.scoped_turn() as turn:
        for n in (1, 3):
            stream = await litellm.acompletion(
                model="openai/gpt-4o-mini",
                messages=[{"role": "user", "content": "count"}],
                n=n,
                stream=True,
                **provider_kwargs,
            )
            async for _ in stream:
                pass
    one, three = turn.calls
    assert one.prompt_tokens == three.prompt_tokens > 0
    assert (one.completion_tokens, three.completion_tokens) == (4, 12)
    assert three.cost_usd == three.prompt_tokens * GPT_4O_MINI["in"] + 12 * GPT_4O_MINI["out"]


def test_a_sync_moderation_is_heard_of_by_no_logger_so_no_turn_has_it(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], tracker: turnledger.TokenTrackingCallback
) -> None:
    # LiteLLM 1.106.12's sync moderation() calls the openai SDK directly, outside its logging (README,
    # Known limits): the provider has the request, and no callback ever hears of it. amoderation is heard.
    with turnledger.scoped_turn() as turn:
        litellm.moderation(model="openai/omni-moderation-latest", input="hello", **provider_kwargs)
    assert [r.path for r in fake_provider.requests] == ["/v1/moderations"]
    assert turn.calls == [] and not tracker.stats


@pytest.mark.usefixtures("responses_without_mcp")
async def test_a_responses_stream_without_usage_is_billed_litellms_own_count_which_it_does_not_mark(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM 1.106.12 counts a Responses stream the server sent no usage for itself, and hands the
    # callbacks that count as the usage (README, Known limits): it reads as the provider's.
    content = "one two three four five six seven eight nine ten"
    fake_provider.script("gpt-4o-mini", send_usage=False, content=content)
    async with turnledger.scoped_turn() as turn:
        stream: Any = await litellm.aresponses(
            model="openai/gpt-4o-mini", input="hello there", stream=True, **provider_kwargs
        )
        async for _ in stream:
            pass
    record = only_record(turn, CallKind.RESPONSES)
    assert record.completion_tokens == litellm.token_counter(model="gpt-4o-mini", text=content)
    assert (record.cost_source, record.usage_estimated, record.flags) == (CostSource.RESPONSE_COST, False, ())
    assert record.cost_usd == record.prompt_tokens * GPT_4O_MINI["in"] + record.completion_tokens * GPT_4O_MINI["out"]


async def test_an_ocr_call_is_billed_per_page_and_one_nobody_prices_is_unpriced_not_free(
    fake_provider: FakeProvider,
) -> None:
    document = {"type": "document_url", "document_url": "https://documents.invalid/a.pdf"}
    fake_provider.script("mistral-ocr-latest", usage={"pages_processed": 3})
    fake_provider.script("acme-ocr", usage={"pages_processed": 3})
    async with turnledger.scoped_turn() as turn:
        for model in ("mistral/mistral-ocr-latest", "mistral/acme-ocr"):
            await litellm.aocr(
                model=model, document=document, api_base=fake_provider.anthropic_base_url, api_key="fake"
            )
    priced, unknown = turn.calls
    assert {priced.call_kind, unknown.call_kind} == {CallKind.OCR}
    # mistral-ocr-latest: $0.004 a page.
    assert (priced.cost_usd, priced.cost_source) == (3 * D("0.004"), CostSource.RESPONSE_COST)
    # LiteLLM says 0.0 for a model without a page rate: that is no price.
    assert (unknown.cost_usd, unknown.cost_source) == (None, CostSource.NONE)
    assert turn.unpriced_calls == 1


INSTRUCTIONS = "You are a meticulous assistant who answers in one short line. " * 20


@pytest.mark.usefixtures("responses_without_mcp")
@pytest.mark.parametrize("ending", ["timed out", "broken off"])
async def test_a_responses_call_never_answered_is_billed_its_instructions_too(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], ending: str
) -> None:
    # The Responses API takes its system prompt as instructions=, beside the input.
    request = {"model": "openai/gpt-4o-mini", "instructions": INSTRUCTIONS, "input": "hello there", **provider_kwargs}
    async with turnledger.scoped_turn(settle_timeout=0.3) as turn:
        if ending == "timed out":
            fake_provider.script("gpt-4o-mini", delay_s=2)
            with pytest.raises(Timeout):
                await litellm.aresponses(**request, timeout=0.3)
        else:
            fake_provider.script("gpt-4o-mini", content="one two three four five six", chunk_delay_s=0.05)
            stream: Any = await litellm.aresponses(**request, stream=True)
            async for _ in stream:
                break
    [record] = turn.calls
    sent = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": "hello there"}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=sent)
    assert (record.call_kind, record.prompt_tokens, record.completion_tokens) == (CallKind.RESPONSES, prompt, 0)
    assert (record.cost_usd, record.cost_source) == (prompt * GPT_4O_MINI["in"], CostSource.ESTIMATED)


@pytest.mark.parametrize("ending", ["timed out", "cancelled"])
async def test_a_text_completion_never_answered_is_billed_its_prompt_as_text_not_as_a_chat_message(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], ending: str
) -> None:
    prompt = "Write a haiku about the sea. " * 20
    request = {"model": "openai/gpt-3.5-turbo-instruct", "prompt": prompt, "max_retries": 0, **provider_kwargs}
    await litellm.atext_completion(**request)  # warm: a cold first call starts late
    fake_provider.script("gpt-3.5-turbo-instruct", delay_s=2)
    async with turnledger.scoped_turn(settle_timeout=0.2) as turn:
        if ending == "timed out":
            with pytest.raises(Timeout):
                await litellm.atext_completion(**request, timeout=0.3)
        else:
            await cancel_once_received(fake_provider, litellm.atext_completion(**request), received=2)
    [record] = turn.calls
    tokens = litellm.token_counter(model="gpt-3.5-turbo-instruct", text=prompt)
    assert (record.call_kind, record.prompt_tokens, record.completion_tokens) == (CallKind.TEXT_COMPLETION, tokens, 0)
    assert (record.cost_usd, record.cost_source) == (tokens * INSTRUCT["in"], CostSource.ESTIMATED)


async def test_a_text_completion_in_flight_is_not_taken_for_one_answered(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM's atext_completion writes its request's coroutine where an answer goes before it awaits it
    # (1.106.12): read as an answer, a call cancelled in flight kept its scope waiting logging_timeout (30 s)
    # for an end event LiteLLM never sends, instead of settle_timeout.
    fake_provider.script("gpt-3.5-turbo-instruct", delay_s=2)
    async with turnledger.scoped_turn(settle_timeout=0.2) as turn:
        task = asyncio.create_task(
            litellm.atext_completion(
                model="openai/gpt-3.5-turbo-instruct", prompt="hi", litellm_call_id="tc-in-flight", **provider_kwargs
            )
        )
        while not fake_provider.requests:
            await asyncio.sleep(0.01)
        started = turn.started_call("tc-in-flight")
        assert started is not None and not started.responded
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    [record] = turn.calls
    assert (record.call_id, record.status) == ("tc-in-flight", CallStatus.ABANDONED)
