"""Calls that never reported an end before their turn closed: how they are counted and recorded."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import litellm
import pytest
from litellm.exceptions import InternalServerError
from litellm.litellm_core_utils.llm_response_utils.convert_dict_to_response import convert_to_model_response_object

import turnledger
from turnledger import CallKind, CallStatus, CostSource, ModelMetadata, PendingCall, RecordFlag, TokenCallRecord
from turnledger.call_details import failed_before_timeout, provider_refused
from turnledger.pricing import price_abandoned_call


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


_ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "error"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
)


@pytest.mark.parametrize(
    "original_response",
    [
        # What LiteLLM writes for an error answer through the openai SDK (measured against the fake provider).
        "Error code: 500 - {'error': {'message': 'fake provider failure', 'type': 'server_error', 'code': 500}}",
        "Error code: 429 - {'error': {'message': 'Rate limit reached', 'type': 'requests'}}",
        "Error code: 503",  # the SDK's message when the body could not be read
        # The provider's error body as LiteLLM's own HTTP handler keeps it: OpenAI's shape, Anthropic's.
        '{"error": {"message": "fake provider failure", "type": "server_error", "code": 500}}',
        '  {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
        '{"error": "upstream unavailable"}',
    ],
)
def test_an_http_error_answer_is_recognised(original_response: str) -> None:
    assert provider_refused({"original_response": original_response})


@pytest.mark.parametrize(
    "original_response",
    [
        _ANSWER,
        json.dumps({**json.loads(_ANSWER), "error": None}),
        # Whatever else it says, a body with an answer's fields (usage, say) may have been billed.
        json.dumps({"error": {"message": "cut short"}, "choices": []}),
        json.dumps({"error": "partial", "usage": {"prompt_tokens": 12}}),
        json.dumps({"error": {}}),
        # No HTTP answer: a provider may have billed work it finished before the connection broke.
        "Connection error.",
        "Request timed out.",
        # An error in a shape not known to be one is not guessed at.
        "Internal Server Error",
        '{"object": "error", "message": "bad request", "code": 400}',
        "first stream response received",
        # An answer whose text mentions an error further in is never parsed, let alone read as one.
        '{"id": "x", ' + " " * 300 + '"error": {"message": "no"}}',
        "{not json",
        "",
    ],
)
def test_anything_else_is_not_read_as_an_error_answer(original_response: str) -> None:
    assert not provider_refused({"original_response": original_response})


def test_an_answer_that_is_not_text_or_no_answer_at_all_is_not_an_error_answer() -> None:
    assert not provider_refused({"original_response": litellm.ModelResponse()})
    assert not provider_refused({"original_response": None})
    assert not provider_refused({})
    assert not provider_refused(None)


def abandoned_after(original_response: str, *, stream: bool = False) -> PendingCall:
    return PendingCall(
        call_id="c1",
        model="gpt-4o-mini",
        provider="openai",
        call_kind=CallKind.CHAT,
        stream=stream,
        started_at=datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC),
        started_monotonic=0.0,
        request={"messages": [{"role": "user", "content": "say hello to the whole wide world"}]},
        call_details={"original_response": original_response},
    )


def test_an_error_answer_is_no_sign_that_an_end_event_is_coming() -> None:
    """The exit then waits settle_timeout, not logging_timeout: LiteLLM logs a failure before it raises, or never."""
    assert abandoned_after(_ANSWER).responded
    assert not abandoned_after("Error code: 500 - {'error': {}}").responded


def test_an_abandoned_call_the_provider_answered_is_still_estimated_and_billed() -> None:
    record = price_abandoned_call(abandoned_after(_ANSWER), None)
    assert record.prompt_tokens > 0 and record.cost_usd is not None and record.cost_usd > 0
    assert (record.cost_source, record.flags[0]) == (CostSource.ESTIMATED, RecordFlag.NO_CALLBACK)
    assert RecordFlag.PROVIDER_ERROR not in record.flags


@pytest.mark.parametrize("stream", [False, True])
def test_an_abandoned_call_the_provider_refused_is_not_billed(stream: bool) -> None:
    meta = ModelMetadata(model_ref="openai/gpt-4o-mini", model_id="m-1", display_name="Mini")
    record = price_abandoned_call(abandoned_after('{"error": {"message": "overloaded"}}', stream=stream), meta)
    assert (record.status, record.flags) == (CallStatus.ABANDONED, (RecordFlag.NO_CALLBACK, RecordFlag.PROVIDER_ERROR))
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (0, 0, 0)
    assert (record.cost_usd, record.cost_source, record.usage_estimated) == (Decimal(0), CostSource.NOT_BILLED, False)
    assert (record.call_id, record.model, record.provider, record.stream) == ("c1", "gpt-4o-mini", "openai", stream)
    assert (record.model_ref, record.model_id, record.display_name) == ("openai/gpt-4o-mini", "m-1", "Mini")


def _answer(answer_id: str) -> str:
    return json.dumps(
        {
            "id": answer_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44},
        }
    )


def test_an_unlogged_retry_attempt_never_takes_the_request_id_an_earlier_attempt_left() -> None:
    # The first attempt got an answer, kept with its headers, and was retried unlogged; the second
    # got one too, and the details kept no headers of its own (as LiteLLM's own HTTP handler keeps
    # none): its request id is unknown, not the first attempt's.
    cb = turnledger.TokenTrackingCallback(name="retried-request-id")
    details = started("retried-request-id")
    with turnledger.scoped_turn(settle_timeout=0, logging_timeout=0) as turn:
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hello"}], details)
        details["original_response"] = _answer("chatcmpl-1")
        details["response_headers"] = {"x-request-id": "req-1"}
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hello"}], details)
        details["original_response"] = _answer("chatcmpl-2")
    first, second = turn.calls
    assert [r.status for r in turn.calls] == [CallStatus.SUCCESS, CallStatus.SUCCESS]
    assert (first.provider_request_id, second.provider_request_id) == ("req-1", None)


@pytest.mark.parametrize(
    ("headers", "request_id"),
    [
        ({"request-id": "req-a"}, "req-a"),
        # Known by "x-request-id", as a logged success is (its hidden params list llm_provider-x-request-id first).
        ({"request-id": "req-b", "x-request-id": "req-x"}, "req-x"),
        ({"content-type": "application/json"}, None),
    ],
)
def test_an_unlogged_retry_attempt_reads_a_request_id_header_in_either_spelling(
    headers: dict[str, str], request_id: str | None
) -> None:
    cb = turnledger.TokenTrackingCallback(name="retried-spelling")
    details = started("retried-spelling")
    with turnledger.scoped_turn(settle_timeout=0, logging_timeout=0) as turn:
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hello"}], details)
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hello"}], details)
        details["original_response"] = _answer("chatcmpl-1")
        details["response_headers"] = headers
    unanswered, answered = turn.calls
    assert (unanswered.status, answered.status) == (CallStatus.ABANDONED, CallStatus.SUCCESS)
    assert answered.provider_request_id == request_id


def test_an_unlogged_answer_is_recorded_as_a_logged_success_of_that_answer_is() -> None:
    # The success record is spelled out field by field twice: callback.build_record (the hot path)
    # and pricing.price_unlogged_answer. A field one fills and the other forgets fails here: every
    # count below is set, and the records may differ only where an unlogged attempt must.
    usage = {
        "prompt_tokens": 400,
        "completion_tokens": 40,
        "total_tokens": 440,
        "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 20, "image_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 10, "audio_tokens": 5, "image_tokens": 3},
        "cache_creation_input_tokens": 50,
        "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 20},
    }
    answer = {**json.loads(_answer("chatcmpl-1")), "object": "chat.completion", "model": "gpt-4o-mini", "usage": usage}
    headers = {"x-request-id": "req-1", "content-type": "application/json"}
    cb = turnledger.TokenTrackingCallback(name="same-answer")
    details = {**started("same-answer"), "call_type": "acompletion"}
    with turnledger.scoped_turn(settle_timeout=0, logging_timeout=0) as turn:
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hello"}], details)
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hello"}], details)
        details["original_response"] = json.dumps(answer)
        details["response_headers"] = headers
    unlogged = turn.calls[-1]
    # The response LiteLLM returns for that answer, as its openai handler builds it.
    response = convert_to_model_response_object(
        response_object=answer, model_response_object=litellm.ModelResponse(), _response_headers=headers
    )
    start = details["start_time"]
    logged = cb.build_record(details, response, start, start + timedelta(seconds=1), CallStatus.SUCCESS, None)

    counts = [f.name for f in dataclasses.fields(TokenCallRecord) if f.name.endswith("_tokens")]
    assert all(getattr(logged, name) > 0 for name in counts)
    # Unlogged, the attempt has no end time, and is flagged so; it is priced by the same rates from the
    # answer's usage, where LiteLLM's cost function prices the response object.
    assert (logged.latency_ms, unlogged.latency_ms) == (1000.0, None)
    assert unlogged.flags == (RecordFlag.NO_CALLBACK, *logged.flags, RecordFlag.UNLOGGED_RETRY_ATTEMPT)
    assert (logged.cost_source, unlogged.cost_source) == (CostSource.COMPLETION_COST, CostSource.COST_PER_TOKEN)
    assert (logged.provider_request_id, logged.cost_usd is not None) == ("req-1", True)
    differ = {"latency_ms", "flags", "cost_source"}
    same = [f.name for f in dataclasses.fields(TokenCallRecord) if f.name not in differ]
    assert {name: getattr(unlogged, name) for name in same} == {name: getattr(logged, name) for name in same}


def test_an_unlogged_retry_attempt_is_priced_from_its_own_answer_never_from_an_earlier_one() -> None:
    # LiteLLM's own retries share one call's details. The first attempt got an answer (written into
    # the details) yet raised and was retried unlogged; the second left nothing. Only the first is
    # priced from that answer: before the check, the second was priced from it too (billed twice).
    cb = turnledger.TokenTrackingCallback(name="retried-answer")
    details = started("retried-answer")
    answer = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44},
    }
    with turnledger.scoped_turn(settle_timeout=0, logging_timeout=0) as turn:
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hello"}], details)
        details["original_response"] = json.dumps(answer)
        # As LiteLLM's openai SDK handler keeps them, beside the answer.
        details["response_headers"] = {"x-request-id": "req-1", "content-type": "application/json"}
        cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hello"}], details)
    answered, unanswered = turn.calls
    assert (answered.status, answered.prompt_tokens, answered.completion_tokens) == (CallStatus.SUCCESS, 40, 4)
    # The provider's request-id header, as every record's; not the answer body's id ("chatcmpl-1").
    assert answered.provider_request_id == "req-1"
    assert RecordFlag.UNLOGGED_RETRY_ATTEMPT in answered.flags
    assert answered.cost_usd == Decimal("0.0000084")
    assert unanswered.status is CallStatus.ABANDONED
    assert RecordFlag.COMPLETION_NOT_SEEN in unanswered.flags


def _attempt_details(timeout: object, exception: object = None) -> dict[str, Any]:
    return {**started("retried"), "litellm_params": {"timeout": timeout}, "exception": exception}


@pytest.mark.parametrize(
    ("timeout", "duration_ms", "failed_first"),
    [
        (600.0, 12.5, True),
        (600, 12, True),
        (0.2, 199.0, True),
        (0.2, 200.0, False),  # a read timeout fires once the request has waited it out
        (httpx.Timeout(5.0, connect=1.0), 900.0, True),
        (httpx.Timeout(5.0, connect=1.0), 1500.0, False),  # the shortest phase decides: it may be the read's
        (httpx.Timeout(None), 10.0, False),  # no timeout known: nothing to compare with
        (None, 10.0, False),
        ("600", 10.0, False),
        (600.0, None, False),  # no request of this attempt measured
        (600.0, True, False),
        (600.0, math.nan, False),
        (600.0, -5.0, False),  # a wall clock set back mid-request
    ],
)
def test_an_attempt_that_raised_failed_before_its_timeout_only_when_its_request_was_shorter(
    timeout: object, duration_ms: object, failed_first: bool
) -> None:
    assert failed_before_timeout(_attempt_details(timeout), duration_ms, raised=True) is failed_first


def test_the_last_attempt_failed_only_once_litellms_retries_ran_out() -> None:
    # LiteLLM sets ``num_retries`` on the first attempt's exception once every attempt has raised; a
    # cancelled attempt also has its request measured, and is no failure.
    first_failure = InternalServerError("refused", llm_provider="openai", model="gpt-4o-mini")
    details = _attempt_details(600.0, first_failure)
    assert not failed_before_timeout(details, 12.0, raised=False)
    first_failure.num_retries = 2
    assert failed_before_timeout(details, 12.0, raised=False)
