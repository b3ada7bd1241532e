"""Turns a live batch could not store because another turn already holds their ``turn_id``.

Every write skips a ``turn_id`` already stored, so that a turn written twice (a retried batch, one
handed over twice) is stored once. A *different* turn under the same id (a caller that names its
turns by a request or message id, and a client that retried the request) is skipped just the same:
the provider billed its calls, yet no report would hold them, and nothing said so. It is told from
the same turn written again by what it stored: when it opened, how many calls, their tokens, what
they cost, and the ids of those calls. The figures alone are not enough: a caller passing its own
``created_at`` (a message's time) for a retried request of one call to an unpriced model, or of
calls answered alike, stores the same three figures for two turns billed twice.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from turnledger.errors import TurnIdReused
from turnledger.store.models import TokenUsage

if TYPE_CHECKING:
    # Only for annotations: entries imports record, which imports this module.
    from turnledger.store.entries import Entry, WriteFn

__all__ = ["REUSED_REASON", "ReusedFn", "TurnIdReused", "holds_another_turn", "reused_turn_ids", "setting_aside_reused"]

REUSED_REASON = "another turn is stored under its turn_id: its calls are in no report"


ReusedFn = Callable[[Sequence["Entry"]], Awaitable[list["Entry"]]]
"""The entries of a batch just committed whose ``turn_id`` another stored turn holds."""


def _instant(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return value


def _cost(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _call_ids(call_details: Any) -> tuple[Any, ...] | None:
    """The call ids in a turn row's ``call_details`` (the same document on both sides: written from it;
    an outbox entry holds it as its JSON text)."""
    if isinstance(call_details, str | bytes):
        try:
            call_details = json.loads(call_details)
        except ValueError:
            return None
    if not isinstance(call_details, list):
        return None
    return tuple(d.get("call_id") if isinstance(d, Mapping) else None for d in call_details)


_STORED = (
    TokenUsage.created_at,
    TokenUsage.calls,
    TokenUsage.cost_usd,
    TokenUsage.prompt_tokens,
    TokenUsage.completion_tokens,
    TokenUsage.total_tokens,
    TokenUsage.call_details,
)
"""What a stored turn is told by, in :func:`_fingerprint`'s order."""


def _fingerprint(
    created_at: Any,
    calls: Any,
    cost_usd: Any,
    prompt_tokens: Any,
    completion_tokens: Any,
    total_tokens: Any,
    call_details: Any,
) -> tuple[Any, ...]:
    tokens = tuple(None if n is None else int(n) for n in (prompt_tokens, completion_tokens, total_tokens))
    return _instant(created_at), int(calls), _cost(cost_usd), tokens, _call_ids(call_details)


def _usage_fingerprint(usage: Mapping[str, Any]) -> tuple[Any, ...]:
    return _fingerprint(*(usage.get(column.key) for column in _STORED))


async def holds_another_turn(db: AsyncSession | AsyncConnection, usage: Mapping[str, Any]) -> bool:
    """Whether a turn other than the one of this ``token_usage`` row is stored under its ``turn_id``
    (read in ``db``'s transaction, where an insert of the row was just skipped)."""
    stmt = select(*_STORED).where(TokenUsage.turn_id == usage["turn_id"])
    stored = (await db.execute(stmt)).first()
    return stored is not None and _fingerprint(*stored) != _usage_fingerprint(usage)


async def reused_turn_ids(engine: AsyncEngine, entries: Sequence[Entry]) -> list[Entry]:
    """The entries whose ``turn_id`` is stored for another turn (read after their batch committed)."""
    wanted = {e["turn_id"] for e in entries}
    stored: dict[str, tuple[Any, ...]] = {}
    async with engine.connect() as conn:
        ids = sorted(wanted)
        for start in range(0, len(ids), 1000):
            rows = await conn.execute(
                select(TokenUsage.turn_id, *_STORED).where(TokenUsage.turn_id.in_(ids[start : start + 1000]))
            )
            stored.update({turn_id: _fingerprint(*figures) for turn_id, *figures in rows})
    return [e for e in entries if e["turn_id"] in stored and stored[e["turn_id"]] != _usage_fingerprint(e["usage"])]


def setting_aside_reused(write: WriteFn, find: ReusedFn, set_aside: Callable[[Sequence[Entry]], None]) -> WriteFn:
    """``write``, then, if it stored fewer turns than it was given, ``set_aside`` the ones ``find`` says
    another turn holds the id of: before the write returns, so that a batch counted as done is one
    whose skipped turns were checked. Should the check fail, the write fails with it and is retried
    (a no-op for what it stored): a turn is never taken as stored because the check could not run.
    """

    async def write_checked(entries: Sequence[Entry]) -> int:
        new = await write(entries)
        if new < len(entries) and (reused := await find(entries)):
            set_aside(reused)
        return new

    return write_checked
