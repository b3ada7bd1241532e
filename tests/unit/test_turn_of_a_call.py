"""An end event lands in the turn its call started in, or in none: never in the turn current where it
fires, whatever process-wide memory was forgotten meanwhile (callback.py ``_turn_of_call``)."""

from __future__ import annotations

import copy
import gc
import pickle
import uuid
import weakref
from datetime import datetime
from typing import Any

import pytest

import turnledger
from tests.unit.stream_events import stream_event_kwargs, stream_response
from turnledger import CallStatus, TokenCallRecord, TurnTokenAccumulator
from turnledger.accumulator import call_bindings
from turnledger.callback import _TURN_OF_CALL


def _start(cb: turnledger.TokenTrackingCallback, kwargs: dict[str, Any]) -> None:
    cb.log_pre_api_call("gpt-4o-mini", [{"role": "user", "content": "hi"}], kwargs)


def _end(
    cb: turnledger.TokenTrackingCallback,
    kwargs: dict[str, Any],
    started: datetime | None = None,
    ended: datetime | None = None,
) -> None:
    ended = ended or datetime.now()
    cb.log_success_event(kwargs, stream_response(), started or ended, ended)


def test_a_call_whose_binding_was_evicted_lands_late_in_its_own_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(call_bindings, "max_entries", 3)
    cb = turnledger.TokenTrackingCallback(name="evicted")
    stream = stream_event_kwargs()
    with turnledger.scoped_turn(user_id="alice", settle_timeout=0) as alice:
        _start(cb, stream)
    with turnledger.scoped_turn(user_id="someone-else"):
        for _ in range(4):
            other = stream_event_kwargs()
            _start(cb, other)
            _end(cb, other)
    assert call_bindings.lookup(stream["litellm_call_id"]) is None  # forgotten
    cb.stats.clear()

    with turnledger.scoped_turn(user_id="bob") as bob:
        _end(cb, stream)
    assert bob.calls == []
    [late] = alice.late_calls
    assert late.call_id == stream["litellm_call_id"] and late.status is CallStatus.SUCCESS
    assert dict(cb.stats) == {"late": 1}


def test_a_call_whose_turn_was_garbage_collected_is_recorded_outside_any_turn_flagged_late() -> None:
    cb = turnledger.TokenTrackingCallback(name="orphan")
    stream = stream_event_kwargs()
    with turnledger.scoped_turn(user_id="alice", settle_timeout=0) as alice:
        _start(cb, stream)
    # Closed, stored and dropped: nothing holds Alice's turn any more.
    gone = weakref.ref(alice)
    del alice
    gc.collect()
    assert gone() is None
    heard: list[tuple[TokenCallRecord, TurnTokenAccumulator | None]] = []
    unsubscribe = turnledger.subscribe(lambda record, turn: heard.append((record, turn)))
    try:
        with turnledger.scoped_turn(user_id="bob") as bob:
            _end(cb, stream)
    finally:
        unsubscribe()
    assert bob.calls == []
    [(record, turn)] = heard
    assert turn is None and record.call_id == stream["litellm_call_id"] and record.late
    assert (record.prompt_tokens, record.completion_tokens) == (10, 5)
    assert cb.stats["unscoped"] == 1 and cb.stats["captured"] == 0


def test_a_call_started_outside_any_turn_stays_outside_once_its_id_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from turnledger import callback as callback_module

    cb = turnledger.TokenTrackingCallback(name="outside")
    stream = stream_event_kwargs()
    _start(cb, stream)
    # Forgotten as a call in flight for over an hour would be, at the next call started outside any turn.
    monkeypatch.setattr(callback_module._started_outside_turns, "max_age_s", 0.0)
    _start(cb, stream_event_kwargs())
    with turnledger.scoped_turn(user_id="bob") as bob:
        _end(cb, stream)
    assert bob.calls == []
    assert cb.stats["unscoped"] == 1


def test_a_call_no_pre_call_hook_saw_is_the_call_of_the_turn_its_event_comes_in() -> None:
    # LiteLLM fires no pre-call hook for a cache hit: only the context can tell its turn.
    cb = turnledger.TokenTrackingCallback(name="cache-hit")
    with turnledger.scoped_turn(user_id="bob") as bob:
        kwargs = stream_event_kwargs()
        _end(cb, kwargs, started=datetime.now())
    assert [c.call_id for c in bob.calls] == [kwargs["litellm_call_id"]]


def test_the_first_start_of_a_call_keeps_its_turn() -> None:
    # LiteLLM's own retries run the pre-call hook again with the same details; two instances see each start.
    first, second = turnledger.TokenTrackingCallback(name="first"), turnledger.TokenTrackingCallback(name="second")
    kwargs = stream_event_kwargs()
    with turnledger.scoped_turn(user_id="alice", settle_timeout=0) as alice:
        _start(first, kwargs)
        _start(second, kwargs)
    _start(first, kwargs)  # a retry outside the turn: still Alice's call
    with turnledger.scoped_turn(user_id="bob") as bob:
        ended = datetime.now()  # every instance gets the same event
        _end(first, kwargs, ended=ended)
        _end(second, kwargs, ended=ended)
    assert bob.calls == []
    assert [c.call_id for c in alice.late_calls] == [kwargs["litellm_call_id"]]


def test_details_another_logger_copied_or_pickled_keep_their_turn_or_name_none() -> None:
    cb = turnledger.TokenTrackingCallback(name="copies")
    details = stream_event_kwargs()
    with turnledger.scoped_turn(user_id="alice") as alice:
        _start(cb, details)
        # Copied (a logger that deep-copies what it is handed): the same turn.
        _end(cb, copy.deepcopy(details))
    assert [c.call_id for c in alice.calls] == [details["litellm_call_id"]]
    # Pickled: a turn lives in one process, so the copy names none, never the turn current here.
    shipped = pickle.loads(pickle.dumps(details))
    assert shipped[_TURN_OF_CALL] is None
    with turnledger.scoped_turn(user_id="bob") as bob:
        _end(cb, {**shipped, "litellm_call_id": uuid.uuid4().hex})
    assert bob.calls == []
    assert cb.stats["captured"] == 1 and cb.stats["unscoped"] == 1
