"""Calls started outside any turn stay outside though they end inside one (callback.py
``_started_outside_turns``), for every installed instance and across LiteLLM's retries, and their
ids are not kept once they are over."""

from __future__ import annotations

import sys
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

import turnledger
from tests.unit.stream_events import stream_event_kwargs, stream_response
from turnledger import TokenCallRecord, TurnTokenAccumulator
from turnledger import callback as callback_module

_T0 = datetime(2026, 11, 25, 12, 0, 0)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """A fresh memory of calls started outside turns, on a clock the test moves."""
    fake = _Clock()
    monkeypatch.setattr(
        callback_module, "_started_outside_turns", callback_module._CallsStartedOutsideTurns(clock=fake)
    )
    return fake


def _instances() -> tuple[turnledger.TokenTrackingCallback, ...]:
    return turnledger.TokenTrackingCallback(name="first"), turnledger.TokenTrackingCallback(name="second")


def _start(callbacks: tuple[turnledger.TokenTrackingCallback, ...], kwargs: dict[str, Any]) -> None:
    # LiteLLM runs every registered logger's pre-call hook, one after another.
    for cb in callbacks:
        cb.log_pre_api_call("gpt-4o-mini", None, kwargs)


def _succeed(callbacks: tuple[turnledger.TokenTrackingCallback, ...], kwargs: dict[str, Any], response: Any) -> None:
    for cb in callbacks:
        cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(seconds=1))


def _fail(callbacks: tuple[turnledger.TokenTrackingCallback, ...], kwargs: dict[str, Any]) -> None:
    kwargs["exception"] = TimeoutError("provider timed out")
    for cb in callbacks:
        cb.log_failure_event(kwargs, None, _T0, _T0 + timedelta(milliseconds=500))
    del kwargs["exception"]


def test_two_instances_leave_a_stream_opened_outside_any_turn_outside_though_it_ends_in_one() -> None:
    callbacks = _instances()
    kwargs, response = stream_event_kwargs(f"outside-{uuid.uuid4()}"), stream_response()
    heard: list[tuple[TokenCallRecord, TurnTokenAccumulator | None]] = []
    unsubscribe = turnledger.subscribe(lambda record, turn: heard.append((record, turn)))
    try:
        _start(callbacks, kwargs)
        with turnledger.scoped_turn() as turn:
            # The stream is read inside the turn: its end event comes in the turn's context, to each
            # instance in turn. The first must not forget the call before the second has seen it.
            _succeed(callbacks, kwargs, response)
    finally:
        unsubscribe()
    assert turn.calls == [] and turn.late_calls == []
    assert [(cb.stats["unscoped"], cb.stats["captured"]) for cb in callbacks] == [(1, 0), (1, 0)]
    [(record, heard_turn)] = heard
    assert (record.call_id, heard_turn) == (kwargs["litellm_call_id"], None)


def test_the_instances_after_the_first_leave_it_outside_within_the_grace_period(clock: _Clock) -> None:
    first, second = _instances()
    kwargs, response = stream_event_kwargs("slow-logger-between"), stream_response()
    _start((first, second), kwargs)
    with turnledger.scoped_turn() as turn:
        _succeed((first,), kwargs, response)
        clock.now += callback_module._started_outside_turns.grace_s - 1  # a slow logger in between
        _succeed((second,), kwargs, response)
    assert turn.calls == []
    assert (first.stats["unscoped"], second.stats["unscoped"]) == (1, 1)


def test_ids_of_calls_started_outside_any_turn_are_forgotten_after_they_end(clock: _Clock) -> None:
    outside = callback_module._started_outside_turns
    callbacks = _instances()
    response = stream_response()
    for i in range(1000):
        clock.now += 0.01
        kwargs = stream_event_kwargs(f"done-{i}")
        _start(callbacks, kwargs)
        _succeed(callbacks, kwargs, response)
    assert len(outside) == 1000, "all ended within the grace period"
    clock.now += outside.grace_s
    last = stream_event_kwargs("last")
    _start(callbacks, last)
    _succeed(callbacks, last, response)
    assert len(outside) == 1, "only the call that just ended is still remembered"
    assert [cb.stats["unscoped"] for cb in callbacks] == [1001, 1001]


def test_ids_of_calls_that_never_end_are_forgotten_after_the_longest_call() -> None:
    fake = _Clock()
    outside = callback_module._CallsStartedOutsideTurns(max_age_s=600.0, clock=fake)
    # A stream broken off or a task cancelled mid-call: LiteLLM fires no end event at all.
    for i in range(1000):
        outside.started(f"broken-off-{i}")
    fake.now += 600.0
    outside.started("new")
    assert len(outside) == 1
    assert outside.ended("new") and not outside.ended("broken-off-0")


def test_at_most_max_entries_ids_are_kept_the_oldest_ended_forgotten_first() -> None:
    fake = _Clock()
    outside = callback_module._CallsStartedOutsideTurns(max_entries=3, clock=fake)
    outside.started("ended-early")
    outside.ended("ended-early")
    for call_id in ("a", "b", "c"):
        outside.started(call_id)
    assert len(outside) == 3
    assert not outside.ended("ended-early")
    assert all(outside.ended(call_id) for call_id in ("a", "b", "c"))


def test_a_failed_call_retried_with_its_call_id_stays_outside_any_turn(clock: _Clock) -> None:
    """LiteLLM's ``num_retries`` retries with the same ``litellm_call_id`` and runs the pre-call hook
    again (measured on 1.106): the async path logs the failure first, then starts the retry."""
    callbacks = _instances()
    kwargs, response = stream_event_kwargs("retried"), stream_response()
    _start(callbacks, kwargs)
    _fail(callbacks, kwargs)
    clock.now += 1
    _start(callbacks, kwargs)  # the retry
    clock.now += 10 * callback_module._started_outside_turns.grace_s  # a long stream, read later
    _start(callbacks, stream_event_kwargs("meanwhile"))  # forgets what is due
    with turnledger.scoped_turn() as turn:
        _succeed(callbacks, kwargs, response)
    assert turn.calls == []
    assert [cb.stats["unscoped"] for cb in callbacks] == [2, 2]


def test_calls_starting_and_ending_on_many_threads_each_stay_outside_until_forgotten() -> None:
    fake = _Clock()
    outside = callback_module._CallsStartedOutsideTurns(clock=fake)
    misses: list[str] = []

    def run() -> None:
        # Every thread starts and ends the same ids: ends race with ends and with starts (retries).
        for i in range(3000):
            call_id = f"call-{i}"
            outside.started(call_id)
            outside.started(call_id)  # the second instance's pre-call hook
            for _instance in range(2):
                if not outside.ended(call_id):
                    misses.append(call_id)

    threads = [threading.Thread(target=run) for _ in range(4)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch_interval)
    assert misses == []
    assert len(outside) == 3000
    fake.now += outside.grace_s
    outside.started("next")
    assert len(outside) == 1
