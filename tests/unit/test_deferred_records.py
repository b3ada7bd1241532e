"""End events read into records later, in batches (callback.py ``_EndEvent``, accumulator.py
``add_deferred``): nothing lost, nothing doubled, arrival order kept, memory bounded, bad events
flagged when read."""

from __future__ import annotations

import gc
import threading
import weakref
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import litellm
import pytest

import turnledger
from turnledger import CallStatus, RecordFlag, TokenCallRecord, TurnTokenAccumulator
from turnledger.accumulator import MAX_DEFERRED_RECORDS, call_bindings
from turnledger.records import CallKind

_T0 = datetime(2026, 11, 25, 12, 0, 0)


def event(call_id: str, prompt: int = 10, completion: int = 5) -> tuple[dict[str, Any], litellm.ModelResponse]:
    kwargs: dict[str, Any] = {
        "litellm_call_id": call_id,
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "acompletion",
        "response_cost": 0.000015,
    }
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return kwargs, litellm.ModelResponse(model="gpt-4o-mini", usage=usage)


def deliver(cb: turnledger.TokenTrackingCallback, call_id: str, end: datetime | None = None, prompt: int = 10) -> Any:
    kwargs, response = event(call_id, prompt=prompt)
    cb.log_success_event(kwargs, response, _T0, end or _T0 + timedelta(seconds=1))
    return response


def test_deferred_and_immediate_records_keep_the_order_their_events_arrived_in() -> None:
    cb = turnledger.TokenTrackingCallback(name="order")
    heard: list[str] = []
    with turnledger.scoped_turn() as turn:
        deliver(cb, "c1")
        deliver(cb, "c2")
        # A subscriber hears of each record as it lands: with one, events are read at once.
        unsubscribe = turn.on_call(lambda record, _turn: heard.append(record.call_id))
        deliver(cb, "c3")
        unsubscribe()
        deliver(cb, "c4")
    assert [r.call_id for r in turn.calls] == ["c1", "c2", "c3", "c4"]
    assert heard == ["c3"]
    assert turn.total_tokens == 4 * 15
    assert cb.stats["captured"] == 4


def test_a_turn_holds_at_most_max_deferred_events() -> None:
    cb = turnledger.TokenTrackingCallback(name="bounded")
    with turnledger.scoped_turn() as turn:
        held = [weakref.ref(deliver(cb, f"c{i}")) for i in range(MAX_DEFERRED_RECORDS - 1)]
        gc.collect()
        assert all(ref() is not None for ref in held), "fewer than the maximum: still unread"
        held.append(weakref.ref(deliver(cb, "last-of-batch")))
        gc.collect()
        # The batch was read when it filled up: LiteLLM's responses are no longer held by the turn.
        assert all(ref() is None for ref in held)
        assert len(turn.calls) == MAX_DEFERRED_RECORDS


def test_reading_a_total_reads_the_deferred_events_first() -> None:
    cb = turnledger.TokenTrackingCallback(name="totals")
    with turnledger.scoped_turn() as turn:
        deliver(cb, "c1", prompt=7)
        assert turn.total_prompt_tokens == 7
        assert len(turn) == 1
        deliver(cb, "c2", prompt=11)
        assert turn.total_cost_usd == Decimal("0.000030")
        assert [r.prompt_tokens for r in turn] == [7, 11]


def test_an_event_that_cannot_be_read_is_flagged_when_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    cb = turnledger.TokenTrackingCallback(name="unreadable")

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("usage parser bug")

    monkeypatch.setattr("turnledger.callback.normalize_usage", explode)
    with turnledger.scoped_turn() as turn:
        deliver(cb, "bad")
        assert cb.stats["captured"] == 1
    [record] = turn.calls
    assert record.call_id == "bad" and RecordFlag.MALFORMED_EVENT in record.flags
    assert record.cost_usd is None  # unpriced, never free
    assert cb.stats["errors"] == 1


def test_a_failure_is_read_at_once() -> None:
    cb = turnledger.TokenTrackingCallback(name="failure")
    kwargs, _ = event("failed")
    kwargs["exception"] = TimeoutError("provider timed out")
    with turnledger.scoped_turn() as turn:
        cb.log_failure_event(kwargs, None, _T0, _T0 + timedelta(seconds=1))
        # LiteLLM may retry with the same call details: what the failure said must be read now.
        kwargs["exception"] = None
        [record] = turn.calls
    assert (record.status, record.error_type) == (CallStatus.FAILURE, "TimeoutError")


def test_two_instances_defer_one_event_once() -> None:
    first, second = turnledger.TokenTrackingCallback(name="a"), turnledger.TokenTrackingCallback(name="b")
    kwargs, response = event("shared")
    end = _T0 + timedelta(seconds=1)
    with turnledger.scoped_turn() as turn:
        first.log_success_event(kwargs, response, _T0, end)
        second.log_success_event(kwargs, response, _T0, end)
    assert [r.call_id for r in turn.calls] == ["shared"]
    assert (first.stats["captured"], second.stats["duplicate"]) == (1, 1)


def test_an_event_after_the_turn_closed_is_read_at_once_as_late() -> None:
    cb = turnledger.TokenTrackingCallback(name="late")
    turn = TurnTokenAccumulator()
    turn.close()
    kwargs, response = event("late-one")
    # The call was bound to this turn when it started: its event finds the turn after it closed.
    call_bindings.bind("late-one", turn)
    cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(seconds=1))
    assert turn.calls == []
    [late] = turn.late_calls
    assert late.call_id == "late-one" and RecordFlag.LATE in late.flags
    assert cb.stats["late"] == 1


def test_events_from_many_threads_while_others_read_are_each_kept_once() -> None:
    cb = turnledger.TokenTrackingCallback(name="threads")
    threads_n, per_thread = 6, 300
    turn = TurnTokenAccumulator()
    stop = threading.Event()
    read_totals: list[int] = []

    def produce(t: int) -> None:
        for i in range(per_thread):
            kwargs, response = event(f"t{t}-{i:04d}", prompt=1, completion=0)
            # A thread has no copy of the caller's context: the event finds its turn by the binding
            # the pre-call hook made.
            call_bindings.bind(kwargs["litellm_call_id"], turn)
            cb.log_success_event(kwargs, response, _T0, _T0 + timedelta(microseconds=i))

    def read() -> None:
        while not stop.is_set():
            read_totals.append(turn.total_prompt_tokens)

    reader = threading.Thread(target=read)
    reader.start()
    producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    stop.set()
    reader.join()
    turn.close()
    ids = [r.call_id for r in turn.calls]
    assert len(ids) == len(set(ids)) == threads_n * per_thread
    assert turn.total_prompt_tokens == threads_n * per_thread
    # Each producer's events arrived in order, so its records are in that order.
    for t in range(threads_n):
        mine = [i for i in ids if i.startswith(f"t{t}-")]
        assert mine == sorted(mine)
    assert read_totals == sorted(read_totals), "a total never goes backwards"


def test_a_started_call_that_never_reports_is_read_from_what_litellm_passed() -> None:
    cb = turnledger.TokenTrackingCallback(name="started")
    started = datetime(2026, 11, 25, 9, 30, 0, tzinfo=UTC)
    kwargs: dict[str, Any] = {
        "litellm_call_id": "never-ends",
        "model": "gpt-4o-mini",
        "litellm_params": {"custom_llm_provider": "openai"},
        "call_type": "aembedding",
        "stream": False,
        "start_time": started,
        "input": ["some text"],
    }
    with turnledger.scoped_turn(settle_timeout=0) as turn:
        cb.log_pre_api_call("gpt-4o-mini", None, kwargs)
        assert turn.pending_calls == 1
    [record] = turn.calls
    assert isinstance(record, TokenCallRecord)
    assert (record.call_id, record.model, record.provider) == ("never-ends", "gpt-4o-mini", "openai")
    assert (record.call_kind, record.status, record.started_at) == (CallKind.EMBEDDING, CallStatus.ABANDONED, started)
    assert RecordFlag.NO_CALLBACK in record.flags
    assert record.prompt_tokens > 0, "estimated from the embedding input LiteLLM passed"
