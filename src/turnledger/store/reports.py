"""Breakdowns of recorded usage: per model, user, thread (of a user), tenant or day, over a time range.

Per-model figures are summed over call rows (``token_usage_calls``); the others over turn rows
(``token_usage``), which already hold each turn's exact totals, so a per-day report reads a third
as many rows. A turn row with no call rows (written by ``record_token_usage``, which names no
model) is counted per model under the key ``None``, shown as ``(no model)``: every breakdown of the
same range adds up to the same calls, tokens, cost and unpriced calls.

Costs are exact: PostgreSQL sums ``NUMERIC``; SQLite stores decimal text, so its
query groups by cost as well and the (few) distinct costs are summed in Python with ``Decimal``.

A group whose calls are all unpriced has ``cost_usd = None`` (unknown), never 0; a mixed group
has the sum of its priced calls and says how many were unpriced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import CompoundSelect, Date, Select, case, cast, func, literal, null, select, union_all
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from turnledger.accumulator import TOKEN_FIELDS
from turnledger.records import EXACT_SUM_CONTEXT
from turnledger.store.engine import storage_error
from turnledger.store.models import TokenUsage, TokenUsageCall
from turnledger.store.record import Database, as_stored, dialect_name, is_storable


class ReportBy(StrEnum):
    MODEL = "model"
    USER = "user"
    THREAD = "thread"
    TENANT = "tenant"
    DAY = "day"


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One group of a breakdown."""

    key: str | None
    """The model, user, thread or tenant id, or the UTC day as ``YYYY-MM-DD``; ``None`` when unset
    (per model: spend recorded with :func:`~turnledger.record_token_usage`, which names no model)."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None
    """Exact sum of the priced calls; ``None`` when every call of the group is unpriced."""
    unpriced_calls: int = 0
    failed_calls: int = 0
    abandoned_calls: int = 0
    user_id: str | None = None
    """Per thread only: the user whose thread it is. A thread belongs to its user: two users' threads
    of one id (``main``, ``default``) are two groups, billed to two users."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the cost as a fixed-point decimal string (or null), never a float."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["cost_usd"] = None if self.cost_usd is None else f"{self.cost_usd:f}"
        return out


@dataclass(frozen=True, slots=True)
class ReportFilters:
    since: datetime | None = None
    """Inclusive lower bound on the turn's ``created_at``."""
    until: datetime | None = None
    """Exclusive upper bound."""
    user_id: str | None = None
    thread_id: str | None = None
    tenant_id: str | None = None
    usage_type: str | None = None


async def usage_report(
    db: Database,
    by: ReportBy | str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: str | None = None,
    thread_id: str | None = None,
    tenant_id: str | None = None,
    usage_type: str | None = None,
) -> list[ReportRow]:
    """The breakdown ``by`` model/user/thread/tenant/day, highest cost first (days in date order).

    Per thread, the groups are a user's threads (``key`` the thread id, ``user_id`` its user): apps
    name threads per user ("main", "default"), and one user's spend is never billed to another.

    Raises ``ValueError`` for an unknown ``by`` or a bound without a time zone, and
    :class:`~turnledger.errors.StorageError` (``SchemaMissingError`` when the tables are missing) if
    the database cannot answer.
    """
    grouping = ReportBy(by)
    for name, bound in (("since", since), ("until", until)):
        if bound is not None and bound.utcoffset() is None:
            # Refused here, not as "database error: ValueError" from the column type: is it UTC, or local?
            raise ValueError(f"{name} must carry a time zone (e.g. datetime(..., tzinfo=UTC)), not {bound!r}")
    filters = ReportFilters(since, until, user_id, thread_id, tenant_id, usage_type)
    exact_in_sql = dialect_name(db) == "postgresql"
    stmt = build_query(grouping, filters, exact_in_sql=exact_in_sql)
    try:
        result = await db.execute(stmt)
        raw = result.all()
    except SQLAlchemyError as exc:
        raise storage_error(exc) from exc
    rows = _merge(raw)
    if grouping is ReportBy.MODEL:
        # Empty turns (no call) have no call rows either: an all-zero "(no model)" group would be noise.
        rows = [r for r in rows if r.key is not None or r.cost_usd or any(getattr(r, n) for n in _COUNTERS)]
    return _sorted(grouping, rows)


async def by_model(db: Database, **filters: Any) -> list[ReportRow]:
    return await usage_report(db, ReportBy.MODEL, **filters)


async def by_user(db: Database, **filters: Any) -> list[ReportRow]:
    return await usage_report(db, ReportBy.USER, **filters)


async def by_thread(db: Database, **filters: Any) -> list[ReportRow]:
    return await usage_report(db, ReportBy.THREAD, **filters)


async def by_tenant(db: Database, **filters: Any) -> list[ReportRow]:
    return await usage_report(db, ReportBy.TENANT, **filters)


async def by_day(db: Database, **filters: Any) -> list[ReportRow]:
    return await usage_report(db, ReportBy.DAY, **filters)


def build_query(grouping: ReportBy, filters: ReportFilters, *, exact_in_sql: bool) -> Select[Any] | CompoundSelect[Any]:
    """The parametrized breakdown query (public so the benchmark can ``EXPLAIN`` exactly this).

    Result columns: key, cost part, calls, the token kinds, unpriced, failed, abandoned. With
    ``exact_in_sql`` the cost part is ``SUM(cost_usd)``; without, rows are also grouped by the
    cost itself and the cost part is that cost times its row count (see the module docstring).

    Per model: the call rows, plus (under a NULL model) the turn rows that have no call rows, those
    written by :func:`~turnledger.record_token_usage`, so the breakdown adds up to the others.
    """
    if grouping is ReportBy.THREAD:
        user = TokenUsage.user_id.label("user_id")
        return _grouped(TokenUsage, TokenUsage.thread_id, filters, exact_in_sql, also_by=[user])
    if grouping is not ReportBy.MODEL:
        return _grouped(TokenUsage, _key(grouping, TokenUsage, exact_in_sql=exact_in_sql), filters, exact_in_sql)
    calls = TokenUsageCall
    counters: list[ColumnElement[Any]] = [
        func.count().label("calls"),
        *[func.sum(getattr(calls, kind)).label(kind) for kind in TOKEN_FIELDS],
        func.sum(case((calls.cost_usd.is_(None), 1), else_=0)).label("unpriced_calls"),
        func.sum(case((calls.status == "failure", 1), else_=0)).label("failed_calls"),
        func.sum(case((calls.status == "abandoned", 1), else_=0)).label("abandoned_calls"),
    ]
    per_call = _grouped(calls, calls.model, filters, exact_in_sql, counters)
    # NOT EXISTS on the call rows' primary key (usage_id, seq): one index probe per turn row in range.
    has_calls = select(literal(1)).where(calls.usage_id == TokenUsage.id).exists()
    unattributed = _grouped(TokenUsage, None, filters, exact_in_sql).where(~has_calls)
    return union_all(per_call, unattributed)


def _grouped(
    t: Any,
    key_column: Any,
    filters: ReportFilters,
    exact_in_sql: bool,
    counters: list[ColumnElement[Any]] | None = None,
    also_by: Sequence[ColumnElement[Any]] = (),
) -> Select[Any]:
    """``key_column``'s groups of table ``t`` (``None``: one group keyed NULL, and no row when no row
    matches), each split by the labelled columns ``also_by`` too; the counters default to summing
    turn-row figures."""
    key = (null() if key_column is None else key_column).label("key")
    keys = ([] if key_column is None else [key]) + list(also_by)
    if counters is None:
        counters = [
            func.sum(t.calls).label("calls"),
            *[func.sum(getattr(t, kind)).label(kind) for kind in TOKEN_FIELDS],
            func.sum(t.unpriced_calls).label("unpriced_calls"),
            func.sum(t.failed_calls).label("failed_calls"),
            func.sum(t.abandoned_calls).label("abandoned_calls"),
        ]
    if exact_in_sql:
        stmt = select(key, *also_by, func.sum(t.cost_usd).label("cost"), *counters).group_by(*keys)
        if not keys:
            # PostgreSQL refuses GROUP BY NULL, and an aggregate without GROUP BY answers one row even for none.
            stmt = stmt.having(func.count() > 0)
    else:
        stmt = select(key, *also_by, t.cost_usd.label("cost"), func.count().label("rows"), *counters).group_by(
            *keys, t.cost_usd
        )
    for condition in _conditions(t, filters):
        stmt = stmt.where(condition)
    return stmt


def _key(grouping: ReportBy, t: Any, *, exact_in_sql: bool) -> ColumnElement[Any]:
    if grouping is ReportBy.MODEL:
        return t.model  # type: ignore[no-any-return]
    if grouping is ReportBy.USER:
        return t.user_id  # type: ignore[no-any-return]
    if grouping is ReportBy.THREAD:
        return t.thread_id  # type: ignore[no-any-return]
    if grouping is ReportBy.TENANT:
        return t.tenant_id  # type: ignore[no-any-return]
    if exact_in_sql:
        # The UTC calendar day, whatever the session's time zone.
        return cast(func.timezone("UTC", t.created_at), Date)
    # SQLite stores UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text.
    return func.substr(t.created_at, 1, 10)


def _conditions(t: Any, filters: ReportFilters) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if filters.since is not None:
        out.append(t.created_at >= filters.since)
    if filters.until is not None:
        out.append(t.created_at < filters.until)
    for name in ("user_id", "thread_id", "tenant_id", "usage_type"):
        value = getattr(filters, name)
        if value is not None:
            out.append(_is(getattr(t, name), name, value))
    return out


def _is(column: Any, name: str, value: str) -> ColumnElement[bool]:
    """``column`` holds ``value`` as the writers store it: an id too long for its column is stored
    shortened, a NUL removed; so the filter compares with that form too."""
    stored = as_stored(name, value)
    if stored == value:
        return column == value  # type: ignore[no-any-return]
    if is_storable(value):
        # Both: SQLite kept an over-long id whole when record_token_usage wrote it, before it fitted strings.
        return column.in_([stored, value])  # type: ignore[no-any-return]
    return column == stored  # type: ignore[no-any-return]


_COUNTERS = ("calls", *TOKEN_FIELDS, "unpriced_calls", "failed_calls", "abandoned_calls")


def _merge(raw: Sequence[Any]) -> list[ReportRow]:
    groups: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for row in raw:
        mapping = row._mapping
        key = mapping["key"]
        key = None if key is None else (key.isoformat() if hasattr(key, "isoformat") else str(key))
        acc = groups.setdefault((key, mapping.get("user_id")), dict.fromkeys(_COUNTERS, 0) | {"cost_usd": None})
        for name in _COUNTERS:
            acc[name] += int(mapping[name] or 0)
        cost = mapping["cost"]
        if cost is not None:
            # Exact, in a context of its own: a caller's getcontext().prec = 4 must not round a report, and
            # nor may 60 digits (SQLite's report would then differ from PostgreSQL's exact SUM).
            exact = EXACT_SUM_CONTEXT
            part = exact.multiply(Decimal(cost), int(mapping["rows"])) if "rows" in mapping else Decimal(cost)
            acc["cost_usd"] = part if acc["cost_usd"] is None else exact.add(acc["cost_usd"], part)
    for acc in groups.values():
        # A turn without calls is stored at an exact $0. With only unpriced calls beside it the group
        # has no priced call at all: its cost is unknown, not $0 (every priced part is a call's, or a
        # hand-recorded charge that would make the sum more than 0).
        if acc["calls"] and acc["unpriced_calls"] == acc["calls"] and acc["cost_usd"] == 0:
            acc["cost_usd"] = None
    return [ReportRow(key=key, user_id=user_id, **values) for (key, user_id), values in groups.items()]


def key_label(grouping: ReportBy, key: str | None) -> str:
    """A group's name as shown: its key, or what an unset key means in this breakdown."""
    if key is not None:
        return key
    # Per model, the unset key is spend recorded by record_token_usage, which names no model.
    return "(no model)" if grouping is ReportBy.MODEL else "(none)"


def group_label(grouping: ReportBy, row: ReportRow) -> str:
    """A group's name on its own, where no column says whose it is: a thread as ``user / thread``."""
    if grouping is ReportBy.THREAD:
        return f"{key_label(ReportBy.USER, row.user_id)} / {key_label(grouping, row.key)}"
    return key_label(grouping, row.key)


def _sorted(grouping: ReportBy, rows: list[ReportRow]) -> list[ReportRow]:
    if grouping is ReportBy.DAY:
        return sorted(rows, key=lambda r: r.key or "")
    # Highest cost first; unpriced groups (unknown cost) after the priced ones; then by key.
    return sorted(
        rows,
        key=lambda r: (
            r.cost_usd is None,
            -(r.cost_usd or Decimal(0)),
            r.key is None,
            r.key or "",
            r.user_id is None,
            r.user_id or "",
        ),
    )


__all__ = [
    "ReportBy",
    "ReportFilters",
    "ReportRow",
    "build_query",
    "by_day",
    "by_model",
    "by_tenant",
    "by_thread",
    "by_user",
    "group_label",
    "key_label",
    "usage_report",
]
