"""Malformed LiteLLM events (found by /tmp/review-fuzz/fuzz.py): what could be read is kept, and flagged."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import litellm
import pytest

import turnledger
from turnledger import CallStatus, CostSource, RecordFlag
from turnledger.callback import _utc
from turnledger.errors import ConfigurationError
from turnledger.price_table import ModelPrice, PriceTable
from turnledger.pricing import price_call
from turnledger.usage import MAX_COUNTED_ITEMS, estimate_counts, normalize_usage


def _event(call_id: str) -> tuple[dict[str, Any], litellm.ModelResponse]:
    kwargs: dict[str, Any] = {
        "litellm_call_id": call_id,
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "acompletion",
        "response_cost": 0.000015,
    }
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    return kwargs, litellm.ModelResponse(model="gpt-4o-mini", usage=usage)


@pytest.mark.parametrize(
    "bad_time",
    [
        math.nan,
        math.inf,
        -math.inf,
        1e20,
        -1e20,
        datetime.min,
        datetime.max,
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
    ],
    ids=["nan", "inf", "-inf", "1e20", "-1e20", "naive-min", "naive-max", "aware-max-west"],
)
def test_a_time_that_is_no_time_loses_the_timing_not_the_tokens(bad_time: object) -> None:
    assert _utc(bad_time) is None
    cb = turnledger.TokenTrackingCallback(name="bad-times")
    with turnledger.scoped_turn() as turn:
        kwargs, response = _event("t1")
        kwargs["stream"] = True
        kwargs["completion_start_time"] = bad_time
        cb.log_success_event(kwargs, response, bad_time, datetime(2026, 11, 26, 5, 0, 0))
        kwargs, response = _event("t2")
        cb.log_failure_event(kwargs, response, datetime(2026, 11, 26, 5, 0, 0), bad_time)
    first, second = turn.calls
    assert (first.call_id, first.status, first.prompt_tokens, first.completion_tokens) == (
        "t1",
        CallStatus.SUCCESS,
        10,
        5,
    )
    assert first.cost_usd == Decimal("0.000015")
    assert first.started_at is None and first.latency_ms is None and first.ttft_ms is None
    assert RecordFlag.MALFORMED_EVENT not in first.flags
    assert (second.call_id, second.prompt_tokens, second.cost_usd) == ("t2", 10, Decimal("0.000015"))
    assert second.latency_ms is None
    assert cb.stats["errors"] == 0


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": -3, "total_tokens": -8},
        {"prompt_tokens": "abc", "completion_tokens": None, "total_tokens": 4294967295},
        {"prompt_tokens": 4294967295, "completion_tokens": 4294967295},
    ],
    ids=["negative", "unreadable", "wrapped-around"],
)
@pytest.mark.parametrize("with_table", [False, True], ids=["litellm", "price-table"])
def test_a_call_whose_every_count_was_discarded_is_unpriced_not_free(usage: dict[str, Any], with_table: bool) -> None:
    # Its tokens are unknown, so is its price: the counts read as 0 must not price it at 0.
    table = PriceTable({"gpt-4o-mini": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}})
    cb = turnledger.TokenTrackingCallback(name="discarded", price_table=table if with_table else None)
    kwargs, response = _event("d1")
    object.__setattr__(response, "usage", usage)
    with turnledger.scoped_turn() as turn:
        cb.log_success_event(kwargs, response, datetime(2026, 11, 26, 5, 0, 0), datetime(2026, 11, 26, 5, 0, 1))
    (record,) = turn.calls
    assert RecordFlag.MALFORMED_USAGE in record.flags
    assert record.cost_usd is None
    assert turn.total_cost_usd is None and turn.unpriced_calls == 1


def test_counts_partly_discarded_are_priced_as_read() -> None:
    # The counts that could be read still price the call (a lower bound, flagged on the counts).
    counts = normalize_usage({"usage": {"prompt_tokens": -1, "completion_tokens": 7}})
    assert counts.count_discarded and counts.used_tokens
    table = PriceTable({"my-model": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}})
    cost, _source, _flags = price_call({}, None, counts, model="my-model", price_table=table)
    assert cost == Decimal("0.000014")


def test_a_failure_whose_usage_counts_were_all_discarded_is_unpriced_not_unbilled() -> None:
    # A failure that carried a usage block (billed, then refused) or a stream broken off whose
    # delivered usage could not be read: billed something unknown, not nothing.
    cb = turnledger.TokenTrackingCallback(name="discarded-failure")
    kwargs, response = _event("f1")
    object.__setattr__(response, "usage", {"prompt_tokens": -5, "completion_tokens": 4294967295})
    broken_kwargs, _ = _event("f2")
    broken_kwargs["combined_usage_object"] = {"prompt_tokens": "n/a", "completion_tokens": -1}
    with turnledger.scoped_turn() as turn:
        cb.log_failure_event(kwargs, response, datetime(2026, 11, 26, 5, 0, 0), datetime(2026, 11, 26, 5, 0, 1))
        cb.log_failure_event(broken_kwargs, None, datetime(2026, 11, 26, 5, 0, 0), datetime(2026, 11, 26, 5, 0, 2))
    for record in turn.calls:
        assert record.status is CallStatus.FAILURE
        assert RecordFlag.MALFORMED_USAGE in record.flags, record.call_id
        assert record.cost_usd is None, record.call_id
    assert turn.total_cost_usd is None


@pytest.mark.parametrize("response_cost", [1e13, 1e20, 10**30], ids=["1e13", "1e20", "int-1e30"])
def test_an_implausible_litellm_cost_is_discarded_and_flagged(response_cost: object) -> None:
    # Its micro-USD would not fit the 64-bit column: the database would refuse the whole turn.
    cb = turnledger.TokenTrackingCallback(name="implausible")
    kwargs, response = _event("i1")
    kwargs["response_cost"] = response_cost
    with turnledger.scoped_turn() as turn:
        cb.log_success_event(kwargs, response, datetime(2026, 11, 26, 5, 0, 0), datetime(2026, 11, 26, 5, 0, 1))
    (record,) = turn.calls
    assert RecordFlag.IMPLAUSIBLE_COST in record.flags
    # Priced from its counts instead (LiteLLM's own rates for gpt-4o-mini), never at the absurd figure.
    assert record.cost_usd is not None and record.cost_usd < 1


def test_an_implausible_price_table_cost_is_discarded_and_flagged() -> None:
    table = PriceTable({"my-model": {"input_cost_per_token": "1000000", "output_cost_per_token": 0}})
    counts = normalize_usage({"usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    cost, _source, flags = price_call({}, None, counts, model="my-model", price_table=table)
    assert cost is None
    assert RecordFlag.IMPLAUSIBLE_COST in flags


class _Unreadable:
    """An object whose attributes, text and truth value all raise when read."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"cannot read {name}")

    def __str__(self) -> str:
        raise RuntimeError("cannot print")

    def __bool__(self) -> bool:
        raise RuntimeError("cannot test")


def test_an_unreadable_event_with_an_unprintable_model_is_still_kept_flagged() -> None:
    cb = turnledger.TokenTrackingCallback(name="unreadable")
    kwargs, _ = _event("u1")
    kwargs["model"] = _Unreadable()
    with turnledger.scoped_turn() as turn:
        cb.log_success_event(kwargs, _Unreadable(), datetime(2026, 11, 26, 5, 0, 0), datetime(2026, 11, 26, 5, 0, 1))
    (record,) = turn.calls
    assert (record.call_id, record.model, record.status) == ("u1", "unknown", CallStatus.SUCCESS)
    assert record.flags == (RecordFlag.MALFORMED_EVENT,)
    assert record.cost_usd is None
    assert cb.stats["errors"] == 1


class _CountingTokenizer:
    """litellm.token_counter, recording how many texts and messages it was handed."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.texts = 0
        self.messages = 0

    def __call__(self, **kwargs: Any) -> int:
        if kwargs.get("text") is not None:
            self.texts += 1
        self.messages += len(kwargs.get("messages") or ())
        return int(self.real(**kwargs))


def test_an_estimate_of_a_huge_embedding_batch_tokenizes_a_bounded_number_of_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = litellm.token_counter
    per_text = real(model="text-embedding-3-small", text="hello world")
    counting = _CountingTokenizer(real)
    monkeypatch.setattr(litellm, "token_counter", counting)
    counts = estimate_counts("text-embedding-3-small", input_texts=["hello world"] * 100_000)
    assert counting.texts <= MAX_COUNTED_ITEMS
    assert counts.prompt_tokens == 100_000 * per_text  # the rest at the counted tokens per character
    assert counts.estimated and RecordFlag.USAGE_ESTIMATED in counts.flags


def test_an_estimate_of_a_huge_conversation_tokenizes_a_bounded_number_of_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages = [{"role": "user", "content": f"message number {i}"} for i in range(20_000)]
    exact = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    counting = _CountingTokenizer(litellm.token_counter)
    monkeypatch.setattr(litellm, "token_counter", counting)
    counts = estimate_counts("gpt-4o-mini", messages=messages)
    assert counting.messages <= MAX_COUNTED_ITEMS
    assert abs(counts.prompt_tokens - exact) <= exact // 50  # the rest at the counted tokens per character


@pytest.mark.parametrize("messages_count", [1, 3])
def test_an_estimate_of_a_message_with_a_huge_list_of_parts_tokenizes_a_bounded_number_of_parts(
    monkeypatch: pytest.MonkeyPatch, messages_count: int
) -> None:
    # The bound on messages alone let one message of 10^6 parts hold the event loop for 2 s.
    part = {"type": "text", "text": "hello world"}
    messages = [{"role": "user", "content": [part] * (20_000 // messages_count)} for _ in range(messages_count)]
    exact = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    seen: list[int] = []
    real = litellm.token_counter

    def counting(**kwargs: Any) -> int:
        seen.append(sum(len(m["content"]) for m in kwargs.get("messages") or ()))
        return int(real(**kwargs))

    monkeypatch.setattr(litellm, "token_counter", counting)
    counts = estimate_counts("gpt-4o-mini", messages=messages)
    assert max(seen) <= MAX_COUNTED_ITEMS
    assert abs(counts.prompt_tokens - exact) <= exact // 50  # the rest at the counted tokens per character


def test_an_estimate_counts_every_part_up_to_the_bound() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": f"part {i}"} for i in range(MAX_COUNTED_ITEMS)]}]
    exact = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    assert estimate_counts("gpt-4o-mini", messages=messages).prompt_tokens == exact


@pytest.mark.parametrize("response_cost", [Decimal("1e-20000"), "1e-999999", "1e-31"], ids=["decimal", "str", "1e-31"])
def test_a_vanishing_cost_is_discarded_and_flagged(response_cost: object) -> None:
    # PostgreSQL's numeric holds 16,383 digits after the point: stored, it would refuse the whole turn.
    cb = turnledger.TokenTrackingCallback(name="vanishing")
    kwargs, response = _event("v1")
    kwargs["response_cost"] = response_cost
    with turnledger.scoped_turn() as turn:
        cb.log_success_event(kwargs, response, datetime(2026, 11, 26, 5, 0, 0), datetime(2026, 11, 26, 5, 0, 1))
    (record,) = turn.calls
    assert RecordFlag.IMPLAUSIBLE_COST in record.flags
    assert record.cost_usd is not None and record.cost_usd.adjusted() > -30  # priced from its counts


def test_a_cost_is_kept_to_the_digits_money_arithmetic_holds() -> None:
    counts = normalize_usage({"usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    cost, source, flags = price_call({"response_cost": "0." + "1" * 20_000}, None, counts, model="gpt-4o-mini")
    assert source is CostSource.RESPONSE_COST and not flags
    assert cost is not None and len(cost.as_tuple().digits) == 60


@pytest.mark.parametrize("rate", ["1e999999", 1e7, "1000001"], ids=["str-1e999999", "float-1e7", "just-past"])
def test_a_price_table_refuses_an_absurd_rate(rate: object) -> None:
    with pytest.raises(ConfigurationError, match="at most"):
        PriceTable({"m": {"input_cost_per_token": rate}})


def test_a_model_price_whose_cost_overflows_has_no_cost_rather_than_raising() -> None:
    price = ModelPrice(input_cost_per_token=Decimal("1e999999"))
    counts = normalize_usage({"usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0}})
    assert price.cost(counts) is None


def test_an_estimate_with_a_huge_tool_list_tokenizes_a_bounded_number_of_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [{"role": "user", "content": "hi"}]
    tools = [
        {"type": "function", "function": {"name": f"lookup_{i}", "parameters": {"type": "object"}}}
        for i in range(50_000)
    ]
    exact = litellm.token_counter(model="gpt-4o-mini", messages=messages, tools=tools)
    seen: list[int] = []
    real = litellm.token_counter

    def counting(**kwargs: Any) -> int:
        seen.append(len(kwargs.get("tools") or ()))
        return int(real(**kwargs))

    monkeypatch.setattr(litellm, "token_counter", counting)
    few = estimate_counts("gpt-4o-mini", messages=messages, tools=tools[:3])
    many = estimate_counts("gpt-4o-mini", messages=messages, tools=tools)
    assert max(seen) <= MAX_COUNTED_ITEMS
    assert few.prompt_tokens == real(model="gpt-4o-mini", messages=messages, tools=tools[:3])
    assert abs(many.prompt_tokens - exact) <= exact // 25  # the rest at the counted tools' mean


def test_tools_are_counted_once_beside_a_huge_conversation() -> None:
    messages = [{"role": "user", "content": "hello there"}] * 10_000
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    with_tools = estimate_counts("gpt-4o-mini", messages=messages, tools=[tool])
    without = estimate_counts("gpt-4o-mini", messages=messages)
    one_tool = litellm.token_counter(model="gpt-4o-mini", messages=messages[:1], tools=[tool]) - litellm.token_counter(
        model="gpt-4o-mini", messages=messages[:1]
    )
    assert with_tools.prompt_tokens - without.prompt_tokens == one_tool  # not scaled with the messages
