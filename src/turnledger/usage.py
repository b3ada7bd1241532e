"""Provider usage blocks -> normalized token counts.

Conventions (OpenAI's, which LiteLLM normalizes to): ``prompt_tokens`` includes cache reads and
cache writes; ``completion_tokens`` includes reasoning. A count that is not a non-negative integer
is read as far as it can be and flagged, never trusted blindly and never negative.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from turnledger.records import RecordFlag


@dataclass(slots=True)
class TokenCounts:
    """Normalized token counts of one call."""

    prompt_tokens: int = 0
    """All input tokens, cache reads and writes included."""
    completion_tokens: int = 0
    """All output tokens, reasoning included."""
    total_tokens: int = 0
    cached_tokens: int = 0
    """Input tokens read from the prompt cache."""
    cache_creation_tokens: int = 0
    """Input tokens written to the prompt cache (5-minute and 1-hour together)."""
    cache_creation_1h_tokens: int = 0
    """The 1-hour part of ``cache_creation_tokens``."""
    reasoning_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    present: bool = False
    """Whether the response carried a usage block at all."""
    flags: list[RecordFlag] = field(default_factory=list)

    @property
    def fresh_prompt_tokens(self) -> int:
        """Input tokens neither read from nor written to the cache."""
        return max(0, self.prompt_tokens - self.cached_tokens - self.cache_creation_tokens)

    def flag(self, flag: RecordFlag) -> None:
        if flag not in self.flags:
            self.flags.append(flag)


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def read_count(counts: TokenCounts, value: Any) -> int:
    """A usage count as a non-negative int; anything else is flagged and read as far as possible."""
    if value is None:
        return 0
    if isinstance(value, bool):
        counts.flag(RecordFlag.MALFORMED_USAGE)
        return 0
    if isinstance(value, int):
        if value < 0:
            counts.flag(RecordFlag.MALFORMED_USAGE)
            return 0
        return value
    if isinstance(value, float):
        if value != value or value < 0 or value == float("inf"):
            counts.flag(RecordFlag.MALFORMED_USAGE)
            return 0
        if value != int(value):
            counts.flag(RecordFlag.MALFORMED_USAGE)
        return int(value)
    # A string (or anything else) is malformed even when it can be read as a number.
    counts.flag(RecordFlag.MALFORMED_USAGE)
    try:
        number = float(str(value).strip())
    except ValueError:
        return 0
    if number != number or number < 0 or number == float("inf"):
        return 0
    return int(number)


def usage_block(response_obj: Any) -> Any:
    """The usage block of a LiteLLM response object or dict, or ``None``."""
    usage = _get(response_obj, "usage")
    if usage is None and isinstance(response_obj, Mapping):
        usage = response_obj.get("usage")
    return usage


def normalize_usage(response_obj: Any) -> TokenCounts:
    """Normalized counts from whatever LiteLLM handed the callback."""
    counts = TokenCounts()
    usage = usage_block(response_obj)
    if usage is None:
        return counts
    counts.present = True
    counts.prompt_tokens = read_count(counts, _get(usage, "prompt_tokens") or _get(usage, "input_tokens"))
    counts.completion_tokens = read_count(counts, _get(usage, "completion_tokens") or _get(usage, "output_tokens"))
    total = _get(usage, "total_tokens")
    counts.total_tokens = (
        read_count(counts, total) if total is not None else counts.prompt_tokens + counts.completion_tokens
    )
    prompt_details = _get(usage, "prompt_tokens_details") or _get(usage, "input_tokens_details")
    cached = _get(prompt_details, "cached_tokens")
    if cached is None:
        cached = _get(usage, "cache_read_input_tokens")
    counts.cached_tokens = read_count(counts, cached)
    counts.cache_creation_tokens = read_count(counts, _get(usage, "cache_creation_input_tokens"))
    completion_details = _get(usage, "completion_tokens_details") or _get(usage, "output_tokens_details")
    counts.reasoning_tokens = read_count(counts, _get(completion_details, "reasoning_tokens"))
    if counts.total_tokens < counts.prompt_tokens + counts.completion_tokens:
        counts.flag(RecordFlag.MALFORMED_USAGE)
        counts.total_tokens = counts.prompt_tokens + counts.completion_tokens
    return counts
