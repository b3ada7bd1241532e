"""Usage blocks the fake provider is scripted to send, shared by the tests that bill them."""

from __future__ import annotations

from typing import Any

AUDIO_USAGE: dict[str, Any] = {
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "total_tokens": 1500,
    "prompt_tokens_details": {"audio_tokens": 800, "text_tokens": 200, "cached_tokens": 0},
    "completion_tokens_details": {"audio_tokens": 400, "text_tokens": 100, "reasoning_tokens": 0},
}
"""An audio chat call's usage, OpenAI's shape: 800 audio + 200 text tokens in, 400 audio + 100 text out."""
