from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from turnledger.records import CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord, record_from_fields


def _every_field_set() -> dict[str, object]:
    return {
        "call_id": "c1",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "call_kind": CallKind.EMBEDDING,
        "status": CallStatus.FAILURE,
        "prompt_tokens": 11,
        "completion_tokens": 12,
        "total_tokens": 23,
        "cached_tokens": 3,
        "cache_creation_tokens": 4,
        "cache_creation_1h_tokens": 2,
        "reasoning_tokens": 5,
        "image_input_tokens": 6,
        "image_output_tokens": 7,
        "audio_input_tokens": 8,
        "audio_output_tokens": 9,
        "cost_usd": Decimal("0.0000135"),
        "cost_source": CostSource.RESPONSE_COST,
        "started_at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "latency_ms": 1.5,
        "ttft_ms": 0.5,
        "provider_request_id": "req-1",
        "model_ref": "openai/gpt-4o-mini",
        "model_id": "m-1",
        "display_name": "Mini",
        "stream": True,
        "usage_estimated": True,
        "error_type": "Timeout",
        "flags": (RecordFlag.USAGE_ESTIMATED,),
    }


def test_the_fast_builder_covers_every_field_with_a_value_of_its_own() -> None:
    values = _every_field_set()
    assert set(values) == {f.name for f in dataclasses.fields(TokenCallRecord)}
    defaults = TokenCallRecord(call_id="x", model="y")
    # Each value differs from its default, so a field the builder dropped would show.
    assert all(getattr(defaults, k) != v for k, v in values.items())
    built = record_from_fields(**values)
    assert type(built) is TokenCallRecord
    assert built == TokenCallRecord(**values)  # type: ignore[arg-type]
    assert hash(built) == hash(TokenCallRecord(**values))  # type: ignore[arg-type]


def test_the_fast_builder_has_the_dataclass_defaults_and_stays_frozen() -> None:
    built = record_from_fields(call_id="c1", model="m")
    assert built == TokenCallRecord(call_id="c1", model="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.model = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record_from_fields(call_id="c1")
    with pytest.raises(TypeError):
        record_from_fields(call_id="c1", model="m", no_such_field=1)
