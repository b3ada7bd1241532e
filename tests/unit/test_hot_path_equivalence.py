"""The success path's in-place readings (callgrind-driven) give what the functions they stand in for give.

build_record reads the usual event without calling price_call, _utc, _ms_between, response_request_id,
and normalize_usage reads the usual chat usage block without its readers: each case here is read both
ways and compared, the usual shapes and the ones next to them that must take the long way.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import litellm
import pytest

from turnledger.callback import TokenTrackingCallback, _ms_between, _utc
from turnledger.pricing import price_call
from turnledger.records import CallStatus
from turnledger.request_ids import response_request_id
from turnledger.usage import TokenCounts, normalize_usage


def _slow_counts(usage: dict[str, Any]) -> TokenCounts:
    # A read-only mapping is not a dict: normalize_usage reads it with its general readers.
    return normalize_usage({"usage": MappingProxyType(usage)})


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        {"prompt_tokens": 10, "completion_tokens": 20},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": None},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 0},
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 25},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 99},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": -1},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": "30"},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": True},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30.0},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 10**10},
        {"prompt_tokens": True, "completion_tokens": 20, "total_tokens": 21},
        {"prompt_tokens": -5, "completion_tokens": 20, "total_tokens": 15},
        {"prompt_tokens": None, "completion_tokens": 20, "total_tokens": 20},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "prompt_tokens_details": None},
        {"prompt_tokens": 10, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 4}},
        {"prompt_tokens": 10, "completion_tokens": 20, "completion_tokens_details": {"reasoning_tokens": 30}},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "cost": 0.5},
        {"prompt_tokens": 10, "completion_tokens": 20, "cache_read_input_tokens": 4},
        {"prompt_tokens": 0, "completion_tokens": 0, "input_tokens": 7, "output_tokens": 3},
    ],
)
def test_a_chat_usage_block_reads_as_the_general_readers_read_it(usage: dict[str, Any]) -> None:
    assert normalize_usage({"usage": dict(usage)}) == _slow_counts(usage)
    # And as a LiteLLM Usage, where the details are objects or None.
    if all(type(usage.get(k)) is int for k in ("prompt_tokens", "completion_tokens")) and "cost" not in usage:
        model = litellm.ModelResponse(model="gpt-4o-mini", usage=dict(usage))
        block = model.usage.model_dump()
        assert normalize_usage(model) == _slow_counts({k: v for k, v in block.items() if k in usage or v is not None})


_NAIVE = datetime(2026, 11, 26, 5, 0, 0, 250_000)


class _Stamp(datetime):
    """A datetime subclass: read through _utc, which leaves it to its own timestamp()."""


@pytest.mark.parametrize(
    ("cost", "usage", "extra"),
    [
        (0.0000135, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (8.400000000000001e-06, {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}, {}),
        (2.0, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (1.0, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (0.5, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (0.9999999999999999, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (1.5, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (1e-13, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (1e-20, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (1e9, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (0.0, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (float("nan"), {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {}),
        (0.0000135, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {"cache_hit": True}),
        (0.0000135, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "cost": 0.25}, {}),
        (0.0000135, {"prompt_tokens": -1, "completion_tokens": 20, "total_tokens": 30}, {}),
        (0.0000135, {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}, {"stream": True}),
    ],
)
@pytest.mark.parametrize(
    "times",
    [
        (_NAIVE, _NAIVE + timedelta(milliseconds=742)),
        (_NAIVE + timedelta(seconds=2), _NAIVE),
        (_NAIVE.replace(fold=1), _NAIVE.replace(fold=1) + timedelta(seconds=1)),
        (_Stamp(2026, 11, 26, 5), _Stamp(2026, 11, 26, 5, 0, 1)),
        (datetime(2026, 11, 26, 5, tzinfo=UTC), datetime(2026, 11, 26, 5, 0, 1, tzinfo=timezone(timedelta(hours=2)))),
        (datetime.min, datetime.max),
        (1_764_133_200.0, 1_764_133_201),
        (None, "later"),
    ],
)
def test_a_success_record_holds_what_the_functions_it_stands_in_for_give(
    cost: float, usage: dict[str, Any], extra: dict[str, Any], times: tuple[Any, Any]
) -> None:
    start, end = times
    kwargs = {
        "litellm_call_id": "c1",
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "acompletion",
        "response_cost": cost,
        **extra,
    }
    response = litellm.ModelResponse(model="gpt-4o-mini", usage=usage)
    record = TokenTrackingCallback(name="equivalence").build_record(
        kwargs, response, start, end, CallStatus.SUCCESS, None
    )
    counts = normalize_usage(response)
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (
        counts.prompt_tokens,
        counts.completion_tokens,
        counts.total_tokens,
    )
    priced, source, _ = price_call(kwargs, response, counts, model="gpt-4o-mini", provider="openai")
    assert (record.cost_usd, record.cost_source) == (priced, source)
    assert str(record.cost_usd) == str(priced)
    assert record.started_at == _utc(start)
    assert record.latency_ms == _ms_between(_utc(start), _utc(end))
    assert record.provider_request_id == response_request_id(response)


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"llm_provider-x-request-id": "req-1"}, {"x-request-id": "req-2"}, {"other": "x"}, "not headers"],
)
def test_a_record_reads_the_request_id_as_response_request_id_does(headers: object) -> None:
    response = litellm.ModelResponse(model="gpt-4o-mini", usage={"prompt_tokens": 1, "completion_tokens": 1})
    response._hidden_params = {"additional_headers": headers}
    kwargs = {"litellm_call_id": "c1", "model": "gpt-4o-mini", "response_cost": 0.00001}
    record = TokenTrackingCallback(name="request-id").build_record(
        kwargs, response, _NAIVE, _NAIVE, CallStatus.SUCCESS, None
    )
    assert record.provider_request_id == response_request_id(response)


def test_naive_times_in_a_zone_that_is_not_utc_are_read_as_local_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        kwargs = {"litellm_call_id": "c1", "model": "gpt-4o-mini", "response_cost": 0.00001}
        response = litellm.ModelResponse(model="gpt-4o-mini", usage={"prompt_tokens": 1, "completion_tokens": 1})
        record = TokenTrackingCallback(name="zone").build_record(
            kwargs, response, _NAIVE, _NAIVE + timedelta(seconds=1), CallStatus.SUCCESS, None
        )
        assert record.started_at == _utc(_NAIVE) == _NAIVE.astimezone(UTC)
        assert record.latency_ms == 1000.0
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.fixture
def utc_zone(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The local zone UTC, where build_record reads naive times in place."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "times",
    [
        (_NAIVE, _NAIVE + timedelta(milliseconds=742)),
        (_NAIVE, _NAIVE - timedelta(microseconds=1)),
        (_NAIVE, _NAIVE),
        (_NAIVE, _NAIVE.replace(fold=1) + timedelta(seconds=1)),
        (_NAIVE, _Stamp(2026, 11, 26, 5, 0, 1)),
        (_NAIVE, datetime(2026, 11, 26, 5, 0, 1, tzinfo=timezone(timedelta(hours=2)))),
        (_NAIVE, datetime(2200, 1, 1)),
        (_NAIVE, datetime.max),
        (_NAIVE, 1_764_133_201.5),
        (_NAIVE, None),
        (datetime(1900, 12, 31, 23, 59, 59), _NAIVE),
        (datetime.min, _NAIVE),
        (_NAIVE.replace(fold=1), _NAIVE + timedelta(seconds=1)),
        (1_764_133_200.0, _NAIVE),
        (None, _NAIVE),
    ],
)
def test_a_latency_between_naive_utc_times_is_that_of_the_utc_times(utc_zone: None, times: tuple[Any, Any]) -> None:
    # Both times usual: their difference is taken on the naive times, the end never made UTC.
    start, end = times
    kwargs = {"litellm_call_id": "c1", "model": "gpt-4o-mini", "response_cost": 0.00001}
    response = litellm.ModelResponse(model="gpt-4o-mini", usage={"prompt_tokens": 1, "completion_tokens": 1})
    record = TokenTrackingCallback(name="latency").build_record(kwargs, response, start, end, CallStatus.SUCCESS, None)
    assert record.started_at == _utc(start)
    expected = _ms_between(_utc(start), _utc(end))
    assert record.latency_ms == expected
    assert type(record.latency_ms) is type(expected)


class _NoUsageAttribute:
    """A usage block whose every read raises: _deferrable reads it as "read at once"."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)


def _responses() -> list[Any]:
    def with_usage(usage: Any) -> litellm.ModelResponse:
        response = litellm.ModelResponse(model="gpt-4o-mini")
        response.usage = usage
        return response

    # LiteLLM keeps a response's usage among its pydantic extras: one in its fields is read as well.
    in_fields = litellm.ModelResponse(model="gpt-4o-mini")
    in_fields.__dict__["usage"] = litellm.Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    return [
        litellm.ModelResponse(
            model="gpt-4o-mini", usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        ),
        litellm.ModelResponse(model="gpt-4o-mini", usage={"prompt_tokens": 10, "completion_tokens": 5}),
        litellm.ModelResponse(model="gpt-4o-mini", usage={"prompt_tokens": 0, "completion_tokens": 0}),
        litellm.ModelResponse(model="gpt-4o-mini"),
        in_fields,
        with_usage(None),
        with_usage({"total_tokens": 15}),
        with_usage(_NoUsageAttribute()),
        with_usage(litellm.Usage(prompt_tokens=3, completion_tokens=4, total_tokens=-1)),
        litellm.EmbeddingResponse(model="text-embedding-3-small", usage=litellm.Usage(prompt_tokens=3, total_tokens=3)),
        litellm.TextCompletionResponse(model="gpt-3.5-turbo-instruct"),
        {"usage": {"total_tokens": 15}},
        None,
    ]


@pytest.mark.parametrize("status", [CallStatus.SUCCESS, CallStatus.FAILURE])
@pytest.mark.parametrize("cost", [0.000015, 2.0, 0.0, -1.0, float("inf"), float("nan"), 5e-324, 1, "0.1", None])
@pytest.mark.parametrize("response_index", range(len(_responses())))
def test_an_event_is_deferred_where_deferrable_says_it_can_be(
    status: CallStatus, cost: object, response_index: int
) -> None:
    # _on_end reads _deferrable's answer in place for a success with a LiteLLM response.
    import turnledger
    from turnledger.callback import _deferrable

    response = _responses()[response_index]
    kwargs = {"litellm_call_id": "c1", "model": "gpt-4o-mini", "call_type": "acompletion", "response_cost": cost}
    cb = TokenTrackingCallback(name="deferrable")
    expected = _deferrable(dict(kwargs), response, status)
    with turnledger.scoped_turn() as turn:
        hook = cb.log_success_event if status is CallStatus.SUCCESS else cb.log_failure_event
        hook(kwargs, response, _NAIVE, _NAIVE + timedelta(seconds=1))
        assert len(turn._deferred) == int(expected)
        assert cb.stats["captured"] == 1


def test_a_believable_float_cost_is_positive() -> None:
    # build_record takes a believable cost under 1 USD for one that is not integral.
    from turnledger.pricing import _FLOAT_SURELY_BELIEVABLE_FROM

    assert _FLOAT_SURELY_BELIEVABLE_FROM > 0.0
