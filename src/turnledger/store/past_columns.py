"""The row columns earlier versions wrote outbox lines with, so that their lines still replay.

An outbox can outlive the version that wrote it (a writer stopped mid-outage, then upgraded): its
lines are read with the columns they were written with, and a column added since gets the value it
stands for in a row written before it existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

ADDED_CALL_COLUMNS: Mapping[str, Any] = MappingProxyType({"audio_input_tokens": 0, "audio_output_tokens": 0})
"""``token_usage_calls`` columns added after the outbox format began, with what an older line means
by leaving them out: the version that wrote it kept no audio counts (migration 0004), and the
columns are NOT NULL, so leaving them NULL would get the turn refused."""

# Frozen copies, as packed (in this order) by the versions before migration 0004.
USAGE_COLUMNS_BEFORE_0004 = (
    "turn_id",
    "usage_type",
    "user_id",
    "thread_id",
    "message_id",
    "tenant_id",
    "tags",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_micros",
    "unpriced_calls",
    "failed_calls",
    "abandoned_calls",
    "model_breakdown",
    "call_details",
    "created_at",
    "recorded_at",
)
CALL_COLUMNS_BEFORE_0004 = (
    "seq",
    "call_id",
    "model",
    "provider",
    "call_kind",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "cache_creation_1h_tokens",
    "reasoning_tokens",
    "image_input_tokens",
    "image_output_tokens",
    "cost_usd",
    "cost_micros",
    "cost_source",
    "started_at",
    "latency_ms",
    "ttft_ms",
    "stream",
    "usage_estimated",
    "error_type",
    "provider_request_id",
    "model_ref",
    "model_id",
    "display_name",
    "flags",
    "usage_type",
    "user_id",
    "thread_id",
    "tenant_id",
    "created_at",
)

PAST_COLUMNS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (USAGE_COLUMNS_BEFORE_0004, CALL_COLUMNS_BEFORE_0004),
)
"""``(usage columns, call columns)`` of each earlier packed line format, oldest first."""
