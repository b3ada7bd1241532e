"""The pre-call hook takes begin_call's usual case in place (a first start whose id is not pending in
the open turn): over many sequences of starts, ends and closes, every turn must end up as the hook
leaves it when every start goes through begin_call, the long way."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

import pytest

import turnledger
from turnledger import TokenCallRecord, TurnTokenAccumulator
from turnledger.accumulator import TurnMark, _current_turn, call_bindings
from turnledger.callback import _CALL_BINDER, _MISSING, _TURN_OF_CALL, _attempt_never_logged, _StartedCall

_MODEL = "gpt-4o-mini"
_MESSAGES = [{"role": "user", "content": "hi"}]


def _start_the_long_way(cb: turnledger.TokenTrackingCallback, kwargs: Any) -> None:
    """log_pre_api_call as it was before begin_call's usual case went in place (no warnings, no
    bookkeeping of calls outside turns: neither is compared)."""
    turn = _current_turn.get()
    marked = isinstance(kwargs, MutableMapping)
    retry = first_start = False
    if marked:
        mark = kwargs.get(_TURN_OF_CALL, _MISSING)
        if mark is _MISSING:
            kwargs[_TURN_OF_CALL] = turn._weak_self if turn is not None else None
            kwargs[_CALL_BINDER] = cb.tracker_name
            first_start = True
        else:
            turn = mark() if type(mark) is TurnMark else None
            retry = kwargs.get(_CALL_BINDER) == cb.tracker_name
    elif not isinstance(kwargs, Mapping):
        return
    if turn is not None and turn._closed:
        return
    call_id = kwargs.get("litellm_call_id")
    if not isinstance(call_id, str) or not call_id or turn is None:
        return
    started = _StartedCall(
        (
            cb,
            call_id,
            kwargs.get("model") or _MODEL,
            _MESSAGES,
            kwargs.get("input"),
            kwargs.get("original_response"),
            kwargs.get("llm_api_duration_ms"),
            kwargs,
            0.0,
            kwargs.get("response_headers") if retry else None,
            retry and _attempt_never_logged(kwargs),
        )
    )
    turn.begin_call(started, bind=not marked, retry=retry, new_call=first_start, call_id=call_id)


class _ClosesItsTurn(dict[str, Any]):
    """Details whose reading closes the turn after the hook's closed test, before its insert: a close on
    another thread in between, made deterministic."""

    turn: TurnTokenAccumulator | None = None

    def get(self, key: str, default: Any = None) -> Any:
        if key == "llm_api_duration_ms" and self.turn is not None and not self.turn._closed:
            self.turn.close(timeout=0)
        return super().get(key, default)


def _details(rng: random.Random, ids: list[str]) -> Any:
    kwargs: dict[str, Any] = {"litellm_call_id": rng.choice(ids), "model": rng.choice([_MODEL, None, "claude"])}
    kwargs["call_type"] = rng.choice(["acompletion", "completion", "embedding"])
    if rng.random() < 0.3:
        kwargs["original_response"] = "earlier answer"
        kwargs["response_headers"] = {"x-request-id": "r"}
        kwargs["llm_api_duration_ms"] = 12.5
    if rng.random() < 0.1:
        kwargs["input"] = ["some text"]
    kind = rng.random()
    if kind < 0.1:
        return MappingProxyType(kwargs)  # not marked: bound by call id
    if kind < 0.15:
        del kwargs["litellm_call_id"]
    elif kind < 0.2:
        return _ClosesItsTurn(kwargs)
    return kwargs


Op = tuple[str, int, int]


def _scenario(seed: int) -> list[Op]:
    rng = random.Random(seed)
    ops: list[Op] = []
    made = 0
    for _ in range(rng.randint(1, 14)):
        roll = rng.random()
        if roll < 0.45 or not made:
            ops.append(("new", rng.randrange(2), made))  # a start of new details
            made += 1
        elif roll < 0.8:
            ops.append(("again", rng.randrange(2), rng.randrange(made)))  # the same details started again
        elif roll < 0.95:
            ops.append(("end", 0, rng.randrange(made)))
        else:
            ops.append(("close", 0, 0))
    return ops


def _run(seed: int, start: Callable[[turnledger.TokenTrackingCallback, Any], None]) -> tuple[Any, ...]:
    rng = random.Random(seed)
    ids = [f"pre-eq-{seed}-{i}" for i in range(3)]
    cbs = [turnledger.TokenTrackingCallback(name=f"pre-eq-{i}") for i in range(2)]
    turn = TurnTokenAccumulator(user_id="eq")
    every: list[Any] = []
    ended = 0
    turn._activate()
    try:
        for op, which, index in _scenario(seed):
            if op == "new":
                details = _details(rng, ids)
                if isinstance(details, _ClosesItsTurn):
                    details.turn = turn
                every.append(details)
                start(cbs[which], details)
            elif op == "again":
                start(cbs[which], every[index])
            elif op == "end" and isinstance(call_id := every[index].get("litellm_call_id"), str):
                ended += 1
                record = TokenCallRecord(call_id=call_id, model="m", prompt_tokens=1, completion_tokens=1)
                turn.add(record, event_key=(call_id, "s", ended), call_details=every[index])
            elif op == "close" and not turn._closed:
                turn.close(timeout=0)
    finally:
        turn._deactivate()

    def started(s: Any) -> tuple[Any, ...]:
        at = next(i for i, d in enumerate(every) if d is s._kwargs)
        return (cbs.index(s._callback), s.call_id, s[2], s[3], s[4], s[5], s[6], at, s[9], s[10])

    return (
        [(k, started(v)) for k, v in turn._pending.items()],
        [(k, [started(s) for s in v]) for k, v in turn._more_pending.items()],
        sorted(turn._retried_ids),
        turn._closed,
        [(r.call_id, r.status, r.model, r.flags) for r in (*turn.calls, *turn.late_calls)],
        [call_bindings.lookup(i) is turn for i in ids],
        [dict(cb.stats) for cb in cbs],
        [{k: v for k, v in d.items() if k != _TURN_OF_CALL} for d in every],
        [type(d.get(_TURN_OF_CALL)) for d in every],
    )


def _by_the_hook(cb: turnledger.TokenTrackingCallback, details: Any) -> None:
    cb.log_pre_api_call(_MODEL, _MESSAGES, details)


@pytest.mark.parametrize("seed", range(400))
def test_the_hook_leaves_each_turn_as_begin_call_would(seed: int) -> None:
    assert _run(seed, _by_the_hook) == _run(seed, _start_the_long_way)


def test_the_scenarios_reach_every_case() -> None:
    # What the comparison above must cover: starts of each kind, a close between the hook's closed test
    # and its insert, ids already pending (a new call under it, another instance's start), retries.
    seen: dict[str, int] = {}
    for seed in range(400):
        state = _run(seed, _by_the_hook)
        pending, more, retried, closed, records = state[:5]
        seen["more pending"] = seen.get("more pending", 0) + bool(more)
        seen["retried"] = seen.get("retried", 0) + bool(retried)
        seen["closed"] = seen.get("closed", 0) + closed
        seen["abandoned"] = seen.get("abandoned", 0) + any(r[1] == "abandoned" for r in records)
        seen["pending"] = seen.get("pending", 0) + bool(pending)
    assert all(n >= 10 for n in seen.values()), seen
