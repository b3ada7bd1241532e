"""The turn row's JSON documents, built the fast way, are exactly what the generic conversions give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from turnledger import CallKind, CallStatus, CostSource, RecordFlag, TokenCallRecord, TurnTokenAccumulator, turn_rows
from turnledger.store import record


def _records() -> list[TokenCallRecord]:
    return [
        TokenCallRecord(call_id="a", model="gpt-4o-mini"),
        TokenCallRecord(
            call_id="b",
            model="claude",
            provider="anthropic",
            call_kind=CallKind.EMBEDDING,
            status=CallStatus.FAILURE,
            prompt_tokens=7,
            completion_tokens=3,
            total_tokens=10,
            cached_tokens=1,
            cache_creation_tokens=2,
            cache_creation_1h_tokens=1,
            reasoning_tokens=2,
            image_input_tokens=4,
            image_output_tokens=5,
            cost_usd=Decimal("1.5E-7"),
            cost_source=CostSource.PRICE_TABLE,
            started_at=datetime(2026, 11, 25, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            latency_ms=12.25,
            ttft_ms=3.0,
            provider_request_id="req-1",
            model_ref="ref",
            model_id="mid",
            display_name="Claude",
            stream=True,
            usage_estimated=True,
            error_type="RateLimitError",
            flags=(RecordFlag.MALFORMED_EVENT, RecordFlag.LATE),
        ),
        TokenCallRecord(call_id="c", model="gpt-4o-mini", cost_usd=Decimal(0), started_at=datetime.now(UTC)),
    ]


def test_call_details_are_to_dict_with_the_share() -> None:
    records = _records()
    when = datetime(2026, 11, 25, tzinfo=UTC)
    for share in (17, None):
        _rows, details = record._calls_as_is(records, [share] * len(records), "chat", None, None, None, when)
        for rec, detail in zip(records, details, strict=True):
            assert detail == {**rec.to_dict(), "cost_micros": share}


def test_the_fast_json_safe_matches_the_generic_conversion() -> None:
    records = _records()
    turn = TurnTokenAccumulator(turn_id="t")
    for rec in records:
        turn.add(rec)
    turn._finalize()
    safe = record._json_safe(turn.per_message_summary())
    assert safe["claude"]["cost_usd"] == "0.00000015"
    assert safe["gpt-4o-mini"]["cost_usd"] == "0"
    nested = {RecordFlag.LATE: [Decimal("1E-3"), (1, True, None)], 3: {"x": CallStatus.SUCCESS, "y": 2.5}}
    assert record._json_safe(nested) == {"late": ["0.001", [1, True, None]], "3": {"x": "success", "y": 2.5}}
    rows = turn_rows(turn, usage_type="chat")
    assert rows.usage["model_breakdown"] == safe
    assert rows.usage["call_details"] == [
        {**rec.to_dict(), "cost_micros": row["cost_micros"]} for rec, row in zip(records, rows.calls, strict=True)
    ]


def test_the_model_breakdown_keeps_an_unpriced_model_unpriced() -> None:
    turn = TurnTokenAccumulator(turn_id="t")
    for rec in [*_records(), TokenCallRecord(call_id="d", model="local-llm", prompt_tokens=3)]:
        turn.add(rec)
    turn._finalize()
    breakdown = turn_rows(turn, usage_type="chat").usage["model_breakdown"]
    assert breakdown == record._json_safe(turn.per_message_summary())
    assert (breakdown["local-llm"]["cost_usd"], breakdown["local-llm"]["cost_micros"]) == (None, None)
    assert breakdown["local-llm"]["unpriced_calls"] == 1


def test_the_one_pass_call_rows_are_call_row_and_call_detail() -> None:
    records = _records()
    when = datetime(2026, 11, 25, tzinfo=UTC)
    shares = [None, 3, 0]
    rows, details = record._calls_as_is(records, shares, "chat", "u", "th", None, when)
    expected = [
        record.call_row(
            rec, seq=seq, usage_type="chat", user_id="u", thread_id="th", tenant_id=None, created_at=when, cost_micros=m
        )
        for seq, (rec, m) in enumerate(zip(records, shares, strict=True))
    ]
    assert rows == expected
    assert [list(r) for r in rows] == [list(r) for r in expected]  # same column order too
    assert details == [{**rec.to_dict(), "cost_micros": m} for rec, m in zip(records, shares, strict=True)]
    assert [list(d) for d in details] == [
        list({**r.to_dict(), "cost_micros": m}) for r, m in zip(records, shares, strict=True)
    ]
    assert all(type(v) is str for row in rows for v in (row["status"], row["call_kind"], *row["flags"]))
