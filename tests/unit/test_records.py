from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from turnledger.records import (
    CallKind,
    CallStatus,
    CostSource,
    RecordFlag,
    TokenCallRecord,
    _RecordDraft,
    record_draft,
    record_from_fields,
    sealed_record,
)


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


def test_a_sealed_draft_is_the_frozen_record_and_a_field_left_out_fails_when_read() -> None:
    draft = record_draft()
    for name, value in _every_field_set().items():
        setattr(draft, name, value)
    record = sealed_record(draft)
    assert type(record) is TokenCallRecord
    assert record == TokenCallRecord(**_every_field_set())  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.model = "other"  # type: ignore[misc]
    partial = record_draft()
    partial.call_id = "c1"
    with pytest.raises(AttributeError):
        partial.no_such_field = 1
    with pytest.raises(AttributeError):
        _ = sealed_record(partial).model


def test_a_draft_made_by_calling_its_class_is_empty_writable_and_sealed_as_a_plain_record() -> None:
    # build_record calls the draft class (a subclass of TokenCallRecord adding no slots, writable).
    draft = _RecordDraft()
    with pytest.raises(AttributeError):
        _ = draft.model
    with pytest.raises(TypeError):
        _RecordDraft(call_id="c1", model="m")
    for name, value in _every_field_set().items():
        setattr(draft, name, value)
    draft.model = "again"
    del draft.model
    draft.model = _every_field_set()["model"]
    record = sealed_record(draft)
    assert type(record) is TokenCallRecord and record == TokenCallRecord(**_every_field_set())  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize("status", [CallStatus.SUCCESS, CallStatus.FAILURE])
def test_the_callback_sets_every_field_of_the_records_it_builds(status: CallStatus) -> None:
    """build_record fills in a draft field by field: one it left out would fail wherever it is read."""
    import litellm

    from turnledger.accumulator import TurnTokenAccumulator
    from turnledger.callback import TokenTrackingCallback

    turn = TurnTokenAccumulator()
    turn.register_model_metadata("openai/gpt-4o-mini", model_id="m-1", display_name="Mini")
    kwargs = {
        "litellm_call_id": "c1",
        "model": "gpt-4o-mini",
        "custom_llm_provider": "openai",
        "call_type": "acompletion",
        "response_cost": 0.000015,
        "stream": True,
        "completion_start_time": datetime(2026, 11, 26, 5, 0, 1, tzinfo=UTC),
        "exception": TimeoutError("slow"),
    }
    response = litellm.ModelResponse(
        model="gpt-4o-mini", usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    )
    start, end = datetime(2026, 11, 26, 5, 0, 0, tzinfo=UTC), datetime(2026, 11, 26, 5, 0, 2, tzinfo=UTC)
    record = TokenTrackingCallback(name="every-field").build_record(kwargs, response, start, end, status, turn)
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(TokenCallRecord)}
    assert record == TokenCallRecord(**values)
    assert (values["model_id"], values["ttft_ms"], values["latency_ms"]) == ("m-1", 1000.0, 2000.0)
