"""LiteLLM's own retries (``num_retries`` on ``completion`` / ``acompletion``): real HTTP to the fake provider.

With ``tenacity`` installed LiteLLM retries a failed call itself, every attempt under the call's one
``litellm_call_id`` and logging object, and runs the pre-call hook for each. What it logs (measured on
1.106.12, ``num_retries=2``: three attempts, the first with the openai SDK's own ``max_retries=2``,
so five requests):

- sync ``completion``: the first attempt's failure is never logged (LiteLLM hands it to
  ``completion_with_retries`` instead), the second attempt's is, and a later one's is not (LiteLLM logs
  one failure per logging object); a success is logged whichever attempt it is.
- async ``acompletion``: the first attempt's failure is logged, and nothing of any later attempt.

Each attempt the provider had is one record: the ones LiteLLM logged as logged, the others flagged
``unlogged_retry_attempt``, priced as an abandoned call is, or, when LiteLLM's call details hold the
attempt's answer (an async retry that succeeded), priced from its usage. An async attempt leaves no
error in the call details, only how long its request took (``llm_api_duration_ms``): one that raised
sooner than its timeout did not time out, and is not billed. A Router's retries get a call id each.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm.exceptions import InternalServerError, Timeout
from sqlalchemy.ext.asyncio import AsyncEngine

import turnledger
from tests.integration.writer_support import stored_call_count, stored_cost, stored_turn
from turnledger import CallStatus, CostSource, RecordFlag, TurnTokenAccumulator, record_turn, session_factory
from turnledger.fake_provider import FakeProvider, Script
from turnledger.store.writer import BatchWriter

from .test_call_kinds import responses_without_mcp  # noqa: F401 (a fixture)

pytest.importorskip("tenacity", reason="LiteLLM retries a call itself only with tenacity (in the dev extra)")

MESSAGES: Any = [{"role": "user", "content": "say hello to the whole wide world [[plan:retried]]"}]
UNLOGGED = (RecordFlag.NO_CALLBACK, RecordFlag.PROVIDER_ERROR, RecordFlag.UNLOGGED_RETRY_ATTEMPT)

CONTEXT_WINDOW_EXCEEDED = (
    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. "
    "Please reduce the length of the messages."
)

pytestmark = pytest.mark.usefixtures("tracker")


def _sync_turn(
    provider_kwargs: dict[str, Any], turn_id: str = "retried", **call: Any
) -> tuple[TurnTokenAccumulator, str | None]:
    error = None
    with turnledger.scoped_turn(turn_id=turn_id, settle_timeout=0.2, logging_timeout=1) as turn:
        try:
            litellm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, **call, **provider_kwargs)
        except Exception as exc:
            error = type(exc).__name__
    return turn, error


def test_every_attempt_of_a_sync_call_retried_by_litellm_is_one_record(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # Before: [failure, abandoned]: the first attempt (3 requests) was lost, and the third attempt
    # was recorded as if its turn had abandoned it.
    fake_provider.plan("retried", [Script(status=500)])
    turn, error = _sync_turn(provider_kwargs, num_retries=2)
    assert error == "InternalServerError"
    assert fake_provider.received("retried") == 5
    first, second, third = turn.calls
    assert len({r.call_id for r in turn.calls}) == 1
    assert (first.status, first.flags) == (CallStatus.ABANDONED, UNLOGGED)
    assert (second.status, second.error_type, second.flags) == (CallStatus.FAILURE, "InternalServerError", ())
    assert (third.status, third.flags) == (CallStatus.ABANDONED, UNLOGGED)
    # Providers bill no error answer.
    assert [(r.cost_usd, r.cost_source) for r in turn.calls] == [(Decimal(0), CostSource.NOT_BILLED)] * 3


def test_a_sync_retry_that_succeeds_keeps_the_attempts_before_it(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # The first attempt's three requests time out (the provider had them, and may bill them), the
    # second attempt answers. Before: only the success was recorded.
    usage = {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}
    fake_provider.plan("retried", [Script(delay_s=0.6)] * 3 + [Script(usage=usage)])
    turn, error = _sync_turn(provider_kwargs, num_retries=2, timeout=0.2)
    assert error is None
    assert fake_provider.received("retried") == 4
    timed_out, answered = turn.calls
    assert timed_out.call_id == answered.call_id
    assert timed_out.status is CallStatus.ABANDONED
    assert RecordFlag.UNLOGGED_RETRY_ATTEMPT in timed_out.flags
    assert timed_out.cost_source is CostSource.ESTIMATED
    assert timed_out.prompt_tokens > 0
    assert (answered.status, answered.prompt_tokens, answered.flags) == (CallStatus.SUCCESS, 40, ())
    assert turn.total_cost_usd == timed_out.cost_usd + answered.cost_usd  # type: ignore[operator]


def test_a_sync_call_retried_by_litellm_is_counted_once_with_two_instances_installed(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    turnledger.install(turnledger.TokenTrackingCallback(name="second"))
    fake_provider.plan("retried", [Script(status=500)])
    turn, _error = _sync_turn(provider_kwargs, num_retries=2)
    assert [r.status for r in turn.calls] == [CallStatus.ABANDONED, CallStatus.FAILURE, CallStatus.ABANDONED]


# Through the openai SDK, and through LiteLLM's own HTTP handler (no SDK retries: one request an attempt).
@pytest.mark.parametrize(("model", "requests"), [("openai/gpt-4o-mini", 5), ("deepseek/deepseek-chat", 3)])
async def test_every_attempt_of_an_async_call_retried_by_litellm_is_one_record(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], model: str, requests: int
) -> None:
    # LiteLLM logs the first attempt's failure and nothing after it, and leaves no error answer of the
    # later ones in the call details: only how long each request took, far below its timeout (600 s by
    # default) for an answer refused at once. Before: each estimated, 12 tokens $0.0000018 (gpt-4o-mini).
    fake_provider.plan("retried", [Script(status=500)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        with pytest.raises(InternalServerError):
            await litellm.acompletion(model=model, messages=MESSAGES, num_retries=2, **provider_kwargs)
    assert fake_provider.received("retried") == requests
    logged, *unlogged = turn.calls
    assert len({r.call_id for r in turn.calls}) == 1
    assert (logged.status, logged.cost_source) == (CallStatus.FAILURE, CostSource.NOT_BILLED)
    assert [(r.status, r.flags) for r in unlogged] == [(CallStatus.ABANDONED, UNLOGGED)] * 2
    not_billed = (0, Decimal(0), CostSource.NOT_BILLED)
    assert [(r.prompt_tokens, r.cost_usd, r.cost_source) for r in unlogged] == [not_billed] * 2
    assert turn.total_cost_usd == Decimal(0)


async def test_the_async_attempts_retried_by_litellm_that_timed_out_keep_their_estimate(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # Each request waited its whole timeout: the provider had it, and may have billed its answer.
    fake_provider.plan("retried", [Script(delay_s=0.6)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        with pytest.raises(Timeout):
            await litellm.acompletion(
                model="openai/gpt-4o-mini", messages=MESSAGES, num_retries=2, timeout=0.2, **provider_kwargs
            )
    assert fake_provider.received("retried") == 5
    logged, *unlogged = turn.calls
    assert (logged.status, logged.cost_source) == (CallStatus.FAILURE, CostSource.ESTIMATED)
    assert len(unlogged) == 2
    for attempt in unlogged:
        assert attempt.status is CallStatus.ABANDONED
        assert RecordFlag.UNLOGGED_RETRY_ATTEMPT in attempt.flags
        assert RecordFlag.PROVIDER_ERROR not in attempt.flags
        assert (attempt.prompt_tokens, attempt.cost_source) == (logged.prompt_tokens, CostSource.ESTIMATED)
    assert turn.total_cost_usd == 3 * logged.cost_usd  # type: ignore[operator]


async def test_an_async_retry_cancelled_in_flight_keeps_its_estimate(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM writes how long the request took when it is cancelled too, shorter than its timeout:
    # only an attempt known to have raised is read as refused, and a cancelled one did not.
    fake_provider.plan("retried", [Script(status=500)] * 3 + [Script(delay_s=5)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        call = asyncio.create_task(
            litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, num_retries=2, **provider_kwargs)
        )
        while fake_provider.received("retried") < 4:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    logged, in_flight = turn.calls
    assert (logged.status, logged.cost_source) == (CallStatus.FAILURE, CostSource.NOT_BILLED)
    assert in_flight.status is CallStatus.ABANDONED
    assert RecordFlag.PROVIDER_ERROR not in in_flight.flags
    assert in_flight.cost_source is CostSource.ESTIMATED
    assert in_flight.prompt_tokens > 0


async def test_an_async_call_retried_by_litellm_that_failed_is_not_waited_for_as_answered(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # Its last attempt stays pending with ``original_response`` None (the first attempt's logged
    # failure wrote it). Before, that read as an answer on its way, and the scope waited out
    # ``logging_timeout`` (30 s by default) for an event LiteLLM never sends.
    fake_provider.plan("retried", [Script(status=500)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        with pytest.raises(InternalServerError):
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, num_retries=2, **provider_kwargs)
        last_attempt = turn.started_call(turn.calls[0].call_id)
        assert last_attempt is not None
        assert not last_attempt.responded


async def test_an_async_retry_that_succeeds_is_priced_from_the_usage_it_returned(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # The first attempt's three requests are refused, the second attempt answers. LiteLLM logs no
    # success for it (its retries run outside the logging wrapper), but the call details hold the
    # answer. Before: [failure $0, abandoned 12 estimated tokens $0.0000018], not the usage returned.
    usage = {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}
    fake_provider.plan("retried", [Script(status=500)] * 3 + [Script(usage=usage)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        response = await litellm.acompletion(
            model="openai/gpt-4o-mini", messages=MESSAGES, num_retries=2, **provider_kwargs
        )
        # Its answer is no sign of an end event: the scope does not wait out ``logging_timeout`` (30 s
        # by default) for one (before, it did).
        last_attempt = turn.started_call(turn.calls[0].call_id)
        assert last_attempt is not None
        assert not last_attempt.responded
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (40, 4)
    assert fake_provider.received("retried") == 4
    refused, answered = turn.calls
    assert refused.call_id == answered.call_id
    assert (refused.status, refused.cost_source) == (CallStatus.FAILURE, CostSource.NOT_BILLED)
    assert (answered.status, answered.prompt_tokens, answered.completion_tokens) == (CallStatus.SUCCESS, 40, 4)
    assert answered.flags == (RecordFlag.NO_CALLBACK, RecordFlag.UNLOGGED_RETRY_ATTEMPT)
    assert answered.cost_source is CostSource.COST_PER_TOKEN
    assert not answered.usage_estimated
    # gpt-4o-mini: 40 x $0.15/M in, 4 x $0.60/M out.
    assert turn.total_cost_usd == Decimal("0.0000084")


async def test_an_async_retry_that_succeeds_stores_the_request_id_the_provider_sent_it(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], engine: AsyncEngine
) -> None:
    # Every other record carries the provider's request-id header (what its request logs and its
    # support know the request by). Before: this attempt's answer body id ("chatcmpl-req_fake_..."),
    # which the provider's logs do not have.
    fake_provider.plan("retried", [Script(status=500)] * 3 + [Script()])
    async with turnledger.scoped_turn(turn_id="retried-id", settle_timeout=0.2, logging_timeout=1) as turn:
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, num_retries=2, **provider_kwargs)
    *_refused, answer = fake_provider.answers_for("retried")
    assert (answer.attempt, answer.status) == (3, 200)
    async with session_factory(engine)() as session:
        assert await record_turn(session, turn, usage_type="chat") is not None
        await session.commit()
    _usage, (_logged, answered) = await stored_turn(engine, "retried-id")
    assert (answered["status"], answered["flags"]) == ("success", ["no_callback", "unlogged_retry_attempt"])
    assert answered["provider_request_id"] == answer.request_id


async def test_an_async_retry_whose_headers_litellm_did_not_keep_has_no_request_id(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM's own HTTP handler (DeepSeek here) keeps the answer in the call details but not its
    # headers, and the only request id there is the refused first attempt's: unknown, never another
    # attempt's id or the answer body's id.
    fake_provider.plan("retried", [Script(status=500), Script()])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        await litellm.acompletion(model="deepseek/deepseek-chat", messages=MESSAGES, num_retries=2, **provider_kwargs)
    assert [(a.attempt, a.status) for a in fake_provider.answers_for("retried")] == [(0, 500), (1, 200)]
    _refused, answered = turn.calls
    assert (answered.status, answered.prompt_tokens > 0) == (CallStatus.SUCCESS, True)
    assert RecordFlag.UNLOGGED_RETRY_ATTEMPT in answered.flags
    assert answered.provider_request_id is None


async def test_a_turn_with_a_retried_call_stores_every_attempt(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], engine: AsyncEngine, tmp_path: Path
) -> None:
    # The attempts share a call id: the call rows are keyed by (usage_id, seq), on both backends.
    fake_provider.plan("retried", [Script(status=500)])
    turn, _error = await asyncio.to_thread(_sync_turn, provider_kwargs, num_retries=2)
    assert len(turn.calls) == 3
    async with session_factory(engine)() as session:
        assert await record_turn(session, turn, usage_type="chat") is not None
        await session.commit()
    assert await stored_call_count(engine) == 3

    fake_provider.plan("retried", [Script(status=500)])
    async with BatchWriter(engine, outbox_dir=tmp_path, flush_interval=0.01) as writer:
        turn, _error = await asyncio.to_thread(_sync_turn, provider_kwargs, "retried-again", num_retries=2)
        await writer.persist(turn)
    assert await stored_call_count(engine) == 6
    assert await stored_cost(engine) == Decimal(0)


async def test_an_async_retry_that_succeeded_leaves_nothing_for_its_scope_to_wait_for(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # The attempt that answered is over: LiteLLM logs no end of it, and its record is read from its
    # answer when the turn closes. Before: still pending, so every such scope waited out
    # ``settle_timeout`` (2 s by default) for an event that never comes.
    usage = {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}
    fake_provider.plan("retried", [Script(status=500)] * 3 + [Script(usage=usage)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, num_retries=2, **provider_kwargs)
        assert turn.pending_calls == 0
    refused, answered = turn.calls
    assert (refused.status, answered.status, answered.prompt_tokens) == (CallStatus.FAILURE, CallStatus.SUCCESS, 40)


async def test_an_async_call_that_failed_on_every_retry_stays_pending_until_its_scope_closes(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # Its last attempt got no answer LiteLLM's details show: it is recorded as abandoned at close.
    fake_provider.plan("retried", [Script(status=500)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        with pytest.raises(InternalServerError):
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, num_retries=2, **provider_kwargs)
        assert turn.pending_calls == 1
    assert [r.status for r in turn.calls] == [CallStatus.FAILURE, CallStatus.ABANDONED, CallStatus.ABANDONED]


@pytest.mark.usefixtures("responses_without_mcp")
async def test_an_async_responses_call_that_succeeded_on_a_retry_is_priced_from_its_answer_without_a_wait(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM retries ``aresponses`` as it does ``acompletion`` (aresponses_with_retries, outside its
    # logging wrapper): the attempt that answered is never logged. Before: its answer read as an end
    # event on its way, and the scope waited out ``logging_timeout`` (30 s by default) for it.
    usage = {"input_tokens": 40, "output_tokens": 4, "total_tokens": 44}
    fake_provider.plan("retried", [Script(status=500), Script(usage=usage)])
    async with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        response: Any = await litellm.aresponses(
            model="openai/gpt-4o-mini", input="say hello [[plan:retried]]", num_retries=2, **provider_kwargs
        )
        last_attempt = turn.started_call(turn.calls[0].call_id)
        assert last_attempt is not None
        assert not last_attempt.responded
        assert turn.pending_calls == 0
    assert (response.usage.input_tokens, response.usage.output_tokens) == (40, 4)
    assert fake_provider.received("retried") == 2
    refused, answered = turn.calls
    assert (refused.status, refused.cost_source) == (CallStatus.FAILURE, CostSource.NOT_BILLED)
    assert (answered.status, answered.prompt_tokens, answered.completion_tokens) == (CallStatus.SUCCESS, 40, 4)
    assert RecordFlag.UNLOGGED_RETRY_ATTEMPT in answered.flags
    # gpt-4o-mini: 40 x $0.15/M in, 4 x $0.60/M out.
    assert turn.total_cost_usd == Decimal("0.0000084")


def test_a_sync_context_window_fallback_is_priced_from_its_answer_without_a_wait(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # completion(context_window_fallback_dict=...) calls the fallback model with the same call details,
    # outside LiteLLM's logging wrapper: neither the refused attempt nor the answered one is logged.
    # Before: the answer read as an end event on its way, and the scope waited out ``logging_timeout``
    # (30 s by default) for it.
    usage = {"prompt_tokens": 130_000, "completion_tokens": 100, "total_tokens": 130_100}
    fake_provider.plan("retried", [Script(status=400, error_message=CONTEXT_WINDOW_EXCEEDED), Script(usage=usage)])
    with turnledger.scoped_turn(settle_timeout=0.2, logging_timeout=1) as turn:
        response: Any = litellm.completion(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            context_window_fallback_dict={"openai/gpt-4o-mini": "openai/gpt-4.1-mini"},
            **provider_kwargs,
        )
        assert turn.pending_calls == 0
    assert response.model == "gpt-4.1-mini"
    refused, answered = turn.calls
    assert (refused.model, refused.cost_usd, refused.cost_source) == ("gpt-4o-mini", Decimal(0), CostSource.NOT_BILLED)
    assert (answered.model, answered.status, answered.prompt_tokens) == ("gpt-4.1-mini", CallStatus.SUCCESS, 130_000)
    # gpt-4.1-mini: $0.40 / 1M input, $1.60 / 1M output.
    assert answered.cost_usd == 130_000 * Decimal("0.0000004") + 100 * Decimal("0.0000016") == turn.total_cost_usd


async def test_a_retried_call_does_not_supersede_another_call_in_flight_under_the_same_passed_call_id(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # Two calls under one litellm_call_id the caller passed, each with num_retries: the second's first
    # attempt refused, its retry answered, while the first is still in flight. Before: the retry took
    # the first call for the attempt before it, recorded it abandoned, its input estimated (13 tokens,
    # $0.00000364), and the first call's own success (7 + 3 tokens, $0.00000322), waited for by nobody,
    # came late, out of the turn's totals.
    fake_provider.plan(
        "first", [Script(delay_s=1, usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})]
    )
    retried_usage = {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}
    fake_provider.plan("second", [Script(status=500), Script(usage=retried_usage)])
    call: dict[str, Any] = {
        "model": "deepseek/deepseek-chat",
        "litellm_call_id": "request-42",
        "num_retries": 2,
        **provider_kwargs,
    }
    first = [{"role": "user", "content": "question one [[plan:first]]"}]
    second = [{"role": "user", "content": "question two [[plan:second]]"}]
    async with turnledger.scoped_turn(settle_timeout=0.5, logging_timeout=5) as turn:
        in_flight = asyncio.create_task(litellm.acompletion(messages=first, **call))
        while fake_provider.received("first") == 0:
            await asyncio.sleep(0.01)
        await litellm.acompletion(messages=second, **call)
        await in_flight
    assert (fake_provider.received("first"), fake_provider.received("second")) == (1, 2)
    assert sorted((r.status, r.prompt_tokens, r.completion_tokens) for r in turn.calls) == [
        (CallStatus.FAILURE, 0, 0),
        (CallStatus.SUCCESS, 7, 3),
        (CallStatus.SUCCESS, 40, 4),
    ]
    assert turn.late_calls == []
    assert not any(r.status is CallStatus.ABANDONED for r in turn.calls)
