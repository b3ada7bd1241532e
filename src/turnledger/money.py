"""Exact money helpers: Decimal in, Decimal out; integer micro-USD only at the edges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation

from turnledger.records import MICROS_PER_USD, MONEY_CONTEXT, micros_from_usd

__all__ = ["MICROS_PER_USD", "MONEY_CONTEXT", "micros_from_usd", "split_micros", "sum_costs", "to_decimal"]


def to_decimal(value: object) -> Decimal | None:
    """A float, int, str or Decimal as an exact Decimal; ``None`` for anything that is not a finite number.

    Floats go through their shortest repr, rounded to the 15 significant digits a double carries,
    so that ``3.9e-06`` becomes ``Decimal('0.0000039')`` and not the binary expansion of the float.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return _from_float(value)
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            return None
    else:
        return None
    return result if result.is_finite() else None


FLOAT_SIGNIFICANT_DIGITS = 15
"""A double holds 15 significant decimal digits faithfully (DBL_DIG); digits past that are binary noise."""


_CONTEXT = MONEY_CONTEXT.copy()
"""MONEY_CONTEXT's settings, passed to each operation rather than entered with ``localcontext`` (which
copies a context per call): the callback reads a float cost on every event, turn_rows sums several
times per turn. A copy of its own, so the status flags these operations set never land on the shared
MONEY_CONTEXT."""

_ONE = Decimal(1)
_INFINITIES = (float("inf"), float("-inf"))
"""Built once: ``float("inf")`` in the test itself cost 0.45 us on every cost read (measured)."""
_STEPS: dict[int, Decimal] = {}
"""The rounding step for each decimal exponent a float cost has (a few dozen at most)."""


def _from_float(value: float) -> Decimal | None:
    """A float cost as the decimal it stands for.

    LiteLLM sums per-token costs in floats: 40 x 0.15/1M + 4 x 0.6/1M comes out as
    8.400000000000001e-06. ``Decimal(str(value))`` keeps that noise; rounding to the 15 digits a
    double carries recovers 0.0000084, the figure the rates and token counts actually give.
    """
    if value != value or value in _INFINITIES:
        return None
    if value == 0:
        return Decimal(0)
    text = repr(value)
    try:
        if len(text) <= FLOAT_SIGNIFICANT_DIGITS + 1:
            # A repr this short (it always has a '.' or an 'e') has at most 15 digits: nothing to round.
            # Its only trailing zero is the '.0' of an integral value (it reads as an integer exactly
            # when the float is one), which must not stay as an exponent (1E+2).
            if value.is_integer():
                return Decimal(text).quantize(_ONE, context=_CONTEXT)
            return Decimal(text)
        exact = Decimal(text)
        adjusted = exact.adjusted()
        step = _STEPS.get(adjusted)
        if step is None:
            step = _STEPS[adjusted] = Decimal((0, (1,), adjusted - FLOAT_SIGNIFICANT_DIGITS + 1))
        rounded = exact.quantize(step, ROUND_HALF_EVEN, _CONTEXT)
        # Trailing zeros dropped, without switching an integral value to exponent form (1E+2).
        if rounded == rounded.to_integral_value(context=_CONTEXT):
            return rounded.quantize(_ONE, context=_CONTEXT)
        return rounded.normalize(_CONTEXT)
    except InvalidOperation:
        return None  # beyond any money figure (1e300): not a usable number


_ZERO = Decimal(0)


def sum_costs(costs: Iterable[Decimal | None]) -> tuple[Decimal | None, int]:
    """The exact sum of the priced costs and the count of unpriced ones.

    The sum is ``None`` when there were costs and every one was unpriced (unknown is not zero);
    an empty input sums to ``Decimal(0)``.
    """
    total = _ZERO
    priced = 0
    unpriced = 0
    add = _CONTEXT.add
    for cost in costs:
        if cost is None:
            unpriced += 1
        else:
            total = add(total, cost)
            priced += 1
    if unpriced and not priced:
        return None, unpriced
    return total, unpriced


def split_micros(parts: Sequence[Decimal | None]) -> list[int | None]:
    """Integer micro-USD for each part such that the parts add up to the rounded total.

    Rounding each part on its own can drift from the rounded total by a micro per part; the
    largest-remainder method hands the rounding difference to the parts that lost most to it.
    """
    target = micros_from_usd(sum_costs(parts)[0])
    if target is None:
        return [None for _ in parts]
    ctx = _CONTEXT
    exact = [None if p is None else ctx.multiply(p, MICROS_PER_USD) for p in parts]
    floors: list[int | None] = [None if e is None else int(e.to_integral_value(ROUND_FLOOR, ctx)) for e in exact]
    shortfall = target - sum(f for f in floors if f is not None)
    if not shortfall:
        return floors  # the parts' floors already add up (whole micros): nothing to hand out
    remainders = [
        (ctx.subtract(e, f), i)
        for i, (e, f) in enumerate(zip(exact, floors, strict=True))
        if e is not None and f is not None
    ]
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
