"""Where ``install`` registers the callback. Registered in LiteLLM's five success/failure/input lists
directly, turnledger would cost LiteLLM 21,000 fewer instructions per call (bench/logger_floor_bench.py),
but ``Router.reset()`` empties the success and failure lists: only an entry of ``litellm.callbacks``,
which LiteLLM promotes into them again on every call, keeps hearing of calls after it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import litellm
import pytest
from litellm.router import Router

import turnledger
from turnledger import CallStatus

_MESSAGES = [{"role": "user", "content": "hi"}]
_RESET_BY_ROUTER = (
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
    "cache",
)


@pytest.fixture
def router_reset_undone(tracker: turnledger.TokenTrackingCallback) -> Iterator[None]:
    """``Router.reset()`` replaces LiteLLM's lists and its cache: the old ones are put back before the
    tracker is uninstalled from them (this fixture depends on it, so it is undone first)."""
    saved = {name: getattr(litellm, name) for name in _RESET_BY_ROUTER}
    yield
    for name, value in saved.items():
        setattr(litellm, name, value)


@pytest.mark.usefixtures("router_reset_undone")
async def test_calls_after_a_router_reset_are_still_recorded(tracker: turnledger.TokenTrackingCallback) -> None:
    await litellm.acompletion(model="gpt-4o-mini", messages=_MESSAGES, mock_response="Hello!")
    router = Router(model_list=[{"model_name": "m", "litellm_params": {"model": "gpt-4o-mini"}}])
    router.reset()  # type: ignore[no-untyped-call]
    async with turnledger.scoped_turn(settle_timeout=2.0) as turn:
        await litellm.acompletion(model="gpt-4o-mini", messages=_MESSAGES, mock_response="Hello!")
        await asyncio.to_thread(litellm.completion, model="gpt-4o-mini", messages=_MESSAGES, mock_response="Hello!")
    assert [r.status for r in turn.calls] == [CallStatus.SUCCESS, CallStatus.SUCCESS]
    assert all(r.total_tokens for r in turn.calls)
