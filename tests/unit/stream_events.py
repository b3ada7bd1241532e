"""The event arguments LiteLLM hands a logger at the end of a priced async stream, for unit tests that
drive the callback's hooks by hand."""

from __future__ import annotations

import uuid
from typing import Any

import litellm


def stream_event_kwargs(call_id: str | None = None) -> dict[str, Any]:
    return {
        "litellm_call_id": call_id or uuid.uuid4().hex,
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "acompletion",
        "stream": True,
        "response_cost": 0.000015,
    }


def stream_response() -> litellm.ModelResponse:
    return litellm.ModelResponse(
        model="gpt-4o-mini", usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    )
