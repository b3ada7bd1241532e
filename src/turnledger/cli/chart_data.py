"""Daily spend per model (or user, thread, tenant): the numbers the chart draws.

Each UTC day is one call of :func:`turnledger.store.reports.usage_report`, so the chart adds up to
exactly what ``turnledger report`` says for the same day: the same exact sums, the same unpriced
counts, the same indexed query. A day is a UTC calendar day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from turnledger.records import EXACT_SUM_CONTEXT
from turnledger.store.record import Database
from turnledger.store.reports import ReportBy, ReportRow, group_label, usage_report

CHART_GROUPINGS = (ReportBy.MODEL, ReportBy.USER, ReportBy.THREAD, ReportBy.TENANT)

OTHER = "(other)"


@dataclass(slots=True)
class Series:
    """One stacked segment across the days: a model (or user...)."""

    name: str
    cost_by_day: dict[date, Decimal] = field(default_factory=dict)
    """The priced part of each day's spend (days with no priced call are absent)."""
    unpriced_by_day: dict[date, int] = field(default_factory=dict)
    """Calls with no known price, per day: drawn as nothing, counted and shown apart."""
    calls: int = 0

    @property
    def unpriced_calls(self) -> int:
        return sum(self.unpriced_by_day.values())

    @property
    def total(self) -> Decimal | None:
        """Exact priced total; ``None`` when every call of the series was unpriced."""
        if not self.cost_by_day:
            return None if self.unpriced_by_day else Decimal(0)
        return exact_sum(self.cost_by_day.values())

    def absorb(self, other: Series) -> None:
        for day, cost in other.cost_by_day.items():
            self.cost_by_day[day] = EXACT_SUM_CONTEXT.add(self.cost_by_day.get(day, Decimal(0)), cost)
        for day, n in other.unpriced_by_day.items():
            self.unpriced_by_day[day] = self.unpriced_by_day.get(day, 0) + n
        self.calls += other.calls


@dataclass(slots=True)
class DailySpend:
    by: ReportBy
    days: list[date]
    """Every day of the range, oldest first, including days with no spend."""
    series: list[Series]
    """Highest total first; unpriced-only series last."""

    def day_total(self, day: date) -> Decimal:
        return exact_sum(s.cost_by_day.get(day, Decimal(0)) for s in self.series)

    def day_unpriced(self, day: date) -> int:
        return sum(s.unpriced_by_day.get(day, 0) for s in self.series)

    @property
    def total(self) -> Decimal:
        return exact_sum(self.day_total(d) for d in self.days)

    @property
    def unpriced_calls(self) -> int:
        return sum(s.unpriced_calls for s in self.series)

    def top(self, limit: int) -> DailySpend:
        """At most ``limit`` series: the rest are folded, exactly, into one ``(other)`` series."""
        if len(self.series) <= limit:
            return self
        other = Series(OTHER)
        for s in self.series[limit - 1 :]:
            other.absorb(s)
        return DailySpend(self.by, self.days, [*self.series[: limit - 1], other])


def exact_sum(costs: Iterable[Decimal]) -> Decimal:
    """Exact (see EXACT_SUM_CONTEXT): the default context's 28 digits (or an application's own) would round
    the total of exact report figures (a million dollars and a per-call cost of 1.2345E-8 already need
    30), and so would MONEY_CONTEXT's 60 (a report figure may hold more)."""
    total = Decimal(0)
    for cost in costs:
        total = EXACT_SUM_CONTEXT.add(total, cost)
    return total


def day_range(since: datetime, until: datetime) -> list[date]:
    """The UTC days from the one holding ``since`` to the one holding the instant before ``until``."""
    first = since.astimezone(UTC).date()
    last = (until.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


async def daily_spend(
    db: Database,
    by: ReportBy,
    days: list[date],
    *,
    on_day: Callable[[], None] | None = None,
    **filters: Any,
) -> DailySpend:
    """Spend per ``by`` for each day in ``days`` (one report query per day); ``on_day`` ticks a progress bar."""
    merged: dict[str, Series] = {}
    for day in days:
        rows: list[ReportRow] = await usage_report(
            db, by, since=midnight(day), until=midnight(day + timedelta(days=1)), **filters
        )
        for row in rows:
            name = group_label(by, row)
            series = merged.setdefault(name, Series(name))
            series.calls += row.calls
            if row.cost_usd is not None:
                series.cost_by_day[day] = row.cost_usd
            if row.unpriced_calls:
                series.unpriced_by_day[day] = row.unpriced_calls
        if on_day is not None:
            on_day()
    ordered = sorted(merged.values(), key=lambda s: (s.total is None, -(s.total or 0), s.name))
    return DailySpend(by, days, ordered)


__all__ = ["CHART_GROUPINGS", "OTHER", "DailySpend", "Series", "daily_spend", "day_range", "exact_sum", "midnight"]
