"""The success path's in-place readings (callgrind-driven) give what the functions they stand in for give.

build_record reads the usual event without calling price_call, _utc, _ms_between, response_request_id,
and normalize_usage reads the usual chat usage block without its readers: each case here is read both
ways and compared, the usual shapes and the ones next to them that must take the long way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import litellm
import pytest
from litellm.types.utils import CompletionTokensDetailsWrapper, PromptTokensDetailsWrapper
from pydantic import BaseModel, ConfigDict

import turnledger.callback as callback_module
import turnledger.usage as usage_module
from turnledger.callback import TokenTrackingCallback, _ms_between, _utc
from turnledger.fake_provider import FakeProvider
from turnledger.pricing import price_call
from turnledger.records import CallStatus, RecordFlag
from turnledger.request_ids import response_request_id
from turnledger.usage import MAX_TOKEN_COUNT, USUAL_COUNT_NAMES, TokenCounts, normalize_usage


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


# -- normalize_usage's chat fast path, details included ------------------------------------------------

_MISSING = object()
"""A name left out of a usage block or details object."""

_USUAL_COUNTS = (_MISSING, None, 0, 0, 3, 40)
_COUNTS = (*_USUAL_COUNTS, 700, 1200, -1, True, False, 2.0, 2.5, "4", 10**10, MAX_TOKEN_COUNT, float("nan"))
"""Values a count may have: usual ones and every kind the general readers flag or discard."""

_PROMPT_DETAIL_NAMES = ("cached_tokens", "cache_creation_tokens", "cache_write_tokens", "image_tokens", "audio_tokens")
_COMPLETION_DETAIL_NAMES = ("reasoning_tokens", "image_tokens", "audio_tokens")
_IGNORED_DETAIL_NAMES = ("text_tokens", "video_tokens", "accepted_prediction_tokens", "rejected_prediction_tokens")


class _Details:
    """A details object of no kind the fast path knows (read through fields_of's ``__dict__``)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class _OtherModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    cached_tokens: Any = None
    reasoning_tokens: Any = None


def _general_counts(usage: Mapping[str, Any]) -> TokenCounts:
    """What the general readers give for a usage block's fields (a read-only mapping is not a dict)."""
    return normalize_usage({"usage": MappingProxyType(dict(usage))})


def _usage_fields(block: Any) -> dict[str, Any]:
    """The fields normalize_usage reads from a LiteLLM Usage (fields_of's reading of it)."""
    extra = block.__pydantic_extra__
    return {**block.__dict__, **extra} if extra else dict(block.__dict__)


def _details_of(kind: str, wrapper: type[BaseModel], fields: dict[str, Any]) -> Any:
    if kind == "dict":
        return fields
    if kind == "wrapper":
        # A LiteLLM details model, its values forced in as they are (pydantic would refuse or coerce some).
        model = wrapper()
        for name, value in fields.items():
            if name in type(model).model_fields:
                model.__dict__[name] = value
            else:
                model.__pydantic_extra__[name] = value  # type: ignore[index]
        return model
    if kind == "other_model":
        return _OtherModel(**fields)
    if kind == "plain":
        return _Details(**fields)
    if kind == "mapping":
        return MappingProxyType(fields)
    return fields.get("cached_tokens", 0)  # not a details object at all


def _random_usage(rng: random.Random) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    usual = rng.random() < 0.5  # half the blocks of usual counts, where the fast path has its work
    values: tuple[object, ...]
    for name, values in (
        ("prompt_tokens", (1200, 1200, 1200, 40, 0, 3, -1, "12", None, True, 10**10, _MISSING)),
        ("completion_tokens", (300, 300, 300, 40, 0, 3, -1, 2.0, None, _MISSING)),
        ("total_tokens", (_MISSING, None, "sum", "sum", "sum", 0, 1, 5000, -1, "30", 2.5, True, 10**10)),
    ):
        if usual:
            values = values[:4]
        value = rng.choice(values)
        if value is not _MISSING:
            usage[name] = value
    if usage.get("total_tokens") == "sum":
        parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
        usage["total_tokens"] = sum(p for p in parts if type(p) is int)
    for key, wrapper, names in (
        ("prompt_tokens_details", PromptTokensDetailsWrapper, _PROMPT_DETAIL_NAMES),
        ("completion_tokens_details", CompletionTokensDetailsWrapper, _COMPLETION_DETAIL_NAMES),
    ):
        kinds = ("absent", "none", "dict", "wrapper", "wrapper", "wrapper", "other_model", "plain", "mapping", "int")
        kind = rng.choice(kinds[:6] if usual else kinds)
        if kind == "absent":
            continue
        if kind == "none":
            usage[key] = None
            continue
        fields: dict[str, Any] = {}
        for name in names + _IGNORED_DETAIL_NAMES:
            if rng.random() < 0.6:
                value = rng.choice(_USUAL_COUNTS if usual else _COUNTS)
                if value is not _MISSING:
                    fields[name] = value
        if rng.random() < (0.02 if usual else 0.1):
            fields["extra_name"] = 5
        if key == "prompt_tokens_details" and rng.random() < 0.1:
            nested = rng.choice(("cached_tokens_details", "cache_creation_token_details"))
            fields[nested] = rng.choice(({}, {"audio_tokens": 2}, {"ephemeral_1h_input_tokens": 3}, None, 0))
        usage[key] = _details_of(kind, wrapper, fields)
    if rng.random() < 0.05:
        usage[rng.choice(("cost", "cache_read_input_tokens", "input_tokens", "reasoning_tokens"))] = 7
    return usage


_NAMED_USAGES: dict[str, dict[str, Any]] = {
    "details None": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
    "all zero": {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0},
    },
    "cached": {"prompt_tokens": 1200, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 1024}},
    "cached is the prompt": {
        "prompt_tokens": 1200,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 1200},
    },
    "cached past the prompt": {
        "prompt_tokens": 1200,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 1201},
    },
    "cache writes": {
        "prompt_tokens": 900,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cache_write_tokens": 300},
    },
    "cache writes by both names": {
        "prompt_tokens": 900,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cache_creation_tokens": 200, "cache_write_tokens": "garbage"},
    },
    "reasoning": {
        "prompt_tokens": 10,
        "completion_tokens": 300,
        "completion_tokens_details": {"reasoning_tokens": 128},
    },
    "reasoning past the completion": {
        "prompt_tokens": 10,
        "completion_tokens": 300,
        "total_tokens": 310,
        "completion_tokens_details": {"reasoning_tokens": 301},
    },
    "audio": {
        "prompt_tokens": 500,
        "completion_tokens": 400,
        "prompt_tokens_details": {"audio_tokens": 450, "cached_tokens": 100},
        "completion_tokens_details": {"audio_tokens": 350, "reasoning_tokens": 50},
    },
    "audio and image past the prompt": {
        "prompt_tokens": 500,
        "completion_tokens": 1,
        "prompt_tokens_details": {"audio_tokens": 300, "image_tokens": 300},
    },
    "image": {
        "prompt_tokens": 500,
        "completion_tokens": 4000,
        "prompt_tokens_details": {"image_tokens": 400, "text_tokens": 100},
        "completion_tokens_details": {"image_tokens": 4000},
    },
    "negative": {"prompt_tokens": 10, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": -1}},
    "past MAX": {
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "completion_tokens_details": {"reasoning_tokens": 10**10},
    },
    "a string": {"prompt_tokens": 10, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": "4"}},
    "a bool": {"prompt_tokens": 10, "completion_tokens": 20, "completion_tokens_details": {"audio_tokens": True}},
    "a float": {"prompt_tokens": 10, "completion_tokens": 20, "prompt_tokens_details": {"image_tokens": 2.5}},
    "extra names": {
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 4, "something_new": 9},
        "completion_tokens_details": {"reasoning_tokens": 4, "something_new": 9},
    },
    "total below": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 25, "prompt_tokens_details": {}},
    "total above": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 99, "completion_tokens_details": {}},
    "total a string": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": "30", "prompt_tokens_details": {}},
    "cached audio": {
        "prompt_tokens": 100,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 50, "cached_tokens_details": {"audio_tokens": 60}},
    },
    "cache lifetimes": {
        "prompt_tokens": 100,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cache_creation_token_details": {"ephemeral_1h_input_tokens": 30}},
    },
}


def _all_usages() -> list[tuple[str, dict[str, Any]]]:
    cases: list[tuple[str, dict[str, Any]]] = []
    for name, usage in _NAMED_USAGES.items():
        for kind in ("dict", "wrapper", "other_model", "plain", "mapping"):
            converted = dict(usage)
            for key, wrapper in (
                ("prompt_tokens_details", PromptTokensDetailsWrapper),
                ("completion_tokens_details", CompletionTokensDetailsWrapper),
            ):
                if isinstance(usage.get(key), dict):
                    converted[key] = _details_of(kind, wrapper, dict(usage[key]))
            cases.append((f"{name} ({kind})", converted))
    # Each count of the details alone unusual, in an otherwise usual block.
    for key, wrapper, names in (
        ("prompt_tokens_details", PromptTokensDetailsWrapper, _PROMPT_DETAIL_NAMES),
        ("completion_tokens_details", CompletionTokensDetailsWrapper, _COMPLETION_DETAIL_NAMES),
    ):
        for name in names:
            for value in _COUNTS[1:]:
                usage = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500, key: {name: value}}
                cases.append((f"{key}.{name}={value!r} (dict)", usage))
                details = _details_of("wrapper", wrapper, {name: value})
                cases.append((f"{key}.{name}={value!r} (wrapper)", {**usage, key: details}))
    rng = random.Random(20261127)
    cases.extend((f"random {i}", _random_usage(rng)) for i in range(3000))
    return cases


def test_every_chat_usage_block_reads_as_the_general_readers_read_it() -> None:
    taken = 0
    for name, usage in _all_usages():
        expected = _general_counts(usage)
        assert normalize_usage({"usage": usage}) == expected, name
        assert normalize_usage({"usage": usage}).flags == expected.flags, name
        # And as LiteLLM hands it: a Usage model in a ModelResponse, its details as they are.
        response = litellm.ModelResponse(model="gpt-4o-mini")
        block = litellm.Usage()
        block.__dict__.clear()
        block.__dict__.update(usage)
        response.usage = block
        assert normalize_usage(response) == _general_counts(_usage_fields(block)), name
        taken += _fast_path_taken(usage)
    # The fast path is not vacuous: it read a good part of the shapes itself.
    assert taken > 600


def _fast_path_taken(usage: dict[str, Any]) -> bool:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(usage_module, "_read_openai_or_anthropic", _not_expected)
        try:
            normalize_usage({"usage": usage})
        except _GeneralPathError:
            return False
    return True


class _GeneralPathError(Exception):
    pass


def _not_expected(*args: object) -> None:
    raise _GeneralPathError


_OPENAI_WIRE_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 128,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


@pytest.mark.parametrize(
    "wire_usage",
    [
        _OPENAI_WIRE_USAGE,
        {**_OPENAI_WIRE_USAGE, "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}},
        {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
    ],
)
async def test_usual_answers_of_an_openai_format_provider_take_the_fast_path(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], wire_usage: dict[str, Any]
) -> None:
    fake_provider.script("gpt-4o-mini", usage=wire_usage)
    response = await litellm.acompletion(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], **provider_kwargs
    )
    normalize_usage(response)  # the details classes are seen (fields_of) on the first event
    expected = _general_counts(_usage_fields(response.usage))
    assert expected.prompt_tokens == wire_usage["prompt_tokens"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(usage_module, "_read_openai_or_anthropic", _not_expected)
        patch.setattr(usage_module, "_check_invariants", _not_expected)
        counts = normalize_usage(response)
    assert counts == expected
    assert counts.flags == [] and counts.flags is not expected.flags


def test_counts_read_in_place_are_whole_token_counts() -> None:
    """The fast path builds its TokenCounts without __init__: every field is there, as __init__ sets it."""
    counts = normalize_usage({"usage": dict(_NAMED_USAGES["details None"])})
    assert _fast_path_taken(dict(_NAMED_USAGES["details None"]))
    built = TokenCounts(prompt_tokens=10, completion_tokens=20, total_tokens=30, present=True)
    assert {f.name: getattr(counts, f.name) for f in fields(TokenCounts)} == asdict(built)
    assert counts == built and repr(counts) == repr(built) and replace(counts) == built
    counts.flag(RecordFlag.MALFORMED_USAGE)
    assert built.flags == [] and normalize_usage({"usage": dict(_NAMED_USAGES["details None"])}).flags == []


def _record_both_ways(
    response: Any, kwargs: dict[str, Any], status: CallStatus, patch: pytest.MonkeyPatch
) -> tuple[Any, Any, bool]:
    """build_record's record, and the one it makes when its usage is always read as a TokenCounts
    (normalize_usage, which makes one from the very tuple a usual block gives): and whether the first
    read a tuple."""
    callback = TokenTrackingCallback(name="usual-counts")
    read: list[object] = []

    def recorded(response_obj: Any) -> Any:
        counts = usage_module.usage_counts(response_obj)
        read.append(counts)
        return counts

    patch.setattr(callback_module, "usage_counts", recorded)
    record = callback.build_record(dict(kwargs), response, _NAIVE, _NAIVE + timedelta(seconds=1), status, None)
    patch.setattr(callback_module, "usage_counts", normalize_usage)
    long_way = callback.build_record(dict(kwargs), response, _NAIVE, _NAIVE + timedelta(seconds=1), status, None)
    return record, long_way, type(read[0]) is tuple


def test_a_record_of_counts_read_as_a_tuple_is_the_one_read_from_their_token_counts() -> None:
    # build_record stores a usual block's counts from usage_counts' tuple, and makes their TokenCounts
    # only for an estimate or price_call: its record is the one made from the TokenCounts every time.
    # The counts compared are every one the tuple holds: TokenCounts' leading fields, in its order.
    assert len(USUAL_COUNT_NAMES) == 11  # UsualCounts' length
    assert tuple(f.name for f in fields(TokenCounts))[:11] == USUAL_COUNT_NAMES
    taken = 0
    shapes = [(name, usage) for name, usage in _all_usages() if not name.startswith("random")]
    shapes += [(name, usage) for name, usage in _all_usages() if name.startswith("random")][:600]
    shapes += [(f"zero {i}", {"prompt_tokens": 0, "completion_tokens": i, "total_tokens": i}) for i in (0, 1)]
    kinds: list[tuple[dict[str, Any], CallStatus]] = [
        ({"response_cost": 0.0000135}, CallStatus.SUCCESS),
        ({"response_cost": None}, CallStatus.SUCCESS),
        ({"response_cost": 0.0000135, "cache_hit": True}, CallStatus.SUCCESS),
        ({"response_cost": 0.0000135, "exception": RuntimeError("refused")}, CallStatus.FAILURE),
    ]
    with pytest.MonkeyPatch.context() as patch:
        for index, (name, usage) in enumerate(shapes):
            extra, status = kinds[index % len(kinds)]
            kwargs: dict[str, Any] = {
                "litellm_call_id": f"c{index}",
                "model": "gpt-4o-mini",
                "custom_llm_provider": "openai",
                "call_type": "acompletion",
                "messages": [{"role": "user", "content": "hello there"}],
                **extra,
            }
            response = litellm.ModelResponse(model="gpt-4o-mini")
            block = litellm.Usage()
            block.__dict__.clear()
            block.__dict__.update(usage)
            response.usage = block
            for answer in (response, {"usage": usage}):
                record, long_way, tuple_read = _record_both_ways(answer, kwargs, status, patch)
                assert record == long_way, name
                assert (str(record.cost_usd), record.flags) == (str(long_way.cost_usd), long_way.flags), name
                if not record.usage_estimated:
                    counts = normalize_usage(answer)
                    assert {name: getattr(record, name) for name in USUAL_COUNT_NAMES} == {
                        name: getattr(counts, name) for name in USUAL_COUNT_NAMES
                    }, name
                taken += tuple_read
    # Not vacuous: many records were made from a tuple.
    assert taken > 600
