"""Credits without a database: amounts, the stored type, the unpriced policies, the scope's arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from turnledger import CreditLedger, Reservation, TokenCallRecord, TurnTokenAccumulator, credit_scope
from turnledger.credits import AccountBalance, _amount, turn_charge
from turnledger.credits_models import ExactAmount, canonical_amount, quantize_amount
from turnledger.records import CallStatus

ESTIMATE = Decimal("0.05")


def _turn(*costs: Decimal | None) -> TurnTokenAccumulator:
    turn = TurnTokenAccumulator()
    for i, cost in enumerate(costs):
        turn.add(TokenCallRecord(call_id=f"c{i}", model="m", cost_usd=cost))
    return turn


def test_amounts_are_exact_and_floats_are_refused() -> None:
    assert _amount("0.1", "amount", minimum="positive") == Decimal("0.1")
    assert _amount(3, "amount", minimum="positive") == Decimal(3)
    with pytest.raises(TypeError, match="float"):
        _amount(0.1, "amount", minimum="positive")
    with pytest.raises(ValueError, match="finite"):
        _amount("NaN", "amount", minimum="positive")
    with pytest.raises(ValueError, match="finite"):
        _amount(True, "amount", minimum="positive")
    with pytest.raises(ValueError, match="positive"):
        _amount("0", "amount", minimum="positive")
    assert _amount("0", "estimate", minimum="zero") == 0
    with pytest.raises(ValueError, match="negative"):
        _amount("-0.01", "estimate", minimum="zero")
    with pytest.raises(ValueError, match="zero"):
        _amount("0", "amount", minimum="nonzero")
    with pytest.raises(ValueError, match="too large"):
        _amount("1" + "0" * 20, "amount", minimum="positive")


def test_quantize_rounds_half_even_at_18_places_without_the_28_digit_context() -> None:
    assert quantize_amount(Decimal("0.0000000000000000025")) == Decimal("0.000000000000000002")
    assert quantize_amount(Decimal("0.0000000000000000035")) == Decimal("0.000000000000000004")
    big = Decimal("99999999999999999999.999999999999999999")  # 38 digits: the column's limit
    assert quantize_amount(big) == big
    assert canonical_amount(Decimal("1.500000000000000000")) == Decimal("1.5")
    assert str(canonical_amount(Decimal("10.000000000000000000"))) == "10"
    assert str(canonical_amount(big)) == "99999999999999999999.999999999999999999"


def test_exact_amount_is_numeric_on_postgresql_and_text_on_sqlite() -> None:
    col = ExactAmount()
    # The dialects of two engines that are never connected.
    pg = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none").dialect
    lite = create_async_engine("sqlite+aiosqlite://").dialect
    assert str(col.dialect_impl(pg).compile(dialect=pg)) == "NUMERIC(38, 18)"
    assert str(col.dialect_impl(lite).compile(dialect=lite)) == "VARCHAR(40)"
    assert col.process_bind_param(Decimal("0.1"), lite) == "0.100000000000000000"
    assert col.process_bind_param(Decimal("0.1"), pg) == Decimal("0.100000000000000000")
    assert col.process_result_value("0.100000000000000000", lite) == Decimal("0.1")
    with pytest.raises(ValueError, match="finite Decimal"):
        col.process_bind_param(0.1, lite)  # type: ignore[arg-type]


def test_available_is_balance_minus_held_plus_overdraft() -> None:
    bal = AccountBalance(account="a", balance=Decimal("1"), held=Decimal("0.3"), overdraft_limit=Decimal("0.25"))
    assert bal.available == Decimal("0.95")


def test_turn_charge_free_charges_only_what_was_priced() -> None:
    turn = _turn(Decimal("0.01"), None, Decimal("0.002"))
    assert turn_charge(turn, ESTIMATE, "free") == (Decimal("0.012"), Decimal("0.012"), 1)


def test_turn_charge_estimate_charges_at_least_the_estimate_when_anything_is_unpriced() -> None:
    assert turn_charge(_turn(Decimal("0.01"), None), ESTIMATE, "estimate") == (ESTIMATE, Decimal("0.01"), 1)
    # Priced calls that already cost more than the estimate are charged in full.
    assert turn_charge(_turn(Decimal("0.07"), None), ESTIMATE, "estimate") == (Decimal("0.07"), Decimal("0.07"), 1)
    # Nothing unpriced: the estimate plays no part.
    assert turn_charge(_turn(Decimal("0.01")), ESTIMATE, "estimate") == (Decimal("0.01"), Decimal("0.01"), 0)


def test_turn_charge_of_an_all_unpriced_or_empty_turn() -> None:
    assert turn_charge(_turn(None, None), ESTIMATE, "error") == (Decimal(0), Decimal(0), 2)
    assert turn_charge(_turn(), ESTIMATE, "estimate") == (Decimal(0), Decimal(0), 0)
    with pytest.raises(ValueError, match="unpriced"):
        turn_charge(_turn(), ESTIMATE, "maybe")  # type: ignore[arg-type]


def test_abandoned_calls_count_at_their_estimated_cost() -> None:
    turn = TurnTokenAccumulator()
    turn.add(TokenCallRecord(call_id="a", model="m", status=CallStatus.ABANDONED, cost_usd=Decimal("0.0003")))
    turn.add(TokenCallRecord(call_id="b", model="m", cost_usd=Decimal("0.0001")))
    assert turn_charge(turn, ESTIMATE, "free") == (Decimal("0.0004"), Decimal("0.0004"), 0)


def test_scope_and_ledger_refuse_bad_arguments_before_touching_a_database() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    ledger = CreditLedger(engine)
    with pytest.raises(ValueError, match="unpriced"):
        credit_scope(ledger, account="a", estimate=ESTIMATE, unpriced="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        credit_scope(ledger, account="a", estimate="-1")
    with pytest.raises(ValueError, match="hold_ttl"):
        CreditLedger(engine, hold_ttl=timedelta(0))
    with pytest.raises(ValueError, match="ttl must be positive"):
        credit_scope(ledger, account="a", estimate=ESTIMATE, ttl=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="renew_every must be positive"):
        credit_scope(ledger, account="a", estimate=ESTIMATE, renew_every=timedelta(0))
    with pytest.raises(ValueError, match=r"renew_every must be shorter than the hold's ttl \(0:01:00\)"):
        credit_scope(ledger, account="a", estimate=ESTIMATE, ttl=timedelta(minutes=1), renew_every=timedelta(minutes=1))


def test_scope_renews_its_hold_every_third_of_its_ttl_by_default() -> None:
    ledger = CreditLedger(create_async_engine("sqlite+aiosqlite://"), hold_ttl=timedelta(minutes=15))
    assert credit_scope(ledger, account="a", estimate=ESTIMATE).renew_every == timedelta(minutes=5)
    assert credit_scope(ledger, account="a", estimate=ESTIMATE, ttl=timedelta(seconds=30)).renew_every == timedelta(
        seconds=10
    )


def test_scope_key_defaults_to_the_turn_id() -> None:
    ledger = CreditLedger(create_async_engine("sqlite+aiosqlite://"))
    scope = credit_scope(ledger, account="a", estimate=ESTIMATE, turn_id="t-42")
    assert (scope.key, scope.turn.turn_id) == ("turn:t-42", "t-42")
    assert credit_scope(ledger, account="a", estimate=ESTIMATE, key="req-9").key == "req-9"


def test_reservation_derives_its_settle_and_release_keys() -> None:
    res = Reservation(
        id=7,
        key="req-9",
        account="a",
        amount=ESTIMATE,
        expires_at=datetime(2026, 11, 25, tzinfo=UTC),
        turn_id=None,
        created_at=datetime(2026, 11, 25, tzinfo=UTC),
    )
    assert (res.settle_key, res.release_key) == ("req-9/settle", "req-9/release")
    # A replayed result compares equal to the first one.
    assert res == Reservation(**{**{f: getattr(res, f) for f in res.__dataclass_fields__}, "replayed": True})
