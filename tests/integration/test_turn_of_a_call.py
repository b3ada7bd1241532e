"""A call's end event finds the turn it started in, however long after and whatever else ran meanwhile.

The stream here is opened in one turn and read in a later one (a handler keeping a stream across
requests, a background reader): by the time its end event fires, the turn current in that context is
another user's. Through the fake provider, LiteLLM's real logging code.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import litellm
import pytest
from litellm.exceptions import InternalServerError
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import Router

import turnledger
from turnledger import CallStatus
from turnledger.accumulator import call_bindings
from turnledger.callback import _TURN_OF_CALL, _started_outside_turns
from turnledger.fake_provider import FakeProvider

from .test_call_kinds import responses_without_mcp  # noqa: F401 (a fixture)

MESSAGES: Any = [{"role": "user", "content": "say hello"}]
USAGE = {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}

pytestmark = pytest.mark.usefixtures("tracker")


async def _open_stream(provider_kwargs: dict[str, Any]) -> Any:
    return await litellm.acompletion(
        model="openai/gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        num_retries=0,
        **provider_kwargs,
    )


async def _wait_for(tracker: turnledger.TokenTrackingCallback, *keys: str, total: int = 1) -> None:
    """The stream's end event comes about 1 ms after it is read to its end, from LiteLLM's worker."""
    for _ in range(500):
        if sum(tracker.stats[k] for k in keys) >= total:
            return
        await asyncio.sleep(0.01)


async def _other_calls(n: int, provider_kwargs: dict[str, Any]) -> None:
    """``n`` calls in a turn of their own that closes: they start after the stream, so they evict first."""
    async with turnledger.scoped_turn(user_id="someone-else"):
        for _ in range(n):
            await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)


async def test_a_stream_read_after_its_binding_was_evicted_is_late_in_its_own_turn_not_billed_to_the_current_one(
    fake_provider: FakeProvider,
    provider_kwargs: dict[str, Any],
    tracker: turnledger.TokenTrackingCallback,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 3 bindings instead of 100,000: 4 newer calls evict the stream's, as 100,000 would in production
    # (1,700 calls/s for a minute while one long stream is read).
    monkeypatch.setattr(call_bindings, "max_entries", 3)
    fake_provider.script("gpt-4o-mini", content="one two", usage=USAGE)
    async with turnledger.scoped_turn(user_id="alice", settle_timeout=0) as alice:
        stream = await _open_stream(provider_kwargs)
    await _other_calls(4, provider_kwargs)
    tracker.stats.clear()

    async with turnledger.scoped_turn(user_id="bob") as bob:
        async for _chunk in stream:
            pass
        await _wait_for(tracker, "late", "captured", "unscoped")
    assert bob.calls == [] and bob.total_cost_usd == 0
    # Alice's turn had closed: her stream is hers, late (subscribers hear of it), its totals unchanged.
    [late] = alice.late_calls
    assert late.status is CallStatus.SUCCESS and late.late
    assert (late.prompt_tokens, late.completion_tokens) == (40, 4)
    assert [c.call_id for c in alice.calls] == [late.call_id]
    assert tracker.stats["late"] == 1 and tracker.stats["captured"] == 0


async def test_a_stream_opened_outside_any_turn_stays_outside_after_its_id_was_forgotten(
    fake_provider: FakeProvider,
    provider_kwargs: dict[str, Any],
    tracker: turnledger.TokenTrackingCallback,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same forgetting, for the memory of calls started outside any turn: a call in flight is
    # forgotten an hour after it started (here at once), at the next call started outside any turn.
    fake_provider.script("gpt-4o-mini", content="one two", usage=USAGE)
    stream = await _open_stream(provider_kwargs)
    monkeypatch.setattr(_started_outside_turns, "max_age_s", 0.0)
    await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
    await _wait_for(tracker, "unscoped")
    tracker.stats.clear()

    async with turnledger.scoped_turn(user_id="bob") as bob:
        async for _chunk in stream:
            pass
        await _wait_for(tracker, "late", "captured", "unscoped")
    assert bob.calls == []
    assert tracker.stats["unscoped"] == 1 and tracker.stats["captured"] == 0


def test_a_sync_stream_read_after_its_binding_was_evicted_is_late_in_its_own_turn(
    fake_provider: FakeProvider,
    provider_kwargs: dict[str, Any],
    tracker: turnledger.TokenTrackingCallback,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(call_bindings, "max_entries", 3)
    fake_provider.script("gpt-4o-mini", content="one two", usage=USAGE)
    with turnledger.scoped_turn(user_id="alice", settle_timeout=0) as alice:
        stream = litellm.completion(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            num_retries=0,
            **provider_kwargs,
        )
    with turnledger.scoped_turn(user_id="someone-else"):
        for _ in range(4):
            litellm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
    tracker.stats.clear()
    done = threading.Event()
    alice.on_call(lambda record, turn: done.set())

    with turnledger.scoped_turn(user_id="bob") as bob:
        for _chunk in stream:
            pass
        # A sync stream logs from a thread of its own, with no context: only its binding can place it.
        assert done.wait(5)
    assert bob.calls == []
    [late] = alice.late_calls
    assert (late.prompt_tokens, late.completion_tokens) == (40, 4)


class _TurnSpy(CustomLogger):
    """Installed after the tracker: which turn each end event's own details name, hook by hook."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, Any]] = []
        self.call_ids: list[str] = []

    def _saw(self, hook: str, kwargs: Any) -> None:
        mark = kwargs.get(_TURN_OF_CALL)
        self.seen.append((hook, str(kwargs.get("call_type")), mark() if mark is not None else None))
        self.call_ids.append(str(kwargs.get("litellm_call_id")))

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._saw("success", kwargs)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._saw("failure", kwargs)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._saw("async_success", kwargs)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._saw("async_failure", kwargs)


async def _spy_caught_up(turn: turnledger.TurnTokenAccumulator, spy: _TurnSpy) -> None:
    """Wait (up to 10 s) until the spy saw the end of every call the turn recorded. LiteLLM calls the
    loggers one after the other, the spy after the tracker: the scope can exit, its calls recorded,
    before the spy's hook of the last call has run (a full run saw ``aspeech`` missing)."""
    for _ in range(1000):
        if set(spy.call_ids) >= {record.call_id for record in turn.calls}:
            return
        await asyncio.sleep(0.01)


def _spy_caught_up_sync(turn: turnledger.TurnTokenAccumulator, spy: _TurnSpy) -> None:
    """:func:`_spy_caught_up` for sync calls, whose loggers run in LiteLLM's logging thread."""
    for _ in range(1000):
        if set(spy.call_ids) >= {record.call_id for record in turn.calls}:
            return
        time.sleep(0.01)


def _one_record_per_call_the_spy_saw(turn: turnledger.TurnTokenAccumulator, spy: _TurnSpy) -> None:
    # By call id, not by event count: in a full run one call reached the spy twice (11 end events for
    # 10 calls, not reproduced alone), and the tracker keeps one record per call by design.
    recorded = Counter(record.call_id for record in turn.calls)
    assert recorded == Counter(set(spy.call_ids)), (recorded, spy.call_ids, spy.seen)


@pytest.fixture
def spy(tracker: turnledger.TokenTrackingCallback) -> Iterator[_TurnSpy]:
    watcher = _TurnSpy()
    litellm.callbacks.append(watcher)
    yield watcher
    for name in (
        "callbacks",
        "success_callback",
        "failure_callback",
        "_async_success_callback",
        "_async_failure_callback",
        "input_callback",
    ):
        current = getattr(litellm, name)
        current[:] = [c for c in current if c is not watcher]


async def test_every_end_event_of_every_call_kind_and_router_attempt_names_the_turn_it_started_in(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], spy: _TurnSpy
) -> None:
    fake_provider.script("broken", status=500)
    fake_provider.script("gpt-4o-mini", usage={"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20})
    router = Router(
        model_list=[
            {"model_name": "primary", "litellm_params": {"model": "openai/broken", **provider_kwargs}},
            {"model_name": "backup", "litellm_params": {"model": "openai/gpt-4o-mini", **provider_kwargs}},
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=1,
        retry_after=0,
    )
    async with turnledger.scoped_turn(user_id="alice") as alice:
        await router.acompletion(model="primary", messages=MESSAGES)
        stream = await router.acompletion(model="backup", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            pass
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        async for _chunk in await _open_stream(provider_kwargs):
            pass
        await litellm.aembedding(model="openai/text-embedding-3-small", input=["a"], **provider_kwargs)
        await litellm.aimage_generation(model="openai/dall-e-3", prompt="a red square", **provider_kwargs)
        await litellm.atext_completion(model="openai/gpt-3.5-turbo-instruct", prompt="hello", **provider_kwargs)
        with pytest.raises(InternalServerError):
            await litellm.acompletion(model="openai/broken", messages=MESSAGES, num_retries=0, **provider_kwargs)
    await _spy_caught_up(alice, spy)
    assert alice.late_calls == []
    # Router: the primary's two attempts failed, then the fallback answered.
    hooks = Counter((hook, call_type) for hook, call_type, _turn in spy.seen)
    assert hooks[("async_failure", "acompletion")] >= 2
    assert {call_type for _hook, call_type, _turn in spy.seen} >= {
        "acompletion",
        "aembedding",
        "aimage_generation",
        "atext_completion",
    }
    assert [turn for _hook, _call_type, turn in spy.seen] == [alice] * len(spy.seen)
    _one_record_per_call_the_spy_saw(alice, spy)


def test_every_end_event_of_every_sync_call_kind_names_the_turn_it_started_in(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], spy: _TurnSpy
) -> None:
    fake_provider.script("broken", status=500)
    router = Router(
        model_list=[
            {"model_name": "primary", "litellm_params": {"model": "openai/broken", **provider_kwargs}},
            {"model_name": "backup", "litellm_params": {"model": "openai/gpt-4o-mini", **provider_kwargs}},
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=1,
        retry_after=0,
    )
    with turnledger.scoped_turn(user_id="alice") as alice:
        router.completion(model="primary", messages=MESSAGES)
        litellm.completion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        for _chunk in litellm.completion(
            model="openai/gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **provider_kwargs,
        ):
            pass
        litellm.embedding(model="openai/text-embedding-3-small", input=["a"], **provider_kwargs)
        litellm.image_generation(model="openai/dall-e-3", prompt="a red square", **provider_kwargs)
        with pytest.raises(InternalServerError):
            litellm.completion(model="openai/broken", messages=MESSAGES, num_retries=0, **provider_kwargs)
    _spy_caught_up_sync(alice, spy)
    assert alice.late_calls == []
    assert {call_type for _hook, call_type, _turn in spy.seen} >= {"completion", "embedding", "image_generation"}
    assert {hook for hook, _call_type, _turn in spy.seen} == {"success", "failure"}
    assert [turn for _hook, _call_type, turn in spy.seen] == [alice] * len(spy.seen)
    _one_record_per_call_the_spy_saw(alice, spy)


@pytest.mark.usefixtures("responses_without_mcp")
async def test_every_end_event_of_the_other_call_kinds_names_the_turn_it_started_in(
    fake_provider: FakeProvider, provider_kwargs: dict[str, Any], spy: _TurnSpy
) -> None:
    async with turnledger.scoped_turn(user_id="alice") as alice:
        await litellm.aresponses(model="openai/gpt-4o-mini", input="hello", **provider_kwargs)
        responses_stream: Any = await litellm.aresponses(
            model="openai/gpt-4o-mini", input="hello", stream=True, **provider_kwargs
        )
        async for _event in responses_stream:
            pass
        await litellm.anthropic_messages(
            model="anthropic/claude-3-5-haiku-20241022",
            messages=MESSAGES,
            max_tokens=100,
            api_base=fake_provider.anthropic_base_url,
            api_key="sk-ant-fake",
        )
        await litellm.amoderation(model="openai/omni-moderation-latest", input="hello", **provider_kwargs)
        await litellm.aspeech(model="openai/tts-1", input="read this", voice="alloy", **provider_kwargs)
    await _spy_caught_up(alice, spy)
    assert alice.late_calls == []
    assert {call_type for _hook, call_type, _turn in spy.seen} >= {
        "aresponses",
        "anthropic_messages",
        "amoderation",
        "aspeech",
    }
    assert [turn for _hook, _call_type, turn in spy.seen] == [alice] * len(spy.seen)
    _one_record_per_call_the_spy_saw(alice, spy)
    assert len(alice.calls) == 5


class _PicklingLogger(CustomLogger):
    """Another application logger, which ships each call's details elsewhere: pickled (to a process, a
    queue) and deep-copied."""

    def __init__(self) -> None:
        super().__init__()
        self.shipped: list[tuple[str, Any]] = []
        self.copies_keep_the_turn: list[bool] = []

    def _ship(self, hook: str, kwargs: Any) -> None:
        try:
            self.shipped.append((hook, pickle.loads(pickle.dumps(kwargs)).get(_TURN_OF_CALL, "missing")))
        except Exception as exc:
            self.shipped.append((hook, exc))
        self.copies_keep_the_turn.append(copy.deepcopy(kwargs)[_TURN_OF_CALL] is kwargs[_TURN_OF_CALL])

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        self._ship("pre_call", kwargs)

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._ship("success", kwargs)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._ship("async_success", kwargs)


@pytest.fixture
def pickling_logger(tracker: turnledger.TokenTrackingCallback) -> Iterator[_PicklingLogger]:
    logger = _PicklingLogger()
    litellm.callbacks.append(logger)
    yield logger
    for name in ("callbacks", "success_callback", "_async_success_callback", "input_callback"):
        current = getattr(litellm, name)
        current[:] = [c for c in current if c is not logger]


async def test_another_logger_pickles_and_copies_the_details_of_a_call_made_in_a_turn(
    provider_kwargs: dict[str, Any], tracker: turnledger.TokenTrackingCallback, pickling_logger: _PicklingLogger
) -> None:
    # The turn's mark pickles as no turn (a turn lives in one process): a plain weak reference could
    # not be pickled, and such a logger lost every event of every call made in a turn.
    async with turnledger.scoped_turn(user_id="alice") as alice:
        await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        await asyncio.to_thread(litellm.completion, model="openai/gpt-4o-mini", messages=MESSAGES, **provider_kwargs)
        await _wait_for(tracker, "captured", total=2)
    for _ in range(500):
        if len(pickling_logger.shipped) >= 4:
            break
        await asyncio.sleep(0.01)
    assert sorted(hook for hook, _mark in pickling_logger.shipped) == [
        "async_success",
        "pre_call",
        "pre_call",
        "success",
    ]
    assert [mark for _hook, mark in pickling_logger.shipped] == [None] * 4
    assert pickling_logger.copies_keep_the_turn == [True] * 4
    assert len(alice.calls) == 2 and alice.late_calls == []
