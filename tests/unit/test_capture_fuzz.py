"""Seeded random events through the callback's hooks: whatever LiteLLM hands over, the hook never
raises, every attempt of a call keeps exactly one record, and every cost is unknown or a believable Decimal.

A deterministic, small cut of /tmp/review-fuzz/fuzz.py (which also throws objects whose every read
raises): JSON-like garbage where LiteLLM puts numbers, strings and mappings.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import litellm
import pytest

import turnledger
from turnledger.price_table import PriceTable
from turnledger.pricing import MAX_CALL_COST_USD, MIN_CALL_COST_USD
from turnledger.usage import MAX_TOKEN_COUNT

_T0 = datetime(2026, 11, 26, 5, 0, 0)
_TABLE = PriceTable(
    {
        "my-model": {
            "input_cost_per_token": 1e-6,
            "output_cost_per_token": 2e-6,
            "input_cost_per_token_flex": 5e-7,
            "input_cost_per_token_above_200k_tokens": 3e-6,
            "output_cost_per_audio_token": 1e-5,
        }
    }
)


def _garbage(r: random.Random, depth: int = 0) -> Any:
    choice = r.randrange(12)
    if choice == 0:
        return None
    if choice == 1:
        return r.choice([True, False])
    if choice == 2:
        return r.choice([-1, 2**32 - 1, 2**63, 10**30, MAX_TOKEN_COUNT + 1])
    if choice == 3:
        return r.choice([math.nan, math.inf, -math.inf, -1.5, 1e308, 5e-324, 3.7, 1e13])
    if choice == 4:
        return r.choice(["12", "nan", "-3", "1e999999", "1e-20000", "x", "", "priority", "FLEX"])
    if choice == 5:
        return Decimal(r.choice(["NaN", "Infinity", "-1", "1e-20000", "1e20", "5"]))
    if choice == 6 and depth < 2:
        return {r.choice(["a", "cached_tokens", "audio_tokens"]): _garbage(r, depth + 1) for _ in range(2)}
    if choice == 7 and depth < 2:
        return [_garbage(r, depth + 1) for _ in range(r.randrange(3))]
    return r.randint(0, 3000)


def _count(r: random.Random) -> Any:
    return _garbage(r) if r.random() < 0.3 else r.randint(0, 3000)


def _usage(r: random.Random) -> Any:
    shape = r.randrange(5)
    if shape == 0:
        return {
            "prompt_tokens": _count(r),
            "completion_tokens": _count(r),
            "total_tokens": _count(r),
            "prompt_tokens_details": r.choice(
                [_garbage(r), {"cached_tokens": _count(r), "audio_tokens": _count(r), "image_tokens": _count(r)}]
            ),
            "completion_tokens_details": r.choice([_garbage(r), {"reasoning_tokens": _count(r)}]),
            "cost": _garbage(r) if r.random() < 0.2 else None,
        }
    if shape == 1:
        return {"input_tokens": _count(r), "output_tokens": _count(r), "cache_read_input_tokens": _count(r)}
    if shape == 2:
        return {"inputTokens": _count(r), "outputTokens": _count(r)}
    if shape == 3:
        return {"promptTokenCount": _count(r), "candidatesTokenCount": _count(r), "thoughtsTokenCount": _count(r)}
    return _garbage(r)


def _response(r: random.Random) -> Any:
    shape = r.randrange(6)
    if shape == 0:
        return None
    if shape == 1:
        return r.choice(["text", [1, 2], 7])
    if shape == 2:
        return {"usage": _usage(r), "service_tier": _garbage(r)}
    response = litellm.ModelResponse(model="gpt-4o-mini")
    object.__setattr__(response, "usage", _usage(r))
    if r.random() < 0.5:
        response._hidden_params = r.choice(
            [
                _garbage(r),
                {
                    "response_cost": _garbage(r),
                    "additional_headers": _garbage(r),
                    "provider_specific_fields": {"traffic_type": _garbage(r)},
                },
            ]
        )
    return response


def _exception(r: random.Random) -> Any:
    shape = r.randrange(4)
    if shape == 0:
        return None
    if shape == 1:
        first, second = ValueError("a"), KeyError("b")
        first.__cause__, second.__cause__ = second, first  # a cycle
        return first
    if shape == 2:
        timeout = litellm.exceptions.Timeout("t", model="m", llm_provider="openai")
        timeout.__cause__ = httpx.ReadTimeout("read")
        return timeout
    return RuntimeError("x")


def _kwargs(r: random.Random, call_id: str) -> dict[str, Any]:
    fields: dict[str, Callable[[], Any]] = {
        "model": lambda: r.choice(["gpt-4o-mini", "my-model", "", _garbage(r)]),
        "custom_llm_provider": lambda: r.choice(["openai", "openrouter", None, _garbage(r)]),
        "call_type": lambda: r.choice(["acompletion", "aembedding", "image_generation", _garbage(r)]),
        "response_cost": lambda: _garbage(r),
        "stream": lambda: _garbage(r),
        "messages": lambda: r.choice([[{"role": "user", "content": "hi there"}], _garbage(r)]),
        "input": lambda: _garbage(r),
        "optional_params": lambda: r.choice(
            [_garbage(r), {"service_tier": _garbage(r), "tools": _garbage(r), "n": _garbage(r)}]
        ),
        "service_tier": lambda: _garbage(r),
        "exception": lambda: _exception(r),
        "combined_usage_object": lambda: _usage(r),
        "cache_hit": lambda: _garbage(r),
        "original_response": lambda: r.choice([_garbage(r), "Error code: 500 - {}", '{"error": {"m": 1}}']),
        "completion_start_time": lambda: _garbage(r),
    }
    kwargs: dict[str, Any] = {"litellm_call_id": call_id}
    for key, make in fields.items():
        if r.random() < 0.5:
            kwargs[key] = make()
    return kwargs


def _check(record: turnledger.TokenCallRecord) -> None:
    cost = record.cost_usd
    if cost is not None:
        assert isinstance(cost, Decimal) and cost.is_finite(), record
        assert cost == 0 or MIN_CALL_COST_USD <= cost <= MAX_CALL_COST_USD, record
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "audio_input_tokens"):
        value = getattr(record, name)
        assert type(value) is int and value >= 0, (name, record)


@pytest.mark.parametrize("seed", range(6))
def test_random_events_never_raise_and_keep_one_believable_record_per_call(seed: int) -> None:
    r = random.Random(seed)
    cb = turnledger.TokenTrackingCallback(name=f"fuzz-{seed}", price_table=_TABLE if seed % 2 else None)

    async def one_turn(turn_no: int) -> None:
        async with turnledger.scoped_turn(settle_timeout=0.01, logging_timeout=0.01) as turn:
            sent: list[str] = []
            for i in range(12):
                call_id = f"fuzz-{seed}-{turn_no}-{i}"
                kwargs = _kwargs(r, call_id)
                response = _response(r)
                end = r.choice([_T0 + timedelta(seconds=i + 1), None, math.nan, 1e20])
                starts = 0
                if r.random() < 0.5:
                    cb.log_pre_api_call(kwargs.get("model"), kwargs.get("messages"), kwargs)
                    starts += 1
                hook = r.randrange(5)
                if hook == 4:
                    cb.log_pre_api_call(kwargs.get("model"), kwargs.get("messages"), kwargs)  # never ends
                    starts += 1
                elif hook == 0:
                    await cb.async_log_success_event(kwargs, response, _T0, end)
                elif hook == 1:
                    await cb.async_log_failure_event(kwargs, response, _T0, end)
                elif hook == 2:
                    cb.log_success_event(kwargs, response, _T0, end)
                else:
                    cb.log_failure_event(kwargs, response, _T0, end)
                # A second start of the same call is a further attempt of a call LiteLLM retries
                # itself (num_retries): the attempt it ends unlogged is a record of its own.
                sent.extend([call_id] * max(starts, 1))
            records = turn.calls
            for record in records:
                _check(record)
            costs = [record.cost_usd for record in records if record.cost_usd is not None]
            if records and len(costs) == len(records):
                assert turn.total_cost_usd == sum(costs, Decimal(0))
        ids = [record.call_id for record in turn.calls]
        assert sorted(ids) == sorted(sent)  # one record per attempt: none lost, none doubled
        for record in turn.calls:
            _check(record)

    async def main() -> None:
        for turn_no in range(4):
            await one_turn(turn_no)

    asyncio.run(main())
    assert cb.stats["duplicate"] == 0
