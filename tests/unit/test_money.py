from __future__ import annotations

import math
import random
import struct
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext

import pytest

from turnledger.money import split_micros, sum_costs, to_decimal
from turnledger.records import micros_from_usd


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (8.400000000000001e-06, Decimal("0.0000084")),  # LiteLLM's float sum of 40x0.15/1M + 4x0.6/1M
        (0.1 + 0.2, Decimal("0.3")),
        (3.9e-06, Decimal("0.0000039")),
        (0.0, Decimal(0)),
        (100.0, Decimal(100)),
        (1, Decimal(1)),
        ("0.000123", Decimal("0.000123")),
        (Decimal("1.25"), Decimal("1.25")),
        ("abc", None),
        (None, None),
        (True, None),
        (float("nan"), None),
        (float("inf"), None),
        ("NaN", None),
    ],
)
def test_to_decimal(value: object, expected: Decimal | None) -> None:
    assert to_decimal(value) == expected


def test_micros_round_half_even_once() -> None:
    assert micros_from_usd(Decimal("0.0000005")) == 0
    assert micros_from_usd(Decimal("0.0000015")) == 2
    assert micros_from_usd(Decimal("0.0000025")) == 2
    assert micros_from_usd(None) is None


def test_sum_costs_unknown_is_not_zero() -> None:
    assert sum_costs([]) == (Decimal(0), 0)
    assert sum_costs([None, None]) == (None, 2)
    assert sum_costs([Decimal("0.1"), None]) == (Decimal("0.1"), 1)
    assert sum_costs([Decimal(0)]) == (Decimal(0), 0)


def test_split_micros_parts_add_up() -> None:
    parts = [Decimal("0.0000005")] * 4 + [None]
    out = split_micros(parts)
    assert out[-1] is None
    assert sum(x for x in out if x is not None) == 2
    assert split_micros([None]) == [None]
    # 2.8 micros round to 3; the tie in remainders goes to the first part.
    assert split_micros([Decimal("0.0000014"), Decimal("0.0000014")]) == [2, 1]


def test_money_ignores_the_applications_decimal_context() -> None:
    from decimal import localcontext

    from turnledger.price_table import ModelPrice
    from turnledger.usage import TokenCounts

    price = ModelPrice(input_cost_per_token=Decimal("0.00000015"), output_cost_per_token=Decimal("0.0000006"))
    counts = TokenCounts(prompt_tokens=518517, completion_tokens=1, total_tokens=518518)
    with localcontext() as ctx:
        ctx.prec = 4  # an application's own setting must not round our money
        assert price.cost(counts) == Decimal("0.07777815")
        assert sum_costs([Decimal("0.0000015")] * 1000) == (Decimal("0.0015"), 0)
        assert micros_from_usd(Decimal("123456.7890125")) == 123456789012


def test_to_decimal_of_an_absurd_float_is_none_not_an_exception() -> None:
    assert to_decimal(1e300) is None


def test_record_json_money_is_fixed_point() -> None:
    from turnledger.records import TokenCallRecord

    record = TokenCallRecord(call_id="c", model="m", cost_usd=Decimal("1.5E-7"))
    assert record.to_dict()["cost_usd"] == "0.00000015"


def _reference_from_float(value: float) -> Decimal | None:
    """The plain statement of the rule: shortest repr, rounded half-even to 15 significant digits,
    trailing zeros dropped (an integral value stays in integer form)."""
    exact = Decimal(repr(value))
    if exact == 0:
        return Decimal(0)
    with localcontext(Context(prec=60)):
        try:
            rounded = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 14), ROUND_HALF_EVEN)
            if rounded == rounded.to_integral_value():
                return rounded.quantize(Decimal(1))
            return rounded.normalize()
        except InvalidOperation:
            return None  # beyond any money figure


def test_float_costs_read_digit_for_digit_like_the_rule() -> None:
    rnd = random.Random(20261125)
    values = [8.400000000000001e-06, 1.35e-05, 9.9999999999999996, 123456789012345678.0, 1e16, 5e-324, -1.5e-05]
    values += [rnd.uniform(0, 1) * 10 ** rnd.randint(-12, 4) for _ in range(3000)]
    values += [rnd.randint(1, 10**6) * rnd.choice((0.15, 0.6, 2.5, 0.075, 1.1)) / 1e6 for _ in range(3000)]
    values += [struct.unpack("d", rnd.randbytes(8))[0] for _ in range(3000)]
    # Short reprs (at most 15 digits, the usual LiteLLM cost), integral ones among them.
    values += [float(f"{rnd.randint(1, 10 ** rnd.randint(1, 15))}e{rnd.randint(-20, 22)}") for _ in range(3000)]
    values += [100.0, 1e16, 1e22, 1e300, -0.0, 0.5, 123456789012345.0, 1234567890123456.0]
    values = [v for v in values if math.isfinite(v)]
    for value in values:
        got, want = to_decimal(value), _reference_from_float(value)
        assert (got.as_tuple() if got is not None else None) == (want.as_tuple() if want is not None else None), value


def test_float_costs_ignore_the_callers_decimal_context() -> None:
    with localcontext(Context(prec=4, rounding=ROUND_FLOOR)):
        assert to_decimal(0.00021280000000000002) == Decimal("0.0002128")
        assert to_decimal(123456.789) == Decimal("123456.789")
