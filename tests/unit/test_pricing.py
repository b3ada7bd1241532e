"""The cost chain stage by stage, with LiteLLM's real cost functions and exact Decimal expectations."""

from __future__ import annotations

import itertools
import logging
import math
import random
import struct
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

import litellm
import pytest
from litellm.types.utils import ImageObject, ImageResponse, ModelResponse, Usage

from turnledger import PriceTable
from turnledger._logging import problem_counts
from turnledger.accumulator import PendingCall, TurnTokenAccumulator
from turnledger.money import to_decimal
from turnledger.pricing import (
    decimal_from_litellm,
    delivered_before_failure,
    estimate_missing_usage,
    estimate_unanswered_call,
    price_abandoned_call,
    price_call,
    price_counts,
    redacted_messages,
)
from turnledger.records import CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord
from turnledger.usage import TokenCounts, normalize_usage

D = Decimal
# LiteLLM's bundled rates (litellm 1.106), USD per token.
GPT_4O_MINI_IN, GPT_4O_MINI_CACHED, GPT_4O_MINI_OUT = D("0.00000015"), D("0.000000075"), D("0.0000006")
SONNET_45_IN, SONNET_45_READ, SONNET_45_W5M, SONNET_45_W1H, SONNET_45_OUT = (
    D("0.000003"),
    D("0.0000003"),
    D("0.00000375"),
    D("0.000006"),
    D("0.000015"),
)

TABLE = PriceTable.from_dict(
    {
        "models": {
            "acme-7b": {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"},
            "acme-image": {"output_cost_per_image": "0.02"},
        },
        "aliases": {"acme/acme-7b-chat": "acme-7b"},
    }
)


def response(model: str, **usage: Any) -> ModelResponse:
    return ModelResponse(
        model=model,
        choices=[{"message": {"role": "assistant", "content": "ok"}}],
        usage=Usage(**usage),
    )


def kw(model: str, provider: str = "openai", **extra: Any) -> dict[str, Any]:
    return {"model": model, "custom_llm_provider": provider, "call_type": "acompletion", **extra}


def price(kwargs: dict[str, Any], obj: Any, **options: Any) -> tuple[Decimal | None, CostSource, list[RecordFlag]]:
    return price_call(kwargs, obj, normalize_usage(obj), **options)


# -- each stage answers, in order ---------------------------------------------------------------------


def test_provider_inline_cost_wins() -> None:
    obj = response("openai/gpt-4o-mini", prompt_tokens=10, completion_tokens=1, total_tokens=11, cost=0.00042)
    assert price(kw("openai/gpt-4o-mini", "openrouter", response_cost=0.5), obj) == (
        D("0.00042"),
        CostSource.PROVIDER,
        [],
    )


def test_provider_zero_is_a_price() -> None:
    # OpenRouter's ":free" models report cost 0: the provider said so, so it is free.
    obj = response("meta/llama:free", prompt_tokens=10, completion_tokens=1, total_tokens=11, cost=0)
    assert price(kw("meta/llama:free", "openrouter"), obj)[:2] == (D(0), CostSource.PROVIDER)


def test_response_cost_float_noise_is_dropped() -> None:
    obj = response("deepseek-chat", prompt_tokens=1000, completion_tokens=200, total_tokens=1200)
    cost, source, flags = price(kw("deepseek-chat", "deepseek", response_cost=0.00021280000000000002), obj)
    assert (cost, source, flags) == (D("0.0002128"), CostSource.RESPONSE_COST, [])


class _FloatSubclass(float):
    """A float the fast path for exact floats does not take: the general path prices it."""


def test_a_float_cost_is_read_alike_by_the_fast_path_and_the_general_one() -> None:
    # Exact floats skip to_decimal's type tests and the rounding to 60 digits: the Decimal, its digits
    # and exponent, the source and the flags must be what the general path gives.
    rng = random.Random(17)
    values = [
        1.35e-05,
        8.400000000000001e-06,
        0.30000000000000004,
        2.0,
        100.0,
        1e16,
        1e300,
        5e-324,
        1e-30,
        9.99e-31,
        1e6,
        1000000.0000000001,
        999999.9999999999,
        # The bounds of the range taken without _believable, and their neighbours.
        1e-29,
        math.nextafter(1e-29, 0),
        math.nextafter(1e-29, 1),
        5e5,
        math.nextafter(5e5, 0),
        math.nextafter(5e5, 1e6),
        -1e-05,
        0.0,
        -0.0,
        float("nan"),
        float("inf"),
    ]
    values += [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(300)]
    values += [rng.uniform(0, 2) * 10.0 ** rng.randint(-12, 3) for _ in range(300)]
    obj = response("gpt-4o-mini", prompt_tokens=10, completion_tokens=1, total_tokens=11)
    for value in values:
        fast = price(kw("gpt-4o-mini", response_cost=value), obj)
        general = price(kw("gpt-4o-mini", response_cost=_FloatSubclass(value)), obj)
        assert fast == general, value
        assert (fast[0] is None) == (general[0] is None), value
        if fast[0] is not None and general[0] is not None:
            assert fast[0].as_tuple() == general[0].as_tuple(), value


def test_hidden_params_answer_when_response_cost_is_absent() -> None:
    obj = response("gpt-4o-mini", prompt_tokens=10, completion_tokens=1, total_tokens=11)
    obj._hidden_params["response_cost"] = 0.0000021
    assert price(kw("gpt-4o-mini"), obj) == (D("0.0000021"), CostSource.HIDDEN_PARAMS, [])


def test_completion_cost_answers_for_a_real_response() -> None:
    obj = response(
        "gpt-4o-mini",
        prompt_tokens=1000,
        completion_tokens=100,
        total_tokens=1100,
        prompt_tokens_details={"cached_tokens": 600},
    )
    cost, source, flags = price(kw("gpt-4o-mini"), obj)
    assert source is CostSource.COMPLETION_COST and flags == []
    assert cost == 400 * GPT_4O_MINI_IN + 600 * GPT_4O_MINI_CACHED + 100 * GPT_4O_MINI_OUT


def test_cost_per_token_ignores_the_applications_decimal_context() -> None:
    obj = {"usage": {"prompt_tokens": 518517, "completion_tokens": 1}}
    with localcontext() as ctx:
        ctx.prec = 4  # the application's own setting must not round the sum of the two halves
        cost, source, _ = price(kw("gpt-4o-mini"), obj)
    assert source is CostSource.COST_PER_TOKEN
    assert cost == 518517 * GPT_4O_MINI_IN + GPT_4O_MINI_OUT == D("0.07777815")


def test_cost_per_token_gets_cache_and_1h_writes() -> None:
    # A dict response (no LiteLLM object to hand completion_cost): cost_per_token from our counts.
    obj = {
        "usage": {
            "input_tokens": 100,
            "output_tokens": 50,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
        }
    }
    cost, source, flags = price(kw("claude-sonnet-4-5-20250929", "anthropic"), obj)
    assert source is CostSource.COST_PER_TOKEN and flags == []
    assert (
        cost
        == 100 * SONNET_45_IN + 1000 * SONNET_45_READ + 200 * SONNET_45_W5M + 100 * SONNET_45_W1H + 50 * SONNET_45_OUT
    )
    assert cost == D("0.00270")


@pytest.mark.parametrize(
    ("model", "provider", "usage", "expected"),
    [
        (
            # gpt-audio: text in 2.5/M, audio in 32/M, text out 10/M, audio out 64/M.
            "gpt-audio",
            "openai",
            {
                "prompt_tokens": 1000,
                "completion_tokens": 500,
                "prompt_tokens_details": {"audio_tokens": 800},
                "completion_tokens_details": {"audio_tokens": 400},
            },
            200 * D("0.0000025") + 800 * D("0.000032") + 100 * D("0.00001") + 400 * D("0.000064"),
        ),
        (
            # gemini-2.5-flash-image: text in 0.3/M, text out 2.5/M, image out 30/M.
            "gemini-2.5-flash-image",
            "gemini",
            {"prompt_tokens": 100, "completion_tokens": 1300, "completion_tokens_details": {"image_tokens": 1290}},
            100 * D("0.0000003") + 10 * D("0.0000025") + 1290 * D("0.00003"),
        ),
    ],
    ids=["audio-in-and-out", "image-out"],
)
def test_cost_per_token_prices_audio_and_image_tokens_at_their_rates(
    model: str, provider: str, usage: dict[str, Any], expected: Decimal
) -> None:
    cost, source, flags = price(kw(model, provider), {"usage": usage})
    assert (cost, source, flags) == (expected, CostSource.COST_PER_TOKEN, [])


# gpt-realtime in LiteLLM 1.106's map: text in 4/M, audio in 32/M, cache reads (text and audio) 0.4/M,
# text out 16/M. A Responses-API usage block: 500 of the 1000 input tokens read from the cache, 100 of
# those audio, so 200 of the 300 audio tokens were fresh.
REALTIME_CACHED_AUDIO: dict[str, Any] = {
    "input_tokens": 1000,
    "output_tokens": 100,
    "total_tokens": 1100,
    "input_tokens_details": {
        "cached_tokens": 500,
        "audio_tokens": 300,
        "text_tokens": 700,
        "cached_tokens_details": {"audio_tokens": 100, "text_tokens": 400},
    },
}
REALTIME_CACHED_AUDIO_COST = 300 * D("0.000004") + 200 * D("0.000032") + 500 * D("0.0000004") + 100 * D("0.000016")


def test_cost_per_token_bills_cached_audio_as_a_cache_read_not_as_fresh_audio() -> None:
    cost, source, flags = price(kw("gpt-realtime"), {"usage": REALTIME_CACHED_AUDIO})
    assert (cost, source, flags) == (REALTIME_CACHED_AUDIO_COST, CostSource.COST_PER_TOKEN, [])
    # What LiteLLM charges for the same response, priced whole.
    usage = Usage(
        prompt_tokens=1000,
        completion_tokens=100,
        total_tokens=1100,
        prompt_tokens_details=REALTIME_CACHED_AUDIO["input_tokens_details"],
    )
    whole = ModelResponse(
        model="gpt-realtime", choices=[{"message": {"role": "assistant", "content": "ok"}}], usage=usage
    )
    litellm_cost = litellm.completion_cost(completion_response=whole, custom_llm_provider="openai")
    assert cost == to_decimal(litellm_cost) == D("0.0094")


def test_price_table_bills_cached_audio_as_a_cache_read_not_as_fresh_audio() -> None:
    table = PriceTable({"my-realtime": {k: v for k, v in litellm.model_cost["gpt-realtime"].items() if "cost" in k}})
    cost, source, _flags = price(kw("my-realtime"), {"usage": REALTIME_CACHED_AUDIO}, price_table=table)
    assert (cost, source) == (REALTIME_CACHED_AUDIO_COST, CostSource.PRICE_TABLE)


# gpt-5's rates by service tier (LiteLLM 1.106's map): input, cache read, output.
GPT_5_TIERS = {
    None: (D("0.00000125"), D("0.000000125"), D("0.00001")),
    "flex": (D("0.000000625"), D("0.0000000625"), D("0.000005")),
    "priority": (D("0.0000025"), D("0.00000025"), D("0.00002")),
}


@pytest.mark.parametrize(
    ("served", "requested", "tier"),
    [
        ("priority", None, "priority"),
        ("flex", "priority", "flex"),  # the tier that served the call is the one billed
        (None, "flex", "flex"),
        ("default", "flex", None),
        (None, "auto", None),
        (None, None, None),
    ],
)
def test_cost_per_token_prices_the_service_tier_that_was_billed(
    served: str | None, requested: str | None, tier: str | None
) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 400}}
    obj: dict[str, Any] = {"usage": usage} if served is None else {"usage": usage, "service_tier": served}
    kwargs = kw("gpt-5", optional_params={} if requested is None else {"service_tier": requested})
    fresh, read, out = GPT_5_TIERS[tier]
    assert price(kwargs, obj) == (600 * fresh + 400 * read + 100 * out, CostSource.COST_PER_TOKEN, [])


@pytest.mark.parametrize(
    ("traffic_type", "rates"),
    [
        # gemini-2.5-pro: input, output per token, standard and priority (LiteLLM 1.106's map).
        ("ON_DEMAND_PRIORITY", (D("0.00000225"), D("0.000018"))),
        ("ON_DEMAND", (D("0.00000125"), D("0.00001"))),
    ],
)
def test_cost_per_token_prices_the_tier_gemini_says_in_its_traffic_type(
    traffic_type: str, rates: tuple[Decimal, Decimal]
) -> None:
    # Gemini names the tier that served a call only in usageMetadata.trafficType, which LiteLLM keeps
    # in its hidden params and bills by.
    obj = response("gemini-2.5-pro", prompt_tokens=1000, completion_tokens=100, total_tokens=1100)
    obj._hidden_params["provider_specific_fields"] = {"traffic_type": traffic_type}
    cost, source, _flags = price(kw("gemini-2.5-pro", "gemini", response_cost=None), obj)
    litellm_cost = litellm.completion_cost(completion_response=obj, custom_llm_provider="gemini")
    assert (cost, source) == (1000 * rates[0] + 100 * rates[1], CostSource.COST_PER_TOKEN)
    assert cost == to_decimal(litellm_cost)


def test_price_table_prices_what_litellm_cannot() -> None:
    obj = response("acme-7b-chat", prompt_tokens=1000, completion_tokens=10, total_tokens=1010)
    kwargs = kw("acme/acme-7b-chat", "openai")
    assert price(kwargs, obj) == (None, CostSource.NONE, [])
    cost, source, flags = price(kwargs, obj, price_table=TABLE)
    assert (cost, source, flags) == (1000 * D("0.000001") + 10 * D("0.000002"), CostSource.PRICE_TABLE, [])


# -- what is not a price ------------------------------------------------------------------------------


def test_negative_cost_is_discarded_and_the_chain_goes_on() -> None:
    obj = {"usage": {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}}
    cost, source, flags = price(kw("gpt-4o-mini", response_cost=-0.0000012), obj)
    assert (cost, source) == (12 * GPT_4O_MINI_IN, CostSource.COST_PER_TOKEN)
    assert flags == [RecordFlag.NEGATIVE_COST]


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 12, "completion_tokens": -5, "total_tokens": 7},  # LiteLLM prices -5 negatively
        {"prompt_tokens": 12, "completion_tokens": 10**19, "total_tokens": 10**19 + 12},  # an unsigned -1
        {"prompt_tokens": 12, "completion_tokens": "many"},
    ],
    ids=["negative", "absurd", "text"],
)
def test_a_count_that_cannot_be_believed_is_priced_as_read_not_by_litellms_figure(usage: dict[str, Any]) -> None:
    """LiteLLM's response_cost prices the block as sent; the record shows the counts as read. The
    cost must be the cost of the tokens the record shows."""
    obj = {"usage": usage}
    counts = normalize_usage(obj)
    assert RecordFlag.MALFORMED_USAGE in counts.flags
    assert (counts.prompt_tokens, counts.completion_tokens) == (12, 0)
    cost, source, _ = price(kw("gpt-4o-mini", response_cost=1_500_000_000_000.0), obj)
    assert (cost, source) == (12 * GPT_4O_MINI_IN, CostSource.COST_PER_TOKEN)


@pytest.mark.parametrize(
    "usage",
    [
        # Perplexity's reasoning sits beside its completion, not inside it.
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "completion_tokens_details": {"reasoning_tokens": 20},
        },
        {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 0},
    ],
    ids=["reasoning-beside-completion", "total-zero"],
)
def test_parts_that_disagree_with_their_total_keep_litellms_figure(usage: dict[str, Any]) -> None:
    """Flagged, but every count was read: LiteLLM's figure stands (it bills citations, searches too)."""
    obj = {"usage": usage}
    counts = normalize_usage(obj)
    assert RecordFlag.MALFORMED_USAGE in counts.flags and not counts.count_discarded
    cost, source, _ = price(kw("gpt-4o-mini", response_cost=0.0123), obj)
    assert (cost, source) == (D("0.0123"), CostSource.RESPONSE_COST)


def test_zero_from_litellm_for_an_unknown_model_is_not_a_price() -> None:
    obj = {"usage": {"prompt_tokens": 500, "completion_tokens": 20}}
    assert price(kw("acme-unknown", response_cost=0.0), obj) == (None, CostSource.NONE, [])


def test_zero_from_litellm_for_a_model_it_lists_at_zero_rates_is_free() -> None:
    entry = litellm.model_cost["codestral/codestral-latest"]
    assert (entry["input_cost_per_token"], entry["output_cost_per_token"]) == (0.0, 0.0)
    obj = {"usage": {"prompt_tokens": 500, "completion_tokens": 20}}
    assert price(kw("codestral-latest", "codestral", response_cost=0.0), obj) == (D(0), CostSource.RESPONSE_COST, [])


def test_zero_cost_for_zero_tokens_is_a_price() -> None:
    obj = {"usage": {"prompt_tokens": 0, "completion_tokens": 0}}
    assert price(kw("gpt-4o-mini", response_cost=0.0), obj) == (D(0), CostSource.RESPONSE_COST, [])


def test_unpriced_is_none_never_zero() -> None:
    obj = response("acme-unknown", prompt_tokens=5, completion_tokens=5, total_tokens=10)
    assert price(kw("acme-unknown"), obj) == (None, CostSource.NONE, [])


def test_image_generation_skips_token_rates_and_prices_per_image() -> None:
    obj = ImageResponse(
        data=[ImageObject(url="https://images.invalid/1.png"), ImageObject(url="https://images.invalid/2.png")]
    )
    kwargs = kw("acme-image", call_type="aimage_generation", optional_params={"n": 2, "size": "1024x1024"})
    assert price(kwargs, obj, call_kind=CallKind.IMAGE_GENERATION) == (None, CostSource.NONE, [])
    cost, source, _ = price(kwargs, obj, call_kind=CallKind.IMAGE_GENERATION, price_table=TABLE)
    assert (cost, source) == (2 * D("0.02"), CostSource.PRICE_TABLE)


# -- a stage that raises ------------------------------------------------------------------------------


@pytest.fixture
def broken_completion_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("cost map corrupted")

    monkeypatch.setattr(litellm, "completion_cost", boom)


@pytest.mark.usefixtures("broken_completion_cost")
def test_a_raising_stage_is_logged_once_and_the_chain_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    obj = response("gpt-4o-mini", prompt_tokens=10, completion_tokens=1, total_tokens=11)
    with caplog.at_level(logging.WARNING, logger="turnledger"):
        results = [price(kw("gpt-4o-mini"), obj) for _ in range(5)]
    assert (
        results
        == [(10 * GPT_4O_MINI_IN + 1 * GPT_4O_MINI_OUT, CostSource.COST_PER_TOKEN, [RecordFlag.PRICING_ERROR])] * 5
    )
    assert len([r for r in caplog.records if "completion_cost" in r.getMessage()]) == 1
    assert problem_counts["pricing:completion_cost:openai/gpt-4o-mini:RuntimeError"] == 5


def test_litellm_not_knowing_a_model_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    obj = response("acme-unknown", prompt_tokens=5, completion_tokens=5, total_tokens=10)
    with caplog.at_level(logging.WARNING, logger="turnledger"):
        assert price(kw("acme-unknown"), obj) == (None, CostSource.NONE, [])
    assert caplog.records == []


# -- helpers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.00021280000000000002, D("0.0002128")),
        (8.400000000000001e-06, D("0.0000084")),
        (1.5e-06, D("0.0000015")),
        (0.0, D(0)),
        ("0.000001", D("0.000001")),
        (None, None),
        (float("nan"), None),
        ("free", None),
    ],
)
def test_decimal_from_litellm(value: object, expected: Decimal | None) -> None:
    assert decimal_from_litellm(value) == expected


def test_price_counts_by_rates_alone() -> None:
    counts = TokenCounts(prompt_tokens=1000, completion_tokens=100, total_tokens=1100, cached_tokens=600)
    cost, source, _ = price_counts(counts, model="gpt-4o-mini", provider="openai")
    assert (cost, source) == (
        400 * GPT_4O_MINI_IN + 600 * GPT_4O_MINI_CACHED + 100 * GPT_4O_MINI_OUT,
        CostSource.COST_PER_TOKEN,
    )
    assert price_counts(counts, model="acme-7b", price_table=TABLE)[:2] == (
        1000 * D("0.000001") + 100 * D("0.000002"),
        CostSource.PRICE_TABLE,
    )
    assert price_counts(counts, model="nobody")[:2] == (None, CostSource.NONE)


# -- missing usage ------------------------------------------------------------------------------------


def test_missing_stream_usage_is_estimated() -> None:
    obj = ModelResponse(
        model="gpt-4o-mini",
        choices=[{"message": {"role": "assistant", "content": "Hello from the fake provider."}}],
        usage=Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0),
    )
    kwargs = kw("gpt-4o-mini", response_cost=0.0, messages=[{"role": "user", "content": "say hello"}], stream=True)
    counts = normalize_usage(obj)
    result = estimate_missing_usage(kwargs, obj, counts, model="gpt-4o-mini", provider="openai")
    assert result is not None
    estimate, cost, source, flags = result
    assert (estimate.prompt_tokens, estimate.completion_tokens) == (9, 6)
    assert (cost, source) == (9 * GPT_4O_MINI_IN + 6 * GPT_4O_MINI_OUT, CostSource.ESTIMATED)
    assert flags == [RecordFlag.USAGE_ESTIMATED]


def test_usage_present_is_not_estimated() -> None:
    obj = response("gpt-4o-mini", prompt_tokens=3, completion_tokens=1, total_tokens=4)
    assert estimate_missing_usage(kw("gpt-4o-mini"), obj, normalize_usage(obj), model="gpt-4o-mini") is None
    empty = ModelResponse(model="m", choices=[{"message": {"content": ""}}], usage=Usage())
    assert estimate_missing_usage(kw("m"), empty, normalize_usage(empty), model="m") is None


def test_estimated_usage_of_an_unknown_model_stays_unpriced() -> None:
    obj = ModelResponse(model="acme-x", choices=[{"message": {"content": "some words"}}], usage=Usage())
    result = estimate_missing_usage(
        kw("acme-x", messages=[{"role": "user", "content": "hi"}]), obj, normalize_usage(obj), model="acme-x"
    )
    assert result is not None
    estimate, cost, source, _ = result
    assert estimate.used_tokens and (cost, source) == (None, CostSource.NONE)


def test_the_redaction_placeholder_is_litellms_own() -> None:
    from litellm.constants import REDACTED_BY_LITELLM
    from litellm.litellm_core_utils.redact_messages import perform_redaction

    details: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    perform_redaction(details, None)
    assert redacted_messages(details["messages"])
    assert not redacted_messages([{"role": "user", "content": REDACTED_BY_LITELLM}, {"role": "user", "content": "x"}])
    assert not redacted_messages([{"role": "user", "content": "redacted-by-litellm!"}])


def test_an_event_litellm_redacted_counts_no_placeholder_as_input_or_output() -> None:
    # What the call was sent is not in the event, and its answer was replaced in place: unknown, not the
    # placeholder's 13 + 6 tokens.
    placeholder = [{"role": "user", "content": "redacted-by-litellm"}]
    redacted = ModelResponse(
        model="gpt-4o-mini", choices=[{"message": {"content": "redacted-by-litellm"}}], usage=Usage()
    )
    result = estimate_missing_usage(
        kw("gpt-4o-mini", messages=placeholder), redacted, normalize_usage(redacted), model="gpt-4o-mini"
    )
    assert result is not None
    estimate, cost, source, flags = result
    assert (estimate.prompt_tokens, estimate.completion_tokens, cost, source) == (0, 0, None, CostSource.NONE)
    assert {RecordFlag.USAGE_MISSING, RecordFlag.COMPLETION_NOT_SEEN} <= set(flags)
    unanswered = estimate_unanswered_call(kw("gpt-4o-mini", messages=placeholder, input=""), model="gpt-4o-mini")
    assert unanswered is not None
    estimate, cost, source, _ = unanswered
    assert (estimate.prompt_tokens, cost, source) == (0, None, CostSource.NONE)


def test_an_answer_litellm_redacted_is_not_counted_but_the_input_sent_is() -> None:
    redacted = ModelResponse(
        model="gpt-4o-mini", choices=[{"message": {"content": "redacted-by-litellm"}}], usage=Usage()
    )
    sent = [{"role": "user", "content": "say hello"}]
    result = estimate_missing_usage(
        kw("gpt-4o-mini", messages=sent), redacted, normalize_usage(redacted), model="gpt-4o-mini"
    )
    assert result is not None
    estimate, cost, source, flags = result
    assert (estimate.prompt_tokens, estimate.completion_tokens) == (9, 0)
    assert (cost, source) == (9 * GPT_4O_MINI_IN, CostSource.ESTIMATED)
    assert flags == [RecordFlag.USAGE_ESTIMATED, RecordFlag.COMPLETION_NOT_SEEN]


def test_a_redacted_tool_call_counts_its_name_not_the_placeholders() -> None:
    tool_call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "redacted-by-litellm"},
    }
    redacted = ModelResponse(
        model="gpt-4o-mini",
        choices=[{"message": {"content": "redacted-by-litellm", "tool_calls": [tool_call]}}],
        usage=Usage(),
    )
    sent = [{"role": "user", "content": "say hello"}]
    result = estimate_missing_usage(
        kw("gpt-4o-mini", messages=sent), redacted, normalize_usage(redacted), model="gpt-4o-mini"
    )
    assert result is not None
    estimate, _, _, flags = result
    assert estimate.completion_tokens == litellm.token_counter(model="gpt-4o-mini", text="get_weather")
    assert RecordFlag.COMPLETION_NOT_SEEN in flags


# -- abandoned calls ----------------------------------------------------------------------------------


def pending(
    model: str, request: dict[str, Any], table: PriceTable | None = None, call_kind: CallKind = CallKind.CHAT
) -> PendingCall:
    return PendingCall(
        call_id="call-1",
        model=model,
        provider="openai",
        call_kind=call_kind,
        stream=True,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        started_monotonic=0.0,
        request=request,
        price_table=table,
    )


def test_abandoned_call_prompt_is_estimated_and_priced() -> None:
    record = price_abandoned_call(
        pending("gpt-4o-mini", {"messages": [{"role": "user", "content": "say hello"}]}), None
    )
    assert record.status is CallStatus.ABANDONED and record.stream
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (9, 0, 9)
    assert (record.cost_usd, record.cost_source) == (9 * GPT_4O_MINI_IN, CostSource.ESTIMATED)
    assert record.usage_estimated
    assert record.flags == (RecordFlag.NO_CALLBACK, RecordFlag.USAGE_ESTIMATED, RecordFlag.COMPLETION_NOT_SEEN)


def test_abandoned_call_uses_the_callbacks_price_table() -> None:
    messages = [{"role": "user", "content": "say hello"}]
    assert price_abandoned_call(pending("acme-7b", {"messages": messages}), None).cost_usd is None
    record = price_abandoned_call(pending("acme-7b", {"messages": messages}, TABLE), None)
    assert (record.cost_usd, record.cost_source) == (9 * D("0.000001"), CostSource.ESTIMATED)


def test_an_abandoned_embedding_is_estimated_from_its_input() -> None:
    # LiteLLM hands the pre-call hook the input wrapped in chat messages: counted as such, each text
    # would carry a message's framing, and token ids could not be counted at all.
    texts = ["refund policy for damaged goods", "shipping times to Norway"]
    wrapped = [{"role": "user", "content": t} for t in texts]
    request = {"messages": wrapped, "input": texts}
    record = price_abandoned_call(pending("text-embedding-3-small", request, call_kind=CallKind.EMBEDDING), None)
    assert record.prompt_tokens == sum(litellm.token_counter(model="text-embedding-3-small", text=t) for t in texts)
    ids = {"messages": [{"role": "user", "content": [15339, 1917]}], "input": [[15339, 1917]]}
    record = price_abandoned_call(pending("text-embedding-3-small", ids, call_kind=CallKind.EMBEDDING), None)
    assert (record.prompt_tokens, record.cost_source) == (2, CostSource.ESTIMATED)


def test_abandoned_call_without_a_request_is_unpriced() -> None:
    record = price_abandoned_call(pending("gpt-4o-mini", {}), None)
    assert (record.prompt_tokens, record.cost_usd, record.cost_source) == (0, None, CostSource.NONE)
    assert RecordFlag.NO_CALLBACK in record.flags


def test_abandoned_call_whose_estimate_fails_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("no tokenizer")

    monkeypatch.setattr(litellm, "token_counter", boom)
    record = price_abandoned_call(pending("gpt-4o-mini", {"messages": [{"role": "user", "content": "x"}]}), None)
    assert record.status is CallStatus.ABANDONED and record.cost_usd is None
    assert record.flags == (RecordFlag.NO_CALLBACK, RecordFlag.PRICING_ERROR)


# -- money adds up exactly ----------------------------------------------------------------------------


def test_a_million_calls_of_one_and_a_half_micro_usd_total_exactly_one_fifty() -> None:
    turn = TurnTokenAccumulator()
    record = TokenCallRecord(call_id="c", model="m", cost_usd=decimal_from_litellm(1.5e-06))
    assert record.cost_usd == D("0.0000015") and record.cost_micros == 2  # half-even, once per row
    for _ in range(1_000_000):
        turn.add(record)
    assert len(turn) == 1_000_000
    assert turn.total_cost_usd == D("1.5")
    assert turn.total_cost_micros == 1_500_000
    assert turn.per_message_summary()["m"]["cost_usd"] == D("1.5")
    # A float sum drifts: this is what Decimal is protecting.
    assert sum([1.5e-06] * 1_000_000) != 1.5


# -- what the chain does not repeat -------------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(litellm, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(litellm, name, wrapper)
    return calls


def test_completion_cost_is_not_rerun_when_litellm_already_ran_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch, "completion_cost")
    obj = response("acme-never-seen-1", prompt_tokens=5, completion_tokens=5, total_tokens=10)
    assert price(kw("acme-never-seen-1", response_cost=None), obj)[:2] == (None, CostSource.NONE)
    assert calls == []
    assert price(kw("acme-never-seen-1"), obj)[:2] == (None, CostSource.NONE)
    assert calls == [1]


def test_a_model_litellm_cannot_price_is_asked_once_per_map_version(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch, "cost_per_token")
    counts = TokenCounts(prompt_tokens=10, completion_tokens=1, total_tokens=11)
    for _ in range(3):
        assert price_counts(counts, model="acme-never-seen-2", provider="openai")[:2] == (None, CostSource.NONE)
    assert calls == [1]
    # The map grew (register_model, a refreshed map): LiteLLM is asked again, and now it knows.
    monkeypatch.setitem(
        litellm.model_cost,
        "acme-never-seen-2",
        {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "litellm_provider": "openai", "mode": "chat"},
    )
    assert price_counts(counts, model="acme-never-seen-2", provider="openai")[:2] == (
        10 * D("0.000001") + 1 * D("0.000002"),
        CostSource.COST_PER_TOKEN,
    )
    assert calls == [1, 1]


def test_a_plain_object_with_a_usage_property_is_read() -> None:
    class Response:
        @property
        def usage(self) -> dict[str, int]:
            return {"prompt_tokens": 4, "completion_tokens": 2}

    counts = normalize_usage(Response())
    assert (counts.prompt_tokens, counts.completion_tokens, counts.total_tokens) == (4, 2, 6)


def test_price_table_falls_back_to_the_model_that_served_the_call() -> None:
    # An Azure deployment name nobody priced, answering as a model the table knows.
    expected = 100 * D("0.000001") + 10 * D("0.000002")
    exact = response("acme-7b", prompt_tokens=100, completion_tokens=10, total_tokens=110)
    assert price(kw("eastus-prod-deployment", "azure"), exact, price_table=TABLE) == (
        expected,
        CostSource.PRICE_TABLE,
        [],
    )
    # Found through a prefix of the served name: flagged, as any price the table finds that way.
    dated = response("acme-7b-2025-06", prompt_tokens=100, completion_tokens=10, total_tokens=110)
    assert price(kw("eastus-prod-deployment", "azure"), dated, price_table=TABLE) == (
        expected,
        CostSource.PRICE_TABLE,
        [RecordFlag.PRICE_PREFIX_MATCH],
    )


def test_litellms_own_not_mapped_answer_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch, "cost_per_token")
    obj = response("acme-never-seen-3", prompt_tokens=10, completion_tokens=1, total_tokens=11)
    # What LiteLLM 1.106 puts in the event when it cannot price a model (measured).
    said = {
        "response_cost_failure_debug_info": {
            "error_str": "This model isn't mapped yet. model=openai/acme-never-seen-3, custom_llm_provider=openai."
        }
    }
    kwargs = kw("acme-never-seen-3", response_cost=None, standard_logging_object=said)
    assert price(kwargs, obj)[:2] == (None, CostSource.NONE)
    assert calls == []
    cost, source, _ = price(kw("acme-7b", response_cost=None, standard_logging_object=said), obj, price_table=TABLE)
    assert (cost, source) == (10 * D("0.000001") + 1 * D("0.000002"), CostSource.PRICE_TABLE)
    assert calls == []


def test_a_litellm_cache_hit_costs_exactly_nothing() -> None:
    # LiteLLM replays the cached response's usage and says response_cost 0.0: no provider was called.
    obj = response("gpt-4o-mini", prompt_tokens=1000, completion_tokens=500, total_tokens=1500)
    kwargs = kw("gpt-4o-mini", response_cost=0.0, cache_hit=True)
    assert price(kwargs, obj) == (D(0), CostSource.CACHE_HIT, [])
    # The same event without the cache flag is a real call, priced at its rates.
    real = kw("gpt-4o-mini", response_cost=0.0)
    cost, source, _ = price(real, obj)
    assert (cost, source) == (1000 * GPT_4O_MINI_IN + 500 * GPT_4O_MINI_OUT, CostSource.COST_PER_TOKEN)


def test_a_cache_hit_without_usage_is_not_estimated() -> None:
    obj = response("gpt-4o-mini", prompt_tokens=0, completion_tokens=0, total_tokens=0)
    kwargs = kw("gpt-4o-mini", response_cost=0.0, cache_hit=True, messages=[{"role": "user", "content": "hi"}])
    assert estimate_missing_usage(kwargs, obj, normalize_usage(obj), model="gpt-4o-mini") is None


def test_a_chat_that_was_sent_messages_but_reports_no_tokens_and_no_text_is_estimated() -> None:
    obj = ModelResponse(model="gpt-4o-mini", choices=[{"message": {"role": "assistant", "content": ""}}])
    messages = [{"role": "user", "content": "say hello"}]
    result = estimate_missing_usage(
        kw("gpt-4o-mini", response_cost=0.0, messages=messages), obj, normalize_usage(obj), model="gpt-4o-mini"
    )
    assert result is not None
    estimate, cost, source, flags = result
    assert (estimate.prompt_tokens, cost, source) == (9, 9 * GPT_4O_MINI_IN, CostSource.ESTIMATED)
    assert flags == [RecordFlag.USAGE_ESTIMATED]


def test_an_estimate_that_finds_no_tokens_prices_nothing() -> None:
    # Sent input, got no usage, and nothing the tokenizer can count: unknown, not free.
    obj = {"usage": {"prompt_tokens": 0, "total_tokens": 0}}
    kwargs = kw("text-embedding-3-small", call_type="aembedding", response_cost=0.0, input=[b"raw"])
    result = estimate_missing_usage(
        kwargs, obj, normalize_usage(obj), model="text-embedding-3-small", call_kind=CallKind.EMBEDDING
    )
    assert result is not None
    _, cost, source, flags = result
    assert (cost, source) == (None, CostSource.NONE)
    assert RecordFlag.USAGE_MISSING in flags


@pytest.mark.parametrize("sent", [float("nan"), "n/a", True, float("inf")])
def test_an_inline_cost_that_cannot_be_read_is_flagged(sent: object) -> None:
    obj = response("openai/gpt-4o-mini", prompt_tokens=10, completion_tokens=1, total_tokens=11, cost=sent)
    cost, source, flags = price(kw("openai/gpt-4o-mini", "openrouter", response_cost=0.0000021), obj)
    assert (cost, source) == (D("0.0000021"), CostSource.RESPONSE_COST)
    assert flags == [RecordFlag.MALFORMED_USAGE]


@pytest.mark.parametrize(
    ("call_kind", "model", "entry"),
    [
        (CallKind.TRANSCRIPTION, "acme-whisper", {"input_cost_per_second": 0.0001, "output_cost_per_second": 0.0}),
        (CallKind.SPEECH, "acme-tts", {"input_cost_per_character": 0.000015}),
        (CallKind.RERANK, "acme-rerank", {"input_cost_per_query": 0.002, "input_cost_per_token": 0.0}),
        (
            CallKind.IMAGE_GENERATION,
            "acme-image",
            {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "output_cost_per_image": 0.04},
        ),
    ],
)
def test_zero_from_litellm_for_a_call_billed_beyond_tokens_is_a_price_only_if_every_rate_is_zero(
    call_kind: CallKind, model: str, entry: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteLLM answers 0 when it could not measure what such a call is billed by (seconds, characters,
    queries, images): unknown, not free, unless its map lists every rate of the model at zero."""
    monkeypatch.setitem(litellm.model_cost, model, entry)
    obj: dict[str, Any] = {}
    assert price(kw(model, response_cost=0.0), obj, call_kind=call_kind) == (None, CostSource.NONE, [])
    monkeypatch.setitem(litellm.model_cost, model, dict.fromkeys(entry, 0.0))
    assert price(kw(model, response_cost=0.0), obj, call_kind=call_kind) == (D(0), CostSource.RESPONSE_COST, [])


def test_a_price_table_prefix_match_is_flagged() -> None:
    obj = response("acme-7b-instruct", prompt_tokens=1000, completion_tokens=10, total_tokens=1010)
    cost, source, flags = price(kw("acme-7b-instruct", "openai"), obj, price_table=TABLE)
    assert (cost, source) == (1000 * D("0.000001") + 10 * D("0.000002"), CostSource.PRICE_TABLE)
    assert flags == [RecordFlag.PRICE_PREFIX_MATCH]
    exact = response("acme-7b", prompt_tokens=1000, completion_tokens=10, total_tokens=1010)
    assert price(kw("acme-7b", "openai"), exact, price_table=TABLE)[2] == []


@pytest.mark.parametrize(
    ("model", "flagged"),
    [
        ("my-deployment", False),  # alias -> its target's own entry
        ("my-dated-deployment", True),  # alias -> a target priced only through a prefix of its name
        ("my-deployment-eu", True),  # a prefix of the model is the alias
    ],
)
def test_a_price_table_prefix_match_through_an_alias_is_flagged(model: str, flagged: bool) -> None:
    table = PriceTable.from_dict(
        {
            "models": {"acme-7b": {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"}},
            "aliases": {"my-deployment": "acme-7b", "my-dated-deployment": "acme-7b-20260101"},
        }
    )
    obj = response(model, prompt_tokens=1000, completion_tokens=10, total_tokens=1010)
    cost, source, flags = price(kw(model, "openai"), obj, price_table=table)
    assert (cost, source) == (1000 * D("0.000001") + 10 * D("0.000002"), CostSource.PRICE_TABLE)
    assert flags == ([RecordFlag.PRICE_PREFIX_MATCH] if flagged else [])


def test_a_price_table_entry_for_the_provider_beats_the_bare_name() -> None:
    table = PriceTable.from_dict(
        {
            "models": {
                "acme-llama-large": {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000001"},
                "together_ai/acme-llama-large": {
                    "input_cost_per_token": "0.0000009",
                    "output_cost_per_token": "0.0000009",
                },
            }
        }
    )
    obj = response("acme-llama-large", prompt_tokens=1000, completion_tokens=1000, total_tokens=2000)
    assert price(kw("acme-llama-large", "together_ai"), obj, price_table=table)[:2] == (
        D("0.0018"),
        CostSource.PRICE_TABLE,
    )
    assert price(kw("acme-llama-large", "openai"), obj, price_table=table)[:2] == (
        D("0.002"),
        CostSource.PRICE_TABLE,
    )


def test_litellms_own_cost_stamped_on_a_stream_is_not_a_provider_price() -> None:
    # LiteLLM writes its computed cost into usage.cost of a streamed response that had none.
    obj = response("gpt-4o", prompt_tokens=412, completion_tokens=96, total_tokens=508)
    obj.usage.cost = 0.0019900000000000004  # type: ignore[attr-defined]
    streamed = kw("gpt-4o", stream=True, response_cost=0.0019900000000000004)
    assert price(streamed, obj) == (D("0.00199"), CostSource.RESPONSE_COST, [])
    # OpenRouter sends its cost inline, streamed or not: that one is the provider's.
    openrouter = kw("openai/gpt-4o", "openrouter", stream=True, response_cost=0.0019900000000000004)
    assert price(openrouter, obj) == (D("0.00199"), CostSource.PROVIDER, [])


def _chained(*excs: BaseException) -> BaseException:
    """The first exception, raised from the second, raised from the third..."""
    for outer, inner in itertools.pairwise(excs):
        outer.__cause__ = inner
    return excs[0]


def test_only_a_read_timeout_says_the_provider_had_the_request() -> None:
    import httpx

    from turnledger.pricing import answer_timed_out

    assert answer_timed_out(_chained(RuntimeError("Timeout"), RuntimeError("APITimeoutError"), httpx.ReadTimeout("")))
    assert not answer_timed_out(_chained(RuntimeError("Timeout"), httpx.ConnectTimeout("")))
    assert not answer_timed_out(_chained(RuntimeError("Timeout"), httpx.PoolTimeout("")))
    assert not answer_timed_out(httpx.WriteTimeout(""))
    assert not answer_timed_out(None)
    # A refusal raised while an earlier attempt's timeout was being handled (a Router's retry): the
    # first HTTP error in the chain is this call's own, and it is no timeout.
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    refused = httpx.HTTPStatusError("500", request=request, response=httpx.Response(500, request=request))
    refused.__context__ = _chained(RuntimeError("Timeout"), httpx.ReadTimeout(""))
    assert not answer_timed_out(_chained(RuntimeError("InternalServerError"), refused))
    cycle = RuntimeError("a")
    cycle.__cause__ = RuntimeError("b")
    cycle.__cause__.__cause__ = cycle
    assert not answer_timed_out(cycle)


# gpt-5's entry, copied from LiteLLM's map for a deployment LiteLLM does not know.
TIERED_TABLE = PriceTable(
    {
        "acme-gpt-5": litellm.model_cost["gpt-5"],
        "acme-7b": {"input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"},
    }
)


@pytest.mark.parametrize(
    ("model", "served", "requested", "cost", "flags"),
    [
        ("acme-gpt-5", "flex", None, 1000 * D("0.000000625") + 100 * D("0.000005"), []),
        ("acme-gpt-5", None, "priority", 1000 * D("0.0000025") + 100 * D("0.00002"), []),
        ("acme-gpt-5", "default", "flex", 1000 * D("0.00000125") + 100 * D("0.00001"), []),
        # An entry without the billed tier's rates: the standard ones, and the record says so.
        ("acme-7b", "priority", None, 1000 * D("0.000001") + 100 * D("0.000002"), [RecordFlag.SERVICE_TIER_UNPRICED]),
        ("acme-7b", None, "flex", 1000 * D("0.000001") + 100 * D("0.000002"), [RecordFlag.SERVICE_TIER_UNPRICED]),
        ("acme-7b", "default", None, 1000 * D("0.000001") + 100 * D("0.000002"), []),
    ],
)
def test_the_price_table_bills_the_service_tier_that_was_billed(
    model: str, served: str | None, requested: str | None, cost: Decimal, flags: list[RecordFlag]
) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
    obj = response(model, **usage)
    if served is not None:
        obj.service_tier = served  # type: ignore[attr-defined]
    kwargs = kw(model, optional_params={} if requested is None else {"service_tier": requested})
    assert price(kwargs, obj, price_table=TIERED_TABLE) == (cost, CostSource.PRICE_TABLE, flags)
    # The same through the model the response says served the call (an Azure deployment's name).
    kwargs["model"] = "my-deployment"
    assert price(kwargs, obj, price_table=TIERED_TABLE) == (cost, CostSource.PRICE_TABLE, flags)


def test_the_price_table_bills_what_litellm_bills_at_the_tier_gpt_5_served() -> None:
    obj = response("gpt-5", prompt_tokens=1000, completion_tokens=1000, total_tokens=2000)
    obj.service_tier = "flex"  # type: ignore[attr-defined]
    litellm_cost = to_decimal(
        litellm.completion_cost(completion_response=obj, model="gpt-5", custom_llm_provider="openai")
    )
    renamed = response("acme-gpt-5", prompt_tokens=1000, completion_tokens=1000, total_tokens=2000)
    renamed.service_tier = "flex"  # type: ignore[attr-defined]
    assert price(kw("acme-gpt-5"), renamed, price_table=TIERED_TABLE) == (litellm_cost, CostSource.PRICE_TABLE, [])
    assert litellm_cost == D("0.005625")


def test_a_failed_stream_is_billed_from_its_own_chunks_or_from_its_first_chunks_stamp() -> None:
    """LiteLLM's sync stream path gives its failure event no usage of what was delivered (1.106.12):
    what the stream object yielded is counted, or, when that cannot be read, its input alone once
    LiteLLM stamped a first chunk; a stream that yielded nothing is left to the other rules."""
    messages = [{"role": "user", "content": "hello there, how are you"}]
    prompt = litellm.token_counter(model="gpt-4o-mini", messages=messages)
    delivered = litellm.token_counter(model="gpt-4o-mini", text="alpha beta")

    class Stream:
        def __init__(self, *texts: str) -> None:
            self.chunks = [{"choices": [{"delta": {"content": text}}]} for text in texts]

    started = datetime(2026, 1, 1, tzinfo=UTC)
    base = {"stream": True, "messages": messages, "model": "gpt-4o-mini"}
    read = delivered_before_failure(
        {**base, "original_response": Stream("alpha", " beta"), "completion_start_time": started}, model="gpt-4o-mini"
    )
    unreadable = delivered_before_failure(
        {**base, "original_response": "<stream>", "completion_start_time": started}, model="gpt-4o-mini"
    )
    assert read is not None and unreadable is not None
    for (counts, cost, source, flags), completion in ((read, delivered), (unreadable, 0)):
        assert (counts.prompt_tokens, counts.completion_tokens) == (prompt, completion)
        assert (cost, source) == (prompt * GPT_4O_MINI_IN + completion * GPT_4O_MINI_OUT, CostSource.ESTIMATED)
        assert {RecordFlag.USAGE_ESTIMATED, RecordFlag.COMPLETION_NOT_SEEN} <= set(flags)
    # Nothing yielded, no first chunk stamped, or not a stream: not this rule's to bill.
    assert delivered_before_failure({**base, "original_response": Stream()}, model="gpt-4o-mini") is None
    assert delivered_before_failure({**base, "original_response": None}, model="gpt-4o-mini") is None
    assert (
        delivered_before_failure(
            {**base, "stream": False, "original_response": Stream("alpha"), "completion_start_time": started},
            model="gpt-4o-mini",
        )
        is None
    )
