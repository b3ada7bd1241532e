"""The benches' own harness: what they take for an arm's set-up must be that arm's alone."""

from __future__ import annotations

import litellm

from bench.capture_bench import _call, _logging_idle, _noop, forget_logger
from turnledger.callback import _LITELLM_CALLBACK_LISTS


async def test_a_logger_taken_out_is_in_none_of_litellms_lists() -> None:
    # LiteLLM copies a logger registered in ``callbacks`` into its other lists on the next call, the
    # async failure list too: the no-op logger stayed there in every later block, "without" included.
    litellm.callbacks.append(_noop)
    try:
        await _call()
        await _logging_idle()
        assert any(_noop in getattr(litellm, name) for name in _LITELLM_CALLBACK_LISTS if name != "callbacks")
    finally:
        forget_logger(_noop)
    assert [name for name in _LITELLM_CALLBACK_LISTS if _noop in (getattr(litellm, name, None) or [])] == []
