"""Exact money helpers: Decimal in, Decimal out; integer micro-USD only at the edges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from turnledger.records import MICROS_PER_USD, micros_from_usd

__all__ = ["MICROS_PER_USD", "micros_from_usd", "split_micros", "sum_costs", "to_decimal"]


def to_decimal(value: object) -> Decimal | None:
    """A float, int, str or Decimal as an exact Decimal; ``None`` for anything that is not a finite number.

    Floats go through ``str`` so that ``3.9e-06`` becomes ``Decimal('0.0000039')`` and not the
    binary expansion of the float.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float | str):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            return None
    else:
        return None
    return result if result.is_finite() else None


def sum_costs(costs: Iterable[Decimal | None]) -> tuple[Decimal | None, int]:
    """The exact sum of the priced costs and the count of unpriced ones.

    The sum is ``None`` when there were costs and every one was unpriced (unknown is not zero);
    an empty input sums to ``Decimal(0)``.
    """
    total = Decimal(0)
    priced = 0
    unpriced = 0
    for cost in costs:
        if cost is None:
            unpriced += 1
        else:
            total += cost
            priced += 1
    if unpriced and not priced:
        return None, unpriced
    return total, unpriced


def split_micros(parts: Sequence[Decimal | None]) -> list[int | None]:
    """Integer micro-USD for each part such that the parts add up to the rounded total.

    Rounding each part on its own can drift from the rounded total by a micro per part; the
    largest-remainder method hands the rounding difference to the parts that lost most to it.
    """
    total, _ = sum_costs(parts)
    target = micros_from_usd(total)
    if target is None:
        return [None for _ in parts]
    floors: list[int | None] = []
    remainders: list[tuple[Decimal, int]] = []
    for i, part in enumerate(parts):
        if part is None:
            floors.append(None)
            continue
        exact = part * MICROS_PER_USD
        floor = int(exact.to_integral_value(rounding=ROUND_FLOOR))
        floors.append(floor)
        remainders.append((exact - floor, i))
    shortfall = target - sum(f for f in floors if f is not None)
    remainders.sort(key=lambda r: (-r[0], r[1]))
    out = list(floors)
    step = 1 if shortfall >= 0 else -1
    idx = 0
    while shortfall != 0 and remainders:
        _, i = remainders[idx % len(remainders)]
        current = out[i]
        assert current is not None
        out[i] = current + step
        shortfall -= step
        idx += 1
    return out
