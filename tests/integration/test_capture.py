"""Capture end to end: LiteLLM's real HTTP, streaming and logging code against the local fake provider."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest
from litellm.exceptions import InternalServerError, MidStreamFallbackError, Timeout
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import Router

import turnledger
from turnledger import CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord, TurnTokenAccumulator
from turnledger.fake_provider import FakeProvider, Script

MESSAGES: Any = [{"role": "user", "content": "say hello"}]
# gpt-4o-mini in LiteLLM's bundled map: $0.15 / 1M input, $0.60 / 1M output.
GPT4O_MINI_IN = Decimal("0.00000015")
GPT4O_MINI_OUT = Decimal("0.0000006")


def expected_gpt4o_mini(prompt: int, completion: int) -> Decimal:
    return prompt * GPT4O_MINI_IN + completion * GPT4O_MINI_OUT


def assert_billed_a_lower_bound(record: TokenCallRecord, prompt: int, completion: int) -> None:
    """Billed an estimate of what the provider had and delivered (its input, the chunks seen): a lower bound."""
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, completion)
    assert (record.cost_usd, record.cost_source) == (expected_gpt4o_mini(prompt, completion), CostSource.ESTIMATED)
    assert {RecordFlag.USAGE_ESTIMATED, RecordFlag.COMPLETION_NOT_SEEN} <= set(record.flags)


async def read_stream(messages: list[dict[str, str]], provider_kwargs: dict[str, Any], **options: Any) -> None:
    """Stream gpt-4o-mini from the fake provider to its end, with no retries: one attempt, one record."""
    response = await litellm.acompletion(
        model="openai/gpt-4o-mini",
        messages=messages,
        stream=True,
        num_retries=0,
        max_retries=0,
        **options,
        **provider_kwargs,
    )
    async for _ in response:
        pass


def read_sync_stream(messages: list[dict[str, str]], provider_kwargs: dict[str, Any], **options: Any) -> None:
    """:func:`read_stream` through LiteLLM's sync path."""
    for _ in litellm.completion(
        model="openai/gpt-4o-mini",
        messages=messages,
        stream=True,
        num_retries=0,
        max_retries=0,
        **options,
        **provider_kwargs,
    ):
        pass


pytestmark = pytest.mark.usefixtures("tracker")


async def test_async_completion_lands_in_its_turn_with_exact_cost(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150})
    async with turnledger.scoped_turn(user_id="u-1", thread_id="t-1") as turn:
        turn.register_model_metadata("openai/gpt-4o-mini", model_id="m-17", display_name="GPT-4o mini")
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)

    assert len(turn.calls) == 1
    record = turn.calls[0]
    assert record.status is CallStatus.SUCCESS
    assert record.call_kind is CallKind.CHAT
    assert (record.model, record.provider) == ("gpt-4o-mini", "openai")
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (120, 30, 150)
    assert record.cost_usd == expected_gpt4o_mini(120, 30) == Decimal("0.000036")
    assert record.cost_micros == 36
    assert record.cost_source is CostSource.RESPONSE_COST
    assert record.provider_request_id is not None and record.provider_request_id.startswith("req_fake_")
    assert record.latency_ms is not None and record.latency_ms > 0
    assert record.started_at is not None and record.started_at.tzinfo is not None
    # The metadata was registered under the prefixed name; LiteLLM reports the bare one.
    assert (record.model_ref, record.model_id, record.display_name) == ("openai/gpt-4o-mini", "m-17", "GPT-4o mini")
    assert record.call_id
    assert turn.total_cost_usd == Decimal("0.000036")
    assert turn.total_prompt_tokens == 120 and turn.total_completion_tokens == 30
    assert turn.unpriced_calls == 0
    assert turn.user_id == "u-1" and turn.thread_id == "t-1"


async def test_async_stream_with_usage_chunk(fake_provider: FakeProvider, provider_kwargs: dict[str, Any]) -> None:
    fake_provider.script(
        "gpt-4o-mini",
        content="one two three four",
        usage={"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44},
    )
    async with turnledger.scoped_turn() as turn:
        stream = await litellm.acompletion(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **provider_kwargs,
        )
        received = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert received == "one two three four"
    [record] = turn.calls
    assert record.stream is True
    assert (record.prompt_tokens, record.completion_tokens) == (40, 4)
    assert record.cost_usd == expected_gpt4o_mini(40, 4)
    assert record.ttft_ms is not None and record.ttft_ms >= 0


async def test_embedding_and_image_generation(fake_provider: FakeProvider, provider_kwargs: dict[str, Any]) -> None:
    fake_provider.script("text-embedding-3-small", usage={"prompt_tokens": 1000, "total_tokens": 1000})
    async with turnledger.scoped_turn() as turn:
        await litellm.aembedding(model="openai/text-embedding-3-small", input=["a", "b"], **provider_kwargs)
        await litellm.aimage_generation(model="openai/dall-e-3", prompt="a red square", **provider_kwargs)
    by_kind = {r.call_kind: r for r in turn.calls}
    assert set(by_kind) == {CallKind.EMBEDDING, CallKind.IMAGE_GENERATION}
    embedding = by_kind[CallKind.EMBEDDING]
    assert (embedding.prompt_tokens, embedding.completion_tokens, embedding.total_tokens) == (1000, 0, 1000)
    # text-embedding-3-small: $0.02 / 1M tokens.
    assert embedding.cost_usd == Decimal("0.00002")
    image = by_kind[CallKind.IMAGE_GENERATION]
    assert image.status is CallStatus.SUCCESS
    assert image.model.endswith("dall-e-3")


async def test_router_acompletion(fake_provider: FakeProvider, provider_kwargs: dict[str, Any]) -> None:
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20})
    router = Router(
        model_list=[{"model_name": "fast", "litellm_params": {"model": "openai/gpt-4o-mini", **provider_kwargs}}]
    )
    async with turnledger.scoped_turn() as turn:
        await router.acompletion(model="fast", messages=MESSAGES)
        await router.acompletion(model="fast", messages=MESSAGES)
    assert [r.status for r in turn.calls] == [CallStatus.SUCCESS, CallStatus.SUCCESS]
    assert len({r.call_id for r in turn.calls}) == 2
    assert turn.total_cost_usd == 2 * expected_gpt4o_mini(10, 10)


async def test_a_router_retry_refused_after_an_attempt_that_timed_out_is_not_billed(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # The Router makes its retry inside the handler of the timed-out attempt's error, so the 500's
    # exception chain runs on (as __context__) into the earlier attempt's ReadTimeout. Read as a
    # timeout, the refused attempt was billed an estimated input: 18 tokens, $0.0000027, where the
    # provider billed nothing (found by test_capture_differential.py, seed 0).
    deployment = {"model": "openai/gpt-4o-mini", "max_retries": 0, **provider_kwargs}
    router = Router(
        model_list=[{"model_name": "fast", "litellm_params": deployment} for _ in range(2)],
        num_retries=2,
        disable_cooldowns=True,
    )
    usage = {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}
    fake_provider.plan("retry", [Script(delay_s=1.0), Script(status=500), Script(usage=usage)])
    messages: Any = [{"role": "user", "content": "hello there [[plan:retry]]"}]
    async with turnledger.scoped_turn() as turn:
        await router.acompletion(model="fast", messages=messages, timeout=0.3)
    timed_out, refused, answered = turn.calls
    assert (timed_out.error_type, timed_out.cost_source) == ("Timeout", CostSource.ESTIMATED)
    assert (refused.status, refused.error_type) == (CallStatus.FAILURE, "InternalServerError")
    assert (refused.prompt_tokens, refused.cost_usd, refused.cost_source) == (0, Decimal(0), CostSource.NOT_BILLED)
    assert not refused.usage_estimated
    assert (answered.prompt_tokens, answered.completion_tokens) == (40, 4)


async def test_http_500_is_a_failure_record_and_the_error_reaches_the_caller(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("broken-model", status=500)
    async with turnledger.scoped_turn() as turn:
        with pytest.raises(InternalServerError):
            await litellm.acompletion(
                model="openai/broken-model", messages=MESSAGES, num_retries=0, max_retries=0, **provider_kwargs
            )
    [failure] = turn.calls  # no retries asked for: one attempt, one record
    assert failure.status is CallStatus.FAILURE
    assert failure.error_type == "InternalServerError"
    # A failed call that reported no usage billed nothing: exactly 0, and it says why.
    assert failure.cost_usd == Decimal(0)
    assert failure.cost_source is CostSource.NOT_BILLED
    assert turn.unpriced_calls == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_call_that_timed_out_waiting_for_its_answer_is_billed_its_estimated_input(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], stream: bool
) -> None:
    # The provider had the whole request and went on with it: as a call cancelled in flight, not as one
    # it refused.
    fake_provider.script("gpt-4o-mini", delay_s=2)
    messages = [{"role": "user", "content": "hello there, how are you"}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    async with turnledger.scoped_turn(settle_timeout=0.5) as turn:
        with pytest.raises(Timeout):
            response = await litellm.acompletion(
                model="openai/gpt-4o-mini",
                messages=messages,
                stream=stream,
                timeout=0.3,
                num_retries=0,
                max_retries=0,
                **provider_kwargs,
            )
            async for _ in response:
                pass
    [failure] = turn.calls
    assert (failure.status, failure.error_type) == (CallStatus.FAILURE, "Timeout")
    assert_billed_a_lower_bound(failure, prompt, 0)


async def test_an_image_generation_that_timed_out_waiting_for_its_answer_is_unpriced_not_free(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # The provider had the request and went on with it, as with an image call cancelled in flight
    # (abandoned: unpriced). It was recorded as 0, not_billed.
    fake_provider.script("dall-e-3", delay_s=2)
    async with turnledger.scoped_turn(settle_timeout=0.5) as turn:
        with pytest.raises(Timeout):
            await litellm.aimage_generation(
                model="openai/dall-e-3",
                prompt="a red square",
                timeout=0.3,
                num_retries=0,
                max_retries=0,
                **provider_kwargs,
            )
    [failure] = turn.calls
    assert (failure.status, failure.error_type) == (CallStatus.FAILURE, "Timeout")
    assert (failure.cost_usd, failure.cost_source) == (None, CostSource.NONE)
    assert turn.unpriced_calls == 1 and turn.total_cost_usd is None


async def test_a_stream_broken_off_after_some_chunks_is_billed_what_it_delivered(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # The provider generated and sent those chunks, and bills them: LiteLLM counts what was delivered
    # and hands it to the failure event. Recorded free, the call looked as if it never happened.
    fake_provider.script("gpt-4o-mini", content="alpha beta gamma delta", break_after_chunks=2)
    messages = [{"role": "user", "content": "hello there, how are you"}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    async with turnledger.scoped_turn(settle_timeout=5) as turn:
        with pytest.raises(MidStreamFallbackError):
            await read_stream(messages, provider_kwargs)
    [failure] = turn.calls
    completion = litellm.token_counter(model="gpt-4o-mini", text="alpha beta", count_response_tokens=True)
    assert failure.status is CallStatus.FAILURE
    assert_billed_a_lower_bound(failure, prompt, completion)


@pytest.mark.parametrize("sync", [False, True])
def test_a_stream_broken_off_is_billed_the_tool_definitions_it_sent(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], sync: bool
) -> None:
    # LiteLLM counts a broken-off async stream's prompt from its messages alone: 30 tools (about 1,000
    # tokens, billed as input) were left out, and the call was billed 11 prompt tokens.
    fake_provider.script("gpt-4o-mini", content="alpha beta gamma delta", break_after_chunks=2)
    messages = [{"role": "user", "content": "what is the weather"}]
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"lookup_thing_{i}",
                "description": "Look up a thing in the catalogue by its identifier",
                "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
            },
        }
        for i in range(30)
    ]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages, tools=tools)
    assert prompt > 500 > litellm.token_counter(model="gpt-4o-mini", messages=messages)
    options = {"tools": tools, "_skip_mcp_handler": True}
    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(MidStreamFallbackError):
        if sync:
            read_sync_stream(messages, provider_kwargs, **options)
        else:
            asyncio.run(read_stream(messages, provider_kwargs, **options))
    [failure] = turn.calls
    completion = litellm.token_counter(model="gpt-4o-mini", text="alpha beta", count_response_tokens=True)
    assert_billed_a_lower_bound(failure, prompt, completion)


async def test_a_stream_that_timed_out_after_some_chunks_is_billed_the_chunks_too(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", content="alpha beta gamma delta", chunk_delay_s=2)
    messages = [{"role": "user", "content": "hello there, how are you"}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    async with turnledger.scoped_turn(settle_timeout=5) as turn:
        with pytest.raises(MidStreamFallbackError):
            await read_stream(messages, provider_kwargs, timeout=0.3)
    [failure] = turn.calls
    completion = litellm.token_counter(model="gpt-4o-mini", text="alpha", count_response_tokens=True)
    assert_billed_a_lower_bound(failure, prompt, completion)


def test_a_sync_stream_broken_off_after_some_chunks_is_billed_what_it_delivered(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM's sync stream path hands its failure event no usage of what it delivered (the async one
    # does, combined_usage_object): the chunks are read from the stream itself (the event's
    # original_response), the input estimated as an abandoned call's.
    fake_provider.script("gpt-4o-mini", content="alpha beta gamma delta", break_after_chunks=2)
    messages = [{"role": "user", "content": "hello there, how are you"}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(MidStreamFallbackError):
        read_sync_stream(messages, provider_kwargs)
    [failure] = turn.calls
    completion = litellm.token_counter(model="gpt-4o-mini", text="alpha beta", count_response_tokens=True)
    assert failure.status is CallStatus.FAILURE and failure.stream is True
    assert_billed_a_lower_bound(failure, prompt, completion)
    assert failure.usage_estimated is True


@pytest.mark.parametrize("sync", [False, True])
def test_a_stream_broken_off_before_its_first_chunk_is_billed_its_input_and_no_output(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], sync: bool
) -> None:
    # The provider answered (200, its headers sent) and broke off before any chunk: it had the request
    # and went on with it, and nothing of its output was seen. Before, this was recorded not billed
    # (cost 0), as if the provider never had the request.
    fake_provider.script("gpt-4o-mini", content="alpha beta gamma delta", break_after_chunks=0)
    messages = [{"role": "user", "content": "hello there, how are you"}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    delivered: list[Any] = []

    async def read() -> None:
        async for chunk in await litellm.acompletion(
            model="openai/gpt-4o-mini", messages=messages, stream=True, max_retries=0, **provider_kwargs
        ):
            delivered.append(chunk)

    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(MidStreamFallbackError):
        if sync:
            delivered.extend(
                litellm.completion(
                    model="openai/gpt-4o-mini", messages=messages, stream=True, max_retries=0, **provider_kwargs
                )
            )
        else:
            asyncio.run(read())
    [failure] = turn.calls
    (answer,) = fake_provider.answers
    assert delivered == [] and answer.broken_off and answer.status == 200
    assert failure.status is CallStatus.FAILURE and failure.stream is True
    assert_billed_a_lower_bound(failure, prompt, 0)


async def test_a_stream_broken_off_before_its_first_chunk_beside_another_call_under_its_call_id_is_billed(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # Another call under the same passed litellm_call_id in flight: the failure's pending call was
    # looked up by the id alone, found the other call, and the answer's headers were not taken for this
    # stream's. Before: not billed, $0, no request id (18 prompt tokens, $0.0000027, after).
    fake_provider.plan("other", [Script(delay_s=1)])
    fake_provider.plan("broken", [Script(break_after_chunks=0)])
    call: dict[str, Any] = {
        "model": "openai/gpt-4o-mini",
        "litellm_call_id": "request-42",
        "max_retries": 0,
        **provider_kwargs,
    }
    broken = [{"role": "user", "content": "hello there, how are you [[plan:broken]]"}]
    async with turnledger.scoped_turn(settle_timeout=5) as turn:
        other = asyncio.create_task(
            litellm.acompletion(messages=[{"role": "user", "content": "hi [[plan:other]]"}], **call)
        )
        while fake_provider.received("other") == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(MidStreamFallbackError):
            async for _chunk in await litellm.acompletion(messages=broken, stream=True, **call):
                pass
        await other
    [failure] = [r for r in turn.calls if r.status is CallStatus.FAILURE]
    (answer,) = fake_provider.answers_for("broken")
    assert_billed_a_lower_bound(failure, litellm.token_counter(model="gpt-4o-mini", messages=broken), 0)
    assert failure.provider_request_id == answer.request_id


@pytest.mark.parametrize("sync", [False, True])
def test_a_deepseek_stream_broken_off_before_its_first_chunk_is_billed_its_input(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], sync: bool
) -> None:
    # Through LiteLLM's own HTTP handler, which keeps no headers in the call details: the stream's
    # beginning is told by the original_response it writes. Before: not billed, $0 (19 prompt tokens,
    # $0.00000532 at DeepSeek's $0.28/M, the same stream through the openai SDK billed its input).
    fake_provider.script("deepseek-chat", content="alpha beta gamma delta", break_after_chunks=0)
    messages = [{"role": "user", "content": "hello there, how are you"}]
    call: dict[str, Any] = {"model": "deepseek/deepseek-chat", "messages": messages, "stream": True, **provider_kwargs}

    async def read() -> None:
        async for _chunk in await litellm.acompletion(**call):
            pass

    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(MidStreamFallbackError):
        if sync:
            list(litellm.completion(**call))
        else:
            asyncio.run(read())
    [failure] = turn.calls
    (answer,) = fake_provider.answers
    assert answer.broken_off and answer.status == 200
    assert (failure.status, failure.cost_source, failure.completion_tokens) == (
        CallStatus.FAILURE,
        CostSource.ESTIMATED,
        0,
    )
    rate = Decimal(str(litellm.model_cost["deepseek/deepseek-chat"]["input_cost_per_token"]))
    assert failure.prompt_tokens > 0
    assert failure.cost_usd == failure.prompt_tokens * rate


def test_a_sync_stream_broken_off_under_message_redaction_is_billed_the_input_it_was_sent(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiteLLM replaces the failure event's messages in place with a placeholder when message logging
    # is off: counted from the event, a 500-word prompt was billed as 13 tokens.
    monkeypatch.setattr(litellm, "turn_off_message_logging", True)
    fake_provider.script("gpt-4o-mini", content="alpha beta gamma delta", break_after_chunks=2)
    messages = [{"role": "user", "content": "word " * 500}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(MidStreamFallbackError):
        read_sync_stream(messages, provider_kwargs)
    [failure] = turn.calls
    assert failure.prompt_tokens == prompt > 500
    assert failure.completion_tokens == litellm.token_counter(model="gpt-4o-mini", text="alpha beta")


def test_a_sync_call_that_timed_out_under_message_redaction_is_billed_the_input_it_was_sent(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The event's messages are LiteLLM's placeholder: the input is what the pre-call hook saw.
    monkeypatch.setattr(litellm, "turn_off_message_logging", True)
    fake_provider.script("gpt-4o-mini", content="alpha", delay_s=2)
    messages = [{"role": "user", "content": "word " * 500}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(Timeout):
        litellm.completion(
            model="openai/gpt-4o-mini",
            messages=messages,
            timeout=0.3,
            num_retries=0,
            max_retries=0,
            **provider_kwargs,
        )
    [failure] = turn.calls
    assert (failure.status, failure.prompt_tokens, failure.completion_tokens) == (CallStatus.FAILURE, prompt, 0)
    assert prompt > 500
    assert (failure.cost_usd, failure.cost_source) == (expected_gpt4o_mini(prompt, 0), CostSource.ESTIMATED)


def test_a_sync_stream_without_usage_under_message_redaction_counts_its_input_not_the_placeholders(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiteLLM redacted the assembled answer in place: it cannot be counted, and is not counted as the
    # placeholder's tokens either.
    monkeypatch.setattr(litellm, "turn_off_message_logging", True)
    fake_provider.script("gpt-4o-mini", content="alpha beta gamma delta", include_usage_chunk=False)
    messages = [{"role": "user", "content": "word " * 500}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    with turnledger.scoped_turn(settle_timeout=5) as turn:
        for _ in litellm.completion(
            model="openai/gpt-4o-mini", messages=messages, stream=True, num_retries=0, **provider_kwargs
        ):
            pass
    [success] = turn.calls
    assert (success.status, success.prompt_tokens, success.completion_tokens) == (CallStatus.SUCCESS, prompt, 0)
    assert prompt > 500
    assert (success.cost_usd, success.cost_source) == (expected_gpt4o_mini(prompt, 0), CostSource.ESTIMATED)
    assert success.usage_estimated
    assert RecordFlag.COMPLETION_NOT_SEEN in success.flags


def test_a_sync_stream_that_timed_out_after_some_chunks_is_billed_the_chunks_too(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", content="alpha beta gamma delta", chunk_delay_s=2)
    messages = [{"role": "user", "content": "hello there, how are you"}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(MidStreamFallbackError):
        read_sync_stream(messages, provider_kwargs, timeout=0.3)
    [failure] = turn.calls
    completion = litellm.token_counter(model="gpt-4o-mini", text="alpha", count_response_tokens=True)
    assert_billed_a_lower_bound(failure, prompt, completion)


@pytest.mark.parametrize("sync", [False, True])
def test_a_stream_that_timed_out_after_its_usage_chunk_is_billed_that_usage(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], sync: bool
) -> None:
    # The provider reported the whole call's usage, then the wait for the stream's end timed out. The
    # sync path, which reads the delivered chunks itself, estimated their text: 8 + 2 tokens, not 1200.
    fake_provider.script(
        "gpt-4o-mini",
        content="alpha beta",
        usage={"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
        include_usage_chunk=True,
        done_delay_s=2,
    )
    messages = [{"role": "user", "content": "hello there, how are you"}]
    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(MidStreamFallbackError):
        if sync:
            read_sync_stream(messages, provider_kwargs, timeout=0.3)
        else:
            asyncio.run(read_stream(messages, provider_kwargs, timeout=0.3))
    [failure] = turn.calls
    assert (failure.status, failure.prompt_tokens, failure.completion_tokens) == (CallStatus.FAILURE, 1000, 200)
    assert failure.cost_usd == expected_gpt4o_mini(1000, 200)


@pytest.mark.parametrize("sync", [False, True])
def test_an_anthropic_stream_broken_off_is_billed_the_input_its_provider_counted(
    fake_provider: FakeProvider, sync: bool
) -> None:
    # Anthropic counts the input as the answer starts (message_start, with 1 output token). The sync
    # path estimated it from the messages: 108 tokens where the provider counted 1000.
    fake_provider.script(
        "claude-haiku-4-5",
        content="alpha beta gamma delta epsilon",
        usage={"input_tokens": 1000, "output_tokens": 50},
        break_after_chunks=3,
    )
    options: dict[str, Any] = {
        "model": "anthropic/claude-haiku-4-5",
        "messages": [{"role": "user", "content": "hello there " * 50}],
        "stream": True,
        "num_retries": 0,
        "max_retries": 0,
        "api_base": fake_provider.anthropic_base_url,
        "api_key": "sk-fake-not-a-real-key",
    }

    async def read_async() -> None:
        async for _ in await litellm.acompletion(**options):
            pass

    with turnledger.scoped_turn(settle_timeout=5) as turn, pytest.raises(MidStreamFallbackError):
        if sync:
            for _ in litellm.completion(**options):
                pass
        else:
            asyncio.run(read_async())
    [failure] = turn.calls
    delivered = litellm.token_counter(model="claude-haiku-4-5", text="alpha beta gamma")
    assert (failure.status, failure.prompt_tokens, failure.completion_tokens) == (CallStatus.FAILURE, 1000, delivered)
    assert failure.cost_source is CostSource.ESTIMATED and failure.cost_usd is not None
    assert RecordFlag.COMPLETION_NOT_SEEN in failure.flags


def test_a_sync_stream_the_caller_stops_reading_becomes_abandoned(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM fires no event for it (DESIGN): the scope's exit is what records it, billed its input.
    fake_provider.script("slow-stream", content=" ".join(["word"] * 50), chunk_delay_s=0.02)
    with turnledger.scoped_turn(settle_timeout=0.3) as turn:
        stream = litellm.completion(
            model="openai/slow-stream",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **provider_kwargs,
        )
        for _chunk in stream:
            break
    [record] = turn.calls
    assert record.status is CallStatus.ABANDONED
    assert RecordFlag.NO_CALLBACK in record.flags
    assert record.model == "slow-stream" and record.stream is True
    assert turn.abandoned_calls == 1


async def test_a_call_that_never_reached_the_provider_is_not_billed(unused_tcp_port: int) -> None:
    async with turnledger.scoped_turn() as turn:
        with pytest.raises(InternalServerError):
            await litellm.acompletion(
                model="openai/gpt-4o-mini",
                messages=MESSAGES,
                api_base=f"http://127.0.0.1:{unused_tcp_port}/v1",
                api_key="sk-fake-not-a-real-key",
                timeout=0.3,
                num_retries=0,
                max_retries=0,
            )
    [failure] = turn.calls
    assert (failure.cost_usd, failure.cost_source, failure.prompt_tokens) == (Decimal(0), CostSource.NOT_BILLED, 0)


def test_sync_completion_embedding_and_sync_stream(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    with turnledger.scoped_turn(user_id="sync-user") as turn:
        litellm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        litellm.embedding(model="openai/text-embedding-3-small", input=["x y z"], **provider_kwargs)
        # LiteLLM logs a sync stream from a thread with no copy of the caller's context: the record must
        # still find this turn through the call id bound at pre-call time.
        stream = litellm.completion(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **provider_kwargs,
        )
        for _ in stream:
            pass
    kinds = sorted((r.call_kind.value, r.stream) for r in turn.calls)
    assert kinds == [("chat", False), ("chat", True), ("embedding", False)]
    assert all(r.status is CallStatus.SUCCESS for r in turn.calls)
    streamed = next(r for r in turn.calls if r.stream)
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (7, 3)


def test_sync_stream_event_has_no_caller_context_yet_finds_its_turn(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    """Pin the LiteLLM behaviour the bindings exist for: the sync stream's success event sees no turn."""
    seen: list[TurnTokenAccumulator | None] = []

    class Probe(turnledger.TokenTrackingCallback):
        def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            seen.append(turnledger.get_current_accumulator())

    probe = turnledger.install(Probe(name="probe"))
    with turnledger.scoped_turn() as turn:
        for _ in litellm.completion(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **provider_kwargs,
        ):
            pass
    turnledger.uninstall(probe)
    assert seen == [None]
    assert len(turn.calls) == 1


async def test_nested_scopes_are_isolated(fake_provider: FakeProvider, provider_kwargs: dict[str, Any]) -> None:
    async with turnledger.scoped_turn(user_id="outer") as outer:
        await litellm.acompletion(model="openai/outer-model", messages=MESSAGES, **provider_kwargs)
        async with turnledger.scoped_turn(user_id="inner") as inner:
            assert turnledger.get_current_accumulator() is inner
            await litellm.acompletion(model="openai/inner-model", messages=MESSAGES, **provider_kwargs)
            await litellm.acompletion(model="openai/inner-model", messages=MESSAGES, **provider_kwargs)
        assert turnledger.get_current_accumulator() is outer
        await litellm.acompletion(model="openai/outer-model", messages=MESSAGES, **provider_kwargs)
    assert turnledger.get_current_accumulator() is None
    assert [r.model for r in outer.calls] == ["outer-model", "outer-model"]
    assert [r.model for r in inner.calls] == ["inner-model", "inner-model"]
    assert not {r.call_id for r in outer.calls} & {r.call_id for r in inner.calls}


async def test_200_concurrent_turns_lose_and_misplace_nothing(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    """Each turn calls a model named after itself, so a record in the wrong turn cannot hide."""
    turns_n, calls_per_turn = 200, 3

    async def one_turn(i: int) -> TurnTokenAccumulator:
        async with turnledger.scoped_turn(user_id=f"user-{i}") as turn:
            for j in range(calls_per_turn):
                if j == 1:
                    await litellm.aembedding(model=f"openai/emb-{i}", input=["x"], **provider_kwargs)
                else:
                    await litellm.acompletion(model=f"openai/turn-{i}", messages=MESSAGES, **provider_kwargs)
        return turn

    turns = await asyncio.gather(*(one_turn(i) for i in range(turns_n)))
    lost = sum(calls_per_turn - len(t.calls) for t in turns)
    misplaced = sum(1 for i, t in enumerate(turns) for r in t.calls if r.model not in (f"turn-{i}", f"emb-{i}"))
    assert (lost, misplaced) == (0, 0)
    outcomes = Counter((r.status.value, r.flags, r.error_type) for t in turns for r in t.calls)
    assert outcomes == Counter({("success", (), None): turns_n * calls_per_turn})
    assert all(len({r.call_id for r in t.calls}) == calls_per_turn for t in turns)


async def test_broken_off_stream_becomes_abandoned(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("slow-stream", content=" ".join(["word"] * 50), chunk_delay_s=0.02)
    async with turnledger.scoped_turn(settle_timeout=0.3) as turn:
        stream = await litellm.acompletion(
            model="openai/slow-stream",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **provider_kwargs,
        )
        async for _chunk in stream:
            break  # the caller stops reading; LiteLLM will never log this call
    [record] = turn.calls
    assert record.status is CallStatus.ABANDONED
    assert RecordFlag.NO_CALLBACK in record.flags
    assert record.model == "slow-stream" and record.stream is True
    assert turn.abandoned_calls == 1


async def test_a_call_cut_short_waits_settle_timeout_even_when_a_finished_call_is_still_being_logged(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    """At exit the last call has its response and its event is on its way: the deadline is then
    logging_timeout. Once that event is in, the call cut short is left with settle_timeout."""
    fake_provider.script("slow", delay_s=5)
    fake_provider.script("gpt-4o-mini")
    # Warm: on a cold process the first request may not even start within the 0.2 s it is given.
    await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
    async with turnledger.scoped_turn(settle_timeout=0.3, logging_timeout=10.0) as turn:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(litellm.acompletion(model="openai/slow", messages=MESSAGES, **provider_kwargs), 0.2)
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        exit_started = time.monotonic()
    waited = time.monotonic() - exit_started
    assert sorted(r.status.value for r in turn.calls) == ["abandoned", "success"]
    # The bound is the 10 s logging_timeout it must not wait for; 0.3 s is what it should.
    assert waited < 5, waited


class _SlowLogger(CustomLogger):
    """A logger LiteLLM runs before turnledger's (an exporter, say) that takes its time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        await asyncio.sleep(self.seconds)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        time.sleep(self.seconds)


@pytest.fixture
def slow_logger_first(tracker: turnledger.TokenTrackingCallback) -> Iterator[_SlowLogger]:
    slow = _SlowLogger(0.8)
    turnledger.uninstall(tracker)
    litellm.callbacks.insert(0, slow)
    turnledger.install(tracker)
    yield slow
    for name in ("callbacks", "success_callback", "_async_success_callback", "input_callback", "failure_callback"):
        current = getattr(litellm, name, None)
        if isinstance(current, list):
            current[:] = [c for c in current if c is not slow]


@pytest.mark.usefixtures("slow_logger_first")
async def test_a_stream_read_to_its_end_is_waited_for_though_a_logger_ahead_is_slow(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    """Its event comes after the slow logger's 0.8 s, past settle_timeout: it is not abandoned, because
    LiteLLM has begun to log it (a stream broken off never gets that far, see above)."""
    stream_kwargs = {"stream": True, "stream_options": {"include_usage": True}, **provider_kwargs}
    async with turnledger.scoped_turn(settle_timeout=0.3) as turn:
        stream = await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **stream_kwargs)
        async for _chunk in stream:
            pass

    def sync_turn() -> TurnTokenAccumulator:
        with turnledger.scoped_turn(settle_timeout=0.3) as sync:
            for _chunk in litellm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, **stream_kwargs):
                pass
        return sync

    sync = await asyncio.to_thread(sync_turn)
    for t in (turn, sync):
        [record] = t.calls
        assert record.status is CallStatus.SUCCESS and record.cost_source is CostSource.RESPONSE_COST
        assert t.late_calls == [] and t.abandoned_calls == 0


@pytest.mark.usefixtures("slow_logger_first")
async def test_a_scope_cancelled_while_its_answered_call_is_being_logged_keeps_the_reported_usage(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    """A request cancelled just after its last call returned (its client gone, a timeout around the
    handler): the answer is in and LiteLLM is logging it, so the exit still waits for that event rather
    than estimating the call as abandoned and leaving the provider's figures to a late event that no
    table holds (found by /tmp/review-soak/soak.py, seed 2)."""
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150})
    answered = asyncio.Event()
    turns: list[TurnTokenAccumulator] = []

    async def request() -> None:
        # A cancelled exit waits for it at most settle_timeout more: longer than the slow logger here.
        async with turnledger.scoped_turn(settle_timeout=3) as turn:
            turns.append(turn)
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
            answered.set()

    task = asyncio.ensure_future(request())
    await answered.wait()
    await asyncio.sleep(0.05)  # the exit now waits for the event the slow logger holds up for 0.8 s
    [turn] = turns
    assert turn.pending_calls == 1 and not turn.closed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert turn.closed
    [record] = turn.calls
    assert record.status is CallStatus.SUCCESS
    assert (record.prompt_tokens, record.completion_tokens) == (120, 30)
    assert record.cost_usd == expected_gpt4o_mini(120, 30)
    assert turn.late_calls == []


async def test_a_stream_opened_outside_any_turn_stays_outside_though_read_inside_one(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], tracker: turnledger.TokenTrackingCallback
) -> None:
    stream = await litellm.acompletion(
        model="openai/gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        **provider_kwargs,
    )
    async with turnledger.scoped_turn() as turn:
        async for _chunk in stream:
            pass
        for _ in range(500):  # its event comes about 1 ms after the stream ends
            if tracker.stats["unscoped"] or tracker.stats["captured"]:
                break
            await asyncio.sleep(0.01)
    assert turn.calls == [] and turn.late_calls == []
    assert (tracker.stats["unscoped"], tracker.stats["captured"]) == (1, 0)


async def test_cancelled_call_becomes_abandoned(fake_provider: FakeProvider, provider_kwargs: dict[str, Any]) -> None:
    fake_provider.script("very-slow", delay_s=5)
    async with turnledger.scoped_turn(settle_timeout=0.2) as turn:
        task = asyncio.create_task(
            litellm.acompletion(model="openai/very-slow", messages=MESSAGES, num_retries=0, **provider_kwargs)
        )
        while turn.pending_calls == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # LiteLLM fires no event for a cancelled call (measured), yet the provider may have billed it.
    [record] = turn.calls
    assert record.status is CallStatus.ABANDONED
    assert RecordFlag.NO_CALLBACK in record.flags and record.model == "very-slow"


async def test_late_event_reaches_subscribers_flagged_and_leaves_totals_alone(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
    landed: list[TokenCallRecord] = []
    got_late = asyncio.Event()

    def follow(record: TokenCallRecord, turn: TurnTokenAccumulator | None) -> None:
        landed.append(record)
        if record.late:
            got_late.set()

    # No waiting at all: the scope closes at once, so LiteLLM's success event (logged ~1 ms after the
    # await returns) arrives after the turn closed.
    async with turnledger.scoped_turn(settle_timeout=0, logging_timeout=0) as turn:
        turn.on_call(follow)
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
    await asyncio.wait_for(got_late.wait(), 5)
    assert [r.status for r in turn.calls] == [CallStatus.ABANDONED]
    [late] = turn.late_calls
    assert late.status is CallStatus.SUCCESS and late.late
    assert late.call_id == turn.calls[0].call_id
    assert late.cost_usd == expected_gpt4o_mini(5, 5)
    assert [r.late for r in landed] == [False, True]
    # The closed turn's totals did not move: they hold only the abandoned call's estimated prompt.
    assert turn.total_prompt_tokens == turn.calls[0].prompt_tokens
    assert turn.calls[0].usage_estimated and turn.calls[0].completion_tokens == 0


async def test_waiting_at_exit_is_what_keeps_the_last_call(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    """Without the bounded wait the last call of a turn is logged after exit; with it, never."""
    async with turnledger.scoped_turn() as turn:
        for _ in range(3):
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        in_scope_before_exit = len(turn.calls)
    assert in_scope_before_exit < 3  # LiteLLM had not logged the last call when the await returned
    assert len(turn.calls) == 3 and not turn.late_calls


async def test_anthropic_wire_format(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        "claude-haiku-4-5",
        usage={
            "input_tokens": 100,
            "output_tokens": 20,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    )
    async with turnledger.scoped_turn() as turn:
        await litellm.acompletion(
            model="anthropic/claude-haiku-4-5",
            messages=MESSAGES,
            api_base=fake_provider.anthropic_base_url,
            api_key="sk-ant-fake",
        )
    [record] = turn.calls
    assert record.provider == "anthropic"
    assert (record.prompt_tokens, record.completion_tokens) == (100, 20)
    # claude-haiku-4-5: $1 / 1M input, $5 / 1M output.
    assert record.cost_usd == Decimal("0.0002")


async def test_install_is_idempotent_and_a_second_instance_is_not_deduplicated_away(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    assert turnledger.install() is turnledger.token_tracker
    assert turnledger.install() is turnledger.token_tracker
    sidecar: list[TokenCallRecord] = []
    second = turnledger.TokenTrackingCallback(name="billing-sidecar", on_record=lambda r, t: sidecar.append(r))
    turnledger.install(second)
    async with turnledger.scoped_turn() as turn:
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
    # Both instances saw the event (LiteLLM did not drop the second), the turn kept one record.
    assert len(turn.calls) == 1
    assert [r.call_id for r in sidecar] == [turn.calls[0].call_id]
    assert turnledger.token_tracker.stats["captured"] + second.stats["captured"] == 1
    assert turnledger.token_tracker.stats["duplicate"] + second.stats["duplicate"] == 1
    turnledger.uninstall(second)


async def test_uninstall_really_unregisters(fake_provider: FakeProvider, provider_kwargs: dict[str, Any]) -> None:
    await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
    # LiteLLM has now copied the tracker into its success/failure lists; removing it from
    # litellm.callbacks alone would leave it firing.
    assert turnledger.token_tracker in litellm._async_success_callback
    turnledger.uninstall()
    assert not turnledger.is_installed()
    async with turnledger.scoped_turn(settle_timeout=0.2) as turn:
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
    assert turn.calls == []
    turnledger.install()


async def test_malformed_usage_is_kept_flagged_and_the_call_succeeds(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 2})
    async with turnledger.scoped_turn() as turn:
        response = await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
    assert response.choices[0].message.content
    [record] = turn.calls
    assert RecordFlag.MALFORMED_USAGE in record.flags
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (12, 3, 15)


@pytest.mark.parametrize(
    ("absurd_count", "with_total"),
    [
        (2**64 - 1, False),  # an unsigned 64-bit -1: no database column can hold it
        (2**32 - 1, True),  # an unsigned 32-bit -1, its total made to agree: LiteLLM bills $2,577 for it
        (2**31 - 1, False),  # a signed 32-bit maximum
    ],
)
async def test_an_absurd_usage_count_is_read_as_zero_flagged_and_the_turn_still_stores(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], tmp_path: Any, absurd_count: int, with_total: bool
) -> None:
    """An integer wrap-around where a count belongs: LiteLLM bills it (thousands of dollars and more) and
    past 2**63 no database column can hold it, which would refuse the whole turn, its good calls with it."""
    usage = {"prompt_tokens": 12, "completion_tokens": absurd_count}
    if with_total:
        usage["total_tokens"] = 12 + absurd_count
    fake_provider.script("gpt-4o-mini", usage=usage)
    fake_provider.script("gpt-4o", usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})
    async with turnledger.scoped_turn(user_id="u-1") as turn:
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        await litellm.acompletion(model="openai/gpt-4o", messages=MESSAGES, **provider_kwargs)
    absurd, good = turn.calls
    assert RecordFlag.MALFORMED_USAGE in absurd.flags
    assert (absurd.prompt_tokens, absurd.completion_tokens) == (12, 0)
    # Priced as read: the cost of the tokens the record shows, not LiteLLM's bill for 2**64 - 1.
    assert (absurd.cost_usd, absurd.cost_source) == (expected_gpt4o_mini(12, 0), CostSource.COST_PER_TOKEN)
    engine = turnledger.make_engine(f"sqlite+aiosqlite:///{tmp_path}/absurd.db")
    try:
        from turnledger.store.migrate import upgrade_async

        await upgrade_async(str(engine.url))
        async with turnledger.session_factory(engine)() as session:
            assert await turnledger.record_turn(session, turn, usage_type="chat") is not None
            await session.commit()
    finally:
        await engine.dispose()
    assert good.status is CallStatus.SUCCESS


async def test_an_embedding_server_that_sends_no_usage_is_estimated_not_free(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM fills in a zero usage block and prices it at $0: that is a missing usage, not a free call.
    fake_provider.script("text-embedding-3-large", send_usage=False)
    texts = ["refund policy for damaged goods", "shipping times to Norway"]
    async with turnledger.scoped_turn() as turn:
        await litellm.aembedding(model="openai/text-embedding-3-large", input=texts, **provider_kwargs)
        await litellm.aembedding(model="openai/text-embedding-3-large", input=[[15339, 1917, 0]], **provider_kwargs)
    from_text, from_ids = turn.calls
    expected = sum(litellm.token_counter(model="text-embedding-3-large", text=t) for t in texts)
    assert (from_text.prompt_tokens, from_ids.prompt_tokens) == (expected, 3)
    for record in (from_text, from_ids):
        assert record.usage_estimated and RecordFlag.USAGE_ESTIMATED in record.flags
        # text-embedding-3-large: $0.13 / 1M tokens.
        assert (record.cost_usd, record.cost_source) == (
            record.prompt_tokens * Decimal("0.00000013"),
            CostSource.ESTIMATED,
        )
    assert turn.unpriced_calls == 0


async def test_an_embedding_without_usage_under_message_redaction_is_estimated_from_its_input(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiteLLM blanks the event's input as well as its messages: unpriced before, for want of an input.
    monkeypatch.setattr(litellm, "turn_off_message_logging", True)
    fake_provider.script("text-embedding-3-large", send_usage=False)
    texts = ["refund policy for damaged goods", "shipping times to Norway"]
    async with turnledger.scoped_turn() as turn:
        await litellm.aembedding(model="openai/text-embedding-3-large", input=texts, **provider_kwargs)
    [record] = turn.calls
    expected = sum(litellm.token_counter(model="text-embedding-3-large", text=t) for t in texts)
    assert record.prompt_tokens == expected > 0
    assert (record.cost_usd, record.cost_source) == (expected * Decimal("0.00000013"), CostSource.ESTIMATED)


async def test_a_transcription_litellm_could_not_measure_is_unpriced_not_free(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    """whisper-1 is billed per second. Without the audio's duration (no ``soundfile`` to measure it, and
    a plain json answer) LiteLLM prices it at 0 seconds, $0: turnledger must say unpriced."""
    audio = ("clip.mp3", b"\xff\xfb" + b"\x00" * 4000)
    async with turnledger.scoped_turn() as turn:
        await litellm.atranscription(model="openai/whisper-1", file=audio, **provider_kwargs)
    fake_provider.script("whisper-1", extra_response={"duration": 7.5, "language": "english"})
    async with turnledger.scoped_turn() as measured:
        await litellm.atranscription(
            model="openai/whisper-1", file=audio, response_format="verbose_json", **provider_kwargs
        )
    [record] = turn.calls
    assert record.call_kind is CallKind.TRANSCRIPTION and record.status is CallStatus.SUCCESS
    assert (record.cost_usd, record.cost_source) == (None, CostSource.NONE)
    assert (turn.total_cost_usd, turn.unpriced_calls) == (None, 1)
    # With the duration in the answer, LiteLLM prices it: 7.5 s at $0.0001 / s.
    [priced] = measured.calls
    assert (priced.cost_usd, priced.cost_source) == (Decimal("0.00075"), CostSource.RESPONSE_COST)


async def test_a_failing_capture_never_breaks_the_call_and_logs_once(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("usage parser bug")

    monkeypatch.setattr("turnledger.callback.usage_counts", explode)
    async with turnledger.scoped_turn() as turn:
        for _ in range(3):
            response = await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
            assert response.choices[0].message.content
    assert len(turn.calls) == 3
    assert all(RecordFlag.MALFORMED_EVENT in r.flags for r in turn.calls)
    assert all(r.cost_usd is None for r in turn.calls)  # nothing could be read: unpriced, not free
    logged = [rec for rec in caplog.records if rec.name == "turnledger" and "could not read" in rec.getMessage()]
    assert len(logged) == 1
    assert turnledger.token_tracker.stats["errors"] == 3


async def test_calls_outside_any_turn_go_to_global_subscribers(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    seen: list[tuple[TokenCallRecord, TurnTokenAccumulator | None]] = []
    done = threading.Event()

    def follow(record: TokenCallRecord, turn: TurnTokenAccumulator | None) -> None:
        seen.append((record, turn))
        done.set()

    unsubscribe = turnledger.subscribe(follow)
    try:
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        for _ in range(200):
            if done.is_set():
                break
            await asyncio.sleep(0.01)
    finally:
        unsubscribe()
    [(record, turn)] = seen
    assert turn is None and record.status is CallStatus.SUCCESS
    assert turnledger.token_tracker.stats["unscoped"] == 1


async def test_jsonl_ledger_follows_spend_and_stores_no_secret_or_text(
    fake_provider: FakeProvider, tmp_path: Any
) -> None:
    ledger = turnledger.JsonlLedger(tmp_path / "ledger.jsonl", fsync=True)
    unsubscribe = turnledger.subscribe(ledger)
    fake_provider.script(
        "gpt-4o-mini", content="COMPLETION-TEXT-7f3a", usage={"prompt_tokens": 9, "completion_tokens": 1}
    )
    try:
        async with turnledger.scoped_turn(user_id="u-ledger", tags=["beta"]) as turn:
            await litellm.acompletion(
                model="openai/gpt-4o-mini",
                messages=[{"role": "user", "content": "PROMPT-TEXT-91b2"}],
                api_base=fake_provider.base_url,
                api_key="sk-SECRET-KEY-5d6e",
            )
    finally:
        unsubscribe()
    raw = (tmp_path / "ledger.jsonl").read_text()
    for secret in ("PROMPT-TEXT-91b2", "COMPLETION-TEXT-7f3a", "sk-SECRET-KEY-5d6e"):
        assert secret not in raw
    [line] = ledger.read()
    assert line["turn"]["user_id"] == "u-ledger" and line["turn"]["tags"] == ["beta"]
    assert line["call"]["call_id"] == turn.calls[0].call_id
    assert line["call"]["cost_usd"] == str(expected_gpt4o_mini(9, 1))  # a decimal string, never a float


async def test_two_instances_tell_global_subscribers_of_an_unscoped_call_once(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    seen: list[str] = []
    unsubscribe = turnledger.subscribe(lambda record, turn: seen.append(record.call_id))
    second = turnledger.install(turnledger.TokenTrackingCallback(name="second"))
    try:
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        for _ in range(200):
            if turnledger.token_tracker.stats["unscoped"] and second.stats["unscoped"]:
                break
            await asyncio.sleep(0.01)
    finally:
        unsubscribe()
        turnledger.uninstall(second)
    assert turnledger.token_tracker.stats["unscoped"] == second.stats["unscoped"] == 1
    assert len(seen) == 1


def test_an_event_without_a_call_id_is_added_once_by_two_instances() -> None:
    first, second = turnledger.TokenTrackingCallback(name="a"), turnledger.TokenTrackingCallback(name="b")
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "custom_llm_provider": "openai", "call_type": "completion"}
    with turnledger.scoped_turn() as turn:
        for cb in (first, second):
            cb.log_success_event(kwargs, None, None, None)
    [record] = turn.calls
    assert RecordFlag.MALFORMED_EVENT in record.flags


async def test_two_calls_in_flight_under_one_call_id_the_caller_passed_are_both_in_the_turn(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # An app that passes its request id as litellm_call_id to every call of a turn. Before: the calls
    # were one pending call, the scope did not wait for the second to be logged, and it landed in
    # late_calls only: two answered, one stored.
    usage = {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}
    fake_provider.plan("same-id", [Script(usage=usage), Script(usage=usage, delay_s=0.3)])
    messages = [{"role": "user", "content": "say hello [[plan:same-id]]"}]

    async def call() -> Any:
        return await litellm.acompletion(
            model="openai/gpt-4o-mini", messages=messages, litellm_call_id="request-42", **provider_kwargs
        )

    async with turnledger.scoped_turn(settle_timeout=5, logging_timeout=5) as turn:
        await asyncio.gather(call(), call())
    assert [a.status for a in fake_provider.answers_for("same-id")] == [200, 200]
    assert [(r.call_id, r.status, r.prompt_tokens) for r in turn.calls] == [("request-42", CallStatus.SUCCESS, 40)] * 2
    assert turn.late_calls == []
    # gpt-4o-mini: 2 x (40 x $0.15/M in + 4 x $0.60/M out).
    assert turn.total_cost_usd == Decimal("0.0000168")


async def test_a_call_left_in_flight_under_a_passed_call_id_another_call_ended_is_estimated_from_its_own_input(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # Two calls under one litellm_call_id, the first still in flight when the second ends, then
    # cancelled. Before: the second's end event ended the first, so the second stayed pending; the
    # cancelled call was estimated from the second's input (9 prompt tokens, $0.00000135, instead of
    # 2,019, $0.00030285), and the scope waited logging_timeout for an answered call already logged.
    fake_provider.plan("long", [Script(delay_s=2)])
    long = [{"role": "user", "content": "word " * 2000 + "[[plan:long]]"}]
    short = [{"role": "user", "content": "say hello"}]

    async def cancelled_in_flight(another_call: bool) -> TurnTokenAccumulator:
        async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=5) as turn:
            sent = fake_provider.received("long")
            call = asyncio.create_task(
                litellm.acompletion(
                    model="openai/gpt-4o-mini", messages=long, litellm_call_id="request-42", **provider_kwargs
                )
            )
            while fake_provider.received("long") == sent:
                await asyncio.sleep(0.01)
            if another_call:
                await litellm.acompletion(
                    model="openai/gpt-4o-mini", messages=short, litellm_call_id="request-42", **provider_kwargs
                )
                while not turn.calls:  # its success event, logged in a task of its own
                    await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        return turn

    [alone] = (await cancelled_in_flight(False)).calls
    ended, in_flight = (await cancelled_in_flight(True)).calls
    assert (ended.status, ended.cost_source) == (CallStatus.SUCCESS, CostSource.RESPONSE_COST)
    assert (in_flight.status, in_flight.cost_source) == (CallStatus.ABANDONED, CostSource.ESTIMATED)
    assert (in_flight.prompt_tokens, in_flight.cost_usd) == (alone.prompt_tokens, alone.cost_usd)
    assert in_flight.prompt_tokens > 100 * ended.prompt_tokens
