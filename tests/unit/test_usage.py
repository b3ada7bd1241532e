"""Usage normalization: each provider family's convention, realistic payloads, malformed counts."""

from __future__ import annotations

from typing import Any

import litellm
import pytest
from litellm.types.utils import EmbeddingResponse, ImageResponse, ModelResponse, Usage

from turnledger.records import RecordFlag
from turnledger.usage import (
    MAX_TOKEN_COUNT,
    MODEL_CLASSES,
    TokenCounts,
    estimate_counts,
    is_model,
    normalize_usage,
    read_count,
    response_text,
    usage_block,
    usage_missing,
)


def counts_of(c: TokenCounts) -> dict[str, int]:
    return {
        "prompt": c.prompt_tokens,
        "completion": c.completion_tokens,
        "total": c.total_tokens,
        "cached": c.cached_tokens,
        "write": c.cache_creation_tokens,
        "write_1h": c.cache_creation_1h_tokens,
        "reasoning": c.reasoning_tokens,
        "image_in": c.image_input_tokens,
        "image_out": c.image_output_tokens,
        "audio_in": c.audio_input_tokens,
        "audio_out": c.audio_output_tokens,
    }


def expect(**values: int) -> dict[str, int]:
    base = dict.fromkeys(("prompt", "completion", "total", "cached", "write", "write_1h", "reasoning"), 0)
    base.update(image_in=0, image_out=0, audio_in=0, audio_out=0)
    base.update(values)
    return base


# Realistic usage blocks, as each provider (or LiteLLM, for its own objects) sends them.
PAYLOADS: list[tuple[str, Any, dict[str, int]]] = [
    (
        "openai-chat-cache-reasoning",
        {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0},
        },
        expect(prompt=2006, completion=300, total=2306, cached=1920, reasoning=192),
    ),
    (
        "openai-responses-api",
        {
            "input_tokens": 1500,
            "input_tokens_details": {"cached_tokens": 1000},
            "output_tokens": 80,
            "output_tokens_details": {"reasoning_tokens": 64},
            "total_tokens": 1580,
        },
        expect(prompt=1500, completion=80, total=1580, cached=1000, reasoning=64),
    ),
    (
        "azure-chat",
        {
            "prompt_tokens": 43,
            "completion_tokens": 7,
            "total_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        expect(prompt=43, completion=7, total=50),
    ),
    (
        "anthropic-raw-keeps-cache-apart",
        {
            "input_tokens": 12,
            "output_tokens": 300,
            "cache_read_input_tokens": 2048,
            "cache_creation_input_tokens": 1024,
            "cache_creation": {"ephemeral_5m_input_tokens": 512, "ephemeral_1h_input_tokens": 512},
        },
        expect(prompt=12 + 2048 + 1024, completion=300, total=3384, cached=2048, write=1024, write_1h=512),
    ),
    (
        # Claude on Vertex AI answers in Anthropic's own usage shape.
        "vertex-anthropic-raw",
        {"input_tokens": 40, "output_tokens": 9, "cache_read_input_tokens": 160, "cache_creation_input_tokens": 0},
        expect(prompt=200, completion=9, total=209, cached=160),
    ),
    (
        "anthropic-raw-1h-breakdown-only",
        {"input_tokens": 10, "output_tokens": 5, "cache_creation": {"ephemeral_1h_input_tokens": 100}},
        expect(prompt=110, completion=5, total=115, write=100, write_1h=100),
    ),
    (
        "bedrock-converse-raw",
        {
            "inputTokens": 100,
            "outputTokens": 50,
            "totalTokens": 1450,
            "cacheReadInputTokens": 1000,
            "cacheWriteInputTokens": 300,
        },
        expect(prompt=1400, completion=50, total=1450, cached=1000, write=300),
    ),
    (
        "gemini-raw-thoughts-outside-candidates",
        {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 400,
            "candidatesTokenCount": 200,
            "thoughtsTokenCount": 300,
            "totalTokenCount": 1500,
        },
        expect(prompt=1000, completion=500, total=1500, cached=400, reasoning=300),
    ),
    (
        "deepseek-cache-hit",
        {
            "prompt_tokens": 1000,
            "completion_tokens": 200,
            "total_tokens": 1200,
            "prompt_cache_hit_tokens": 600,
            "prompt_cache_miss_tokens": 400,
        },
        expect(prompt=1000, completion=200, total=1200, cached=600),
    ),
    (
        "openrouter-with-cost",
        {
            "prompt_tokens": 194,
            "completion_tokens": 2,
            "total_tokens": 196,
            "cost": 0.000095,
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        expect(prompt=194, completion=2, total=196),
    ),
    (
        "openai-audio-in-and-out",
        {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "total_tokens": 1500,
            "prompt_tokens_details": {"audio_tokens": 800, "text_tokens": 200, "cached_tokens": 0},
            "completion_tokens_details": {"audio_tokens": 400, "text_tokens": 100, "reasoning_tokens": 0},
        },
        expect(prompt=1000, completion=500, total=1500, audio_in=800, audio_out=400),
    ),
    (
        "gpt-image-1-usage",
        {
            "input_tokens": 50,
            "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
            "output_tokens": 4160,
            "output_tokens_details": {"image_tokens": 4160},
            "total_tokens": 4210,
        },
        expect(prompt=50, completion=4160, total=4210, image_in=40, image_out=4160),
    ),
]


@pytest.mark.parametrize(("payload", "expected"), [(p, e) for _, p, e in PAYLOADS], ids=[i for i, _, _ in PAYLOADS])
def test_provider_conventions(payload: dict[str, Any], expected: dict[str, int]) -> None:
    counts = normalize_usage({"usage": payload})
    assert counts_of(counts) == expected
    assert counts.present is True
    assert counts.flags == []
    assert counts.fresh_prompt_tokens == expected["prompt"] - expected["cached"] - expected["write"]


def test_gemini_usage_metadata_at_top_level_of_a_raw_response() -> None:
    raw = {"candidates": [], "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "totalTokenCount": 10}}
    assert counts_of(normalize_usage(raw)) == expect(prompt=7, completion=3, total=10)


def test_litellm_anthropic_usage_object_is_already_folded() -> None:
    # What LiteLLM 1.106 hands the callback for the raw Anthropic block above (measured).
    usage = Usage(
        prompt_tokens=1400,
        completion_tokens=50,
        total_tokens=1450,
        prompt_tokens_details={
            "cached_tokens": 1000,
            "cache_creation_tokens": 300,
            "cache_creation_token_details": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
        },
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=300,
    )
    response = ModelResponse(model="claude-sonnet-4-5-20250929", usage=usage)
    counts = normalize_usage(response)
    assert counts_of(counts) == expect(prompt=1400, completion=50, total=1450, cached=1000, write=300, write_1h=100)
    assert counts.fresh_prompt_tokens == 100 and counts.cache_creation_5m_tokens == 200
    assert counts.flags == []


def test_litellm_openai_usage_object() -> None:
    usage = Usage(
        prompt_tokens=1000,
        completion_tokens=200,
        total_tokens=1200,
        prompt_tokens_details={"cached_tokens": 400},
        completion_tokens_details={"reasoning_tokens": 50},
    )
    counts = normalize_usage(ModelResponse(usage=usage))
    assert counts_of(counts) == expect(prompt=1000, completion=200, total=1200, cached=400, reasoning=50)


def test_embedding_response_object() -> None:
    response = EmbeddingResponse(model="text-embedding-3-small", usage=Usage(prompt_tokens=8, total_tokens=8))
    assert counts_of(normalize_usage(response)) == expect(prompt=8, total=8)


def test_image_response_object_reads_input_tokens_beside_a_zero_prompt() -> None:
    response = ImageResponse(data=[])
    response.usage = {  # type: ignore[assignment]
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "input_tokens": 30,
        "output_tokens": 1056,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 30},
    }
    counts = normalize_usage(response)
    assert (counts.prompt_tokens, counts.completion_tokens) == (30, 1056)
    assert RecordFlag.MALFORMED_USAGE in counts.flags  # total 0 does not add up


def test_no_usage_block_at_all() -> None:
    shapes: tuple[Any, ...] = (None, {}, {"choices": []}, "text", 42)
    for obj in shapes:
        counts = normalize_usage(obj)
        assert counts.present is False and not counts.used_tokens and counts.flags == []


def test_usage_block_that_is_not_a_mapping_is_ignored() -> None:
    assert normalize_usage({"usage": "12 tokens"}).present is False


def test_a_bare_usage_block_is_read() -> None:
    assert usage_block({"prompt_tokens": 3}) == {"prompt_tokens": 3}
    assert normalize_usage({"prompt_tokens": 3, "completion_tokens": 4}).total_tokens == 7


@pytest.mark.parametrize(
    ("usage", "prompt", "completion", "total"),
    [
        ({"prompt_tokens": "12", "completion_tokens": 3, "total_tokens": 15}, 12, 3, 15),
        ({"prompt_tokens": 12, "completion_tokens": -5, "total_tokens": 7}, 12, 0, 12),
        ({"prompt_tokens": None, "completion_tokens": 4, "total_tokens": 4}, 0, 4, 4),
        ({"prompt_tokens": True, "completion_tokens": 4}, 0, 4, 4),
        ({"prompt_tokens": 10.5, "completion_tokens": 4}, 10, 4, 14),
        ({"prompt_tokens": float("nan"), "completion_tokens": 4}, 0, 4, 4),
        ({"prompt_tokens": float("inf"), "completion_tokens": 4}, 0, 4, 4),
        ({"prompt_tokens": "lots", "completion_tokens": 4}, 0, 4, 4),
        ({"prompt_tokens": "-3", "completion_tokens": 4}, 0, 4, 4),
        ({"prompt_tokens": [1], "completion_tokens": 4}, 0, 4, 4),
        ({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 9}, 10, 4, 14),
        ({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 20}, 10, 4, 20),
    ],
)
def test_malformed_counts_are_read_as_far_as_possible_and_flagged(
    usage: dict[str, Any], prompt: int, completion: int, total: int
) -> None:
    counts = normalize_usage({"usage": usage})
    assert (counts.prompt_tokens, counts.completion_tokens, counts.total_tokens) == (prompt, completion, total)
    assert counts.flags == [RecordFlag.MALFORMED_USAGE]
    assert min(counts_of(counts).values()) >= 0


def test_parts_exceeding_the_whole_raise_the_whole_and_are_flagged() -> None:
    # 1500 cached of a 1000-token prompt: the tokens are kept (prompt raised), counted once, flagged.
    counts = normalize_usage(
        {"usage": {"prompt_tokens": 1000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 1500}}}
    )
    assert (counts.prompt_tokens, counts.cached_tokens, counts.fresh_prompt_tokens) == (1500, 1500, 0)
    assert counts.total_tokens == 1510
    assert counts.flags == [RecordFlag.MALFORMED_USAGE]

    counts = normalize_usage(
        {"usage": {"prompt_tokens": 5, "completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 30}}}
    )
    assert (counts.completion_tokens, counts.reasoning_tokens) == (30, 30)
    assert counts.flags == [RecordFlag.MALFORMED_USAGE]

    counts = normalize_usage(
        {
            "usage": {
                "input_tokens": 5,
                "output_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_1h_input_tokens": 40},
            }
        }
    )
    assert (counts.cache_creation_tokens, counts.cache_creation_1h_tokens) == (40, 40)
    assert counts.flags == [RecordFlag.MALFORMED_USAGE]


def test_audio_parts_exceeding_the_whole_are_flagged_and_counted_once() -> None:
    counts = normalize_usage(
        {
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 10,
                "prompt_tokens_details": {"image_tokens": 60, "audio_tokens": 70},
                "completion_tokens_details": {"reasoning_tokens": 5, "audio_tokens": 20},
            }
        }
    )
    assert (counts.prompt_tokens, counts.image_input_tokens, counts.audio_input_tokens) == (100, 60, 40)
    assert (counts.completion_tokens, counts.reasoning_tokens, counts.audio_output_tokens) == (25, 5, 20)
    assert counts.flags == [RecordFlag.MALFORMED_USAGE]


def test_cache_write_breakdown_without_a_total_is_summed() -> None:
    usage = Usage(
        prompt_tokens=400,
        completion_tokens=1,
        total_tokens=401,
        prompt_tokens_details={
            "cache_creation_token_details": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}
        },
    )
    counts = normalize_usage(ModelResponse(usage=usage))
    assert (counts.cache_creation_tokens, counts.cache_creation_1h_tokens, counts.cache_creation_5m_tokens) == (
        300,
        200,
        100,
    )
    assert counts.fresh_prompt_tokens == 100 and counts.flags == []


def test_response_text_and_missing_usage() -> None:
    response = ModelResponse(
        choices=[
            {
                "message": {
                    "role": "assistant",
                    "content": "hi",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
                    ],
                }
            }
        ],
        usage=Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0),
    )
    assert response_text(response) == 'hilookup{"q": 1}'
    counts = normalize_usage(response)
    assert usage_missing(counts, response) is True
    assert usage_missing(normalize_usage({"usage": {"prompt_tokens": 3}}), response) is False
    assert usage_missing(TokenCounts(), ModelResponse(choices=[{"message": {"content": ""}}])) is False
    assert response_text({"choices": [{"text": "legacy completion"}]}) == "legacy completion"
    assert response_text({"choices": "nonsense"}) == "" and response_text(None) == ""


def test_estimate_counts_uses_litellm_token_counter() -> None:
    counts = estimate_counts(
        "gpt-4o-mini",
        messages=[{"role": "user", "content": "say hello"}],
        completion_text="Hello from the fake provider.",
    )
    # gpt-4o-mini's tokenizer: 9 tokens for the framed message, 6 for the text.
    assert (counts.prompt_tokens, counts.completion_tokens, counts.total_tokens) == (9, 6, 15)
    assert counts.estimated and counts.flags == [RecordFlag.USAGE_ESTIMATED]
    embedded = estimate_counts("text-embedding-3-small", input_texts=["hello world", "", 3])
    assert embedded.prompt_tokens == 2 and embedded.completion_tokens == 0
    assert estimate_counts("text-embedding-3-small", input_texts="hello world").prompt_tokens == 2
    assert estimate_counts("gpt-4o-mini").total_tokens == 0
    # Token ids sent as they are: one array, or one per input.
    assert estimate_counts("text-embedding-3-small", input_texts=[15339, 1917]).prompt_tokens == 2
    assert estimate_counts("text-embedding-3-small", input_texts=[[15339, 1917], [15339]]).prompt_tokens == 3


def test_an_estimate_counts_tool_definitions_and_survives_unreadable_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [{"role": "user", "content": "say hello"}]
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    with_tools = estimate_counts("gpt-4o-mini", messages=messages, tools=[tool])
    assert with_tools.prompt_tokens == litellm.token_counter(model="gpt-4o-mini", messages=messages, tools=[tool])
    assert with_tools.prompt_tokens > estimate_counts("gpt-4o-mini", messages=messages).prompt_tokens == 9

    real_counter = litellm.token_counter

    def refuses_tools(**kwargs: Any) -> int:
        if kwargs.get("tools"):
            raise ValueError("unreadable tool")
        return int(real_counter(**kwargs))

    monkeypatch.setattr(litellm, "token_counter", refuses_tools)
    # A tool the tokenizer cannot read: the messages are still counted.
    assert estimate_counts("gpt-4o-mini", messages=messages, tools=[tool]).prompt_tokens == 9


def test_estimating_an_image_message_never_fetches_the_image() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                # An unroutable address: a fetch would hang or fail; the default size is used instead.
                {"type": "image_url", "image_url": {"url": "http://192.0.2.1/cat.png"}},
            ],
        }
    ]
    counts = estimate_counts("gpt-4o-mini", messages=messages)
    text_only = estimate_counts("gpt-4o-mini", messages=[{"role": "user", "content": "what is this"}])
    # The text plus the token count LiteLLM assumes for an image it does not fetch (litellm 1.106).
    assert (text_only.prompt_tokens, counts.prompt_tokens) == (10, 260)


def test_the_audio_and_image_parts_of_cache_reads_are_read() -> None:
    usage: dict[str, Any] = {
        "prompt_tokens": 1000,
        "completion_tokens": 10,
        "prompt_tokens_details": {
            "cached_tokens": 500,
            "audio_tokens": 300,
            "image_tokens": 200,
            "cached_tokens_details": {"audio_tokens": 100, "image_tokens": 50, "text_tokens": 350},
        },
    }
    counts = normalize_usage({"usage": usage})
    assert (counts.cached_audio_tokens, counts.cached_image_tokens, counts.flags) == (100, 50, [])
    # Parts of the cache reads beyond the cache reads are malformed: kept within them, and flagged.
    usage["prompt_tokens_details"]["cached_tokens_details"] = {"audio_tokens": 400, "image_tokens": 300}
    counts = normalize_usage({"usage": usage})
    assert (counts.cached_audio_tokens, counts.cached_image_tokens) == (400, 100)
    assert counts.flags == [RecordFlag.MALFORMED_USAGE]


@pytest.mark.parametrize(
    ("value", "read", "discarded"),
    [
        (0, 0, False),
        (MAX_TOKEN_COUNT, MAX_TOKEN_COUNT, False),
        (MAX_TOKEN_COUNT + 1, 0, True),
        (-1, 0, True),
        (True, 0, True),
    ],
)
def test_an_int_count_is_read_by_its_bounds_a_bool_never(value: int, read: int, discarded: bool) -> None:
    counts = TokenCounts()
    assert read_count(counts, value) == read
    assert counts.count_discarded is discarded
    assert counts.flags == ([RecordFlag.MALFORMED_USAGE] if discarded else [])


def test_is_model_answers_as_isinstance_and_remembers_only_model_classes() -> None:
    from pydantic import BaseModel

    class Made(BaseModel):
        n: int = 0

    assert is_model(Made()) and Made in MODEL_CLASSES
    assert is_model(Made())  # read from the classes seen
    assert not is_model({"n": 0}) and dict not in MODEL_CLASSES
    assert not is_model(None) and not is_model(Made)  # a model class is not a model
    # Bounded: past the bound a new model class is still answered, not remembered.
    for i in range(300):
        cls = type(f"Made{i}", (BaseModel,), {"__annotations__": {"n": int}, "n": 0})
        assert is_model(cls())
    assert len(MODEL_CLASSES) <= 256
    MODEL_CLASSES.clear()  # a cache: LiteLLM's classes are remembered again as they come
