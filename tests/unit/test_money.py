from __future__ import annotations

from decimal import Decimal

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
