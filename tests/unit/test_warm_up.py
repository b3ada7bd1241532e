"""install() warms, in a background thread, what a turn's first estimate or close-time pricing would
otherwise load on the event loop."""

from __future__ import annotations

import threading
from typing import Any

import litellm
import pytest

from turnledger import callback


def test_the_warm_up_thread_loads_the_tokenizer_and_litellms_cost_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def token_counter(**kwargs: Any) -> int:
        seen.append(f"token_counter:{kwargs['model']}")
        return 1

    def cost_per_token(**kwargs: Any) -> tuple[float, float]:
        seen.append(f"cost_per_token:{kwargs['custom_llm_provider']}/{kwargs['model']}")
        raise RuntimeError("a failing warm-up is ignored")

    monkeypatch.setattr(litellm, "token_counter", token_counter)
    monkeypatch.setattr(litellm, "cost_per_token", cost_per_token)
    monkeypatch.setattr(callback, "_tokenizer_warmed", False)
    callback._warm_tokenizer_once()
    for thread in threading.enumerate():
        if thread.name == "turnledger-tokenizer-warmup":
            thread.join(timeout=30)
    assert seen == ["token_counter:gpt-4o-mini", "cost_per_token:openai/gpt-4o-mini"]
    # Once per process.
    callback._warm_tokenizer_once()
    assert [t for t in threading.enumerate() if t.name == "turnledger-tokenizer-warmup"] == []
