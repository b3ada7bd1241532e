"""LiteLLM's Anthropic ``/v1/messages`` passthrough (``litellm.anthropic_messages``) through the fake provider.

It is a chat call, billed by tokens like ``acompletion`` to the same model: its cache reads and 5-minute
and 1-hour cache writes at their own rates, and, when it never reports usage though Anthropic had the
request (a read timeout, or LiteLLM failing after Anthropic answered), its input estimated, never $0.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

import litellm
import pytest
from litellm.exceptions import Timeout

import turnledger
from tests.integration.in_flight import cancel_once_received
from turnledger import CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord
from turnledger.fake_provider import FakeProvider

MODEL = "claude-sonnet-4-5-20250929"
MESSAGES: Any = [{"role": "user", "content": "summarise the text below in one line, please"}]
# claude-sonnet-4-5 in LiteLLM's bundled map (1.106), USD per token.
IN = Decimal("0.000003")
READ = Decimal("0.0000003")
WRITE_5M = Decimal("0.00000375")
WRITE_1H = Decimal("0.000006")
OUT = Decimal("0.000015")
USAGE = {
    "input_tokens": 100,
    "output_tokens": 50,
    "cache_read_input_tokens": 1000,
    "cache_creation_input_tokens": 300,
    "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
}
SYSTEM = "You are a meticulous assistant who answers in one short line. " * 20
STREAM_WRAPPER = "litellm.llms.anthropic.pass_through.messages.streaming_iterator"

pytestmark = pytest.mark.usefixtures("tracker")


def call_kwargs(fp: FakeProvider, **extra: Any) -> dict[str, Any]:
    return {
        "model": f"anthropic/{MODEL}",
        "messages": MESSAGES,
        "max_tokens": 100,
        "api_base": fp.anthropic_base_url,
        "api_key": "sk-ant-fake",
        **extra,
    }


def assert_billed_its_estimated_input(record: TokenCallRecord, system: str | None = None) -> None:
    sent = MESSAGES if system is None else [{"role": "system", "content": system}, *MESSAGES]
    prompt = litellm.token_counter(model=MODEL, messages=sent)
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, 0)
    assert (record.cost_usd, record.cost_source) == (prompt * IN, CostSource.ESTIMATED)
    assert {RecordFlag.USAGE_ESTIMATED, RecordFlag.COMPLETION_NOT_SEEN} <= set(record.flags)


async def test_a_messages_call_is_a_chat_call_billed_with_its_cache_reads_and_both_cache_writes(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(MODEL, usage=USAGE)
    async with turnledger.scoped_turn() as turn:
        await litellm.anthropic_messages(**call_kwargs(fake_provider))
    [record] = turn.calls
    assert (record.call_kind, record.status) == (CallKind.CHAT, CallStatus.SUCCESS)
    assert (record.prompt_tokens, record.cached_tokens, record.cache_creation_tokens) == (1400, 1000, 300)
    assert (record.cache_creation_1h_tokens, record.completion_tokens) == (100, 50)
    assert record.cost_usd == 100 * IN + 1000 * READ + 200 * WRITE_5M + 100 * WRITE_1H + 50 * OUT
    assert record.cost_source is CostSource.RESPONSE_COST


async def test_a_messages_call_that_timed_out_waiting_for_its_answer_is_billed_its_estimated_input(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(MODEL, delay_s=2)
    async with turnledger.scoped_turn(settle_timeout=0.5) as turn:
        with pytest.raises(Timeout):
            await litellm.anthropic_messages(**call_kwargs(fake_provider, timeout=0.3))
    [record] = turn.calls
    assert (record.call_kind, record.status, record.error_type) == (CallKind.CHAT, CallStatus.FAILURE, "Timeout")
    assert_billed_its_estimated_input(record)


async def test_a_messages_stream_anthropic_answered_but_litellm_could_not_wrap_is_billed_its_estimated_input(
    fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LiteLLM 1.106 wraps the stream with a module that imports its proxy's optional packages (fastapi...):
    # without them the call fails after Anthropic answered 200 and started generating. Made certain here.
    monkeypatch.setitem(sys.modules, STREAM_WRAPPER, None)
    fake_provider.script(MODEL, usage=USAGE)
    async with turnledger.scoped_turn() as turn:
        with pytest.raises(ImportError):
            await litellm.anthropic_messages(**call_kwargs(fake_provider, stream=True))
    assert [r.path for r in fake_provider.requests] == ["/v1/messages"]
    [record] = turn.calls
    assert (record.status, record.error_type) == (CallStatus.FAILURE, "ModuleNotFoundError")
    assert_billed_its_estimated_input(record)


async def test_a_messages_call_anthropic_refused_is_not_billed(fake_provider: FakeProvider) -> None:
    fake_provider.script(MODEL, status=529)
    async with turnledger.scoped_turn() as turn:
        with pytest.raises(Exception):  # noqa: B017, PT011 - LiteLLM's class for a 529 is not the point
            await litellm.anthropic_messages(**call_kwargs(fake_provider))
    [record] = turn.calls
    assert record.status is CallStatus.FAILURE
    assert (record.prompt_tokens, record.cost_usd, record.cost_source) == (0, Decimal(0), CostSource.NOT_BILLED)


@pytest.mark.parametrize("blocks", [False, True], ids=["text", "content-blocks"])
async def test_a_messages_call_that_timed_out_is_billed_its_system_prompt_too(
    fake_provider: FakeProvider, blocks: bool
) -> None:
    # /v1/messages takes the system prompt beside the messages, not among them.
    system: Any = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}] if blocks else SYSTEM
    fake_provider.script(MODEL, delay_s=2)
    async with turnledger.scoped_turn(settle_timeout=0.5) as turn:
        with pytest.raises(Timeout):
            await litellm.anthropic_messages(**call_kwargs(fake_provider, system=system, timeout=0.3))
    [record] = turn.calls
    assert_billed_its_estimated_input(record, SYSTEM)


async def test_a_messages_call_cancelled_in_flight_is_billed_its_system_prompt_too(fake_provider: FakeProvider) -> None:
    await litellm.anthropic_messages(**call_kwargs(fake_provider))  # warm: a cold first call starts late
    fake_provider.script(MODEL, delay_s=5)
    async with turnledger.scoped_turn(settle_timeout=0.2) as turn:
        call = litellm.anthropic_messages(**call_kwargs(fake_provider, system=SYSTEM))
        await cancel_once_received(fake_provider, call, received=2)
    [record] = turn.calls
    assert record.status is CallStatus.ABANDONED
    assert_billed_its_estimated_input(record, SYSTEM)
