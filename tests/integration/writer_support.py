"""Helpers shared by the BatchWriter tests: closed turns made without LiteLLM, and counting what is stored."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import RowMapping, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger.accumulator import TurnTokenAccumulator
from turnledger.records import CostSource, TokenCallRecord
from turnledger.store.entries import make_entry
from turnledger.store.outbox import OutboxJournal, encode_entry
from turnledger.store.record import CALLS_TABLE, USAGE_TABLE, TurnRows, turn_rows


def closed_turn(turn_id: str, *, calls: int = 3, user_id: str = "u-1") -> TurnTokenAccumulator:
    """A closed turn of ``calls`` priced calls: 10+20 tokens and $0.0000135 each."""
    turn = TurnTokenAccumulator(turn_id=turn_id, user_id=user_id, thread_id="t-1", tags=("bench",))
    for i in range(calls):
        turn.add(
            TokenCallRecord(
                call_id=f"{turn_id}-c{i}",
                model="gpt-4o-mini",
                provider="openai",
                prompt_tokens=10,
                completion_tokens=20,
                total_tokens=30,
                cost_usd=Decimal("0.0000135"),
                cost_source=CostSource.RESPONSE_COST,
                started_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
                latency_ms=4.5,
            )
        )
    turn._finalize()
    return turn


def leave_dead_writers_segment(directory: Path, lines: Sequence[bytes], *, writer_id: str = "dead-writer") -> None:
    """An outbox segment as a writer that died leaves it: written, rotated, its lock gone with its process."""
    journal = OutboxJournal(directory, writer_id=writer_id)
    journal.open()
    journal.append(list(lines))
    journal.rotate()
    journal._lock_fh.close()  # type: ignore[union-attr]


def outbox_lines(*rows: TurnRows) -> list[bytes]:
    return [encode_entry(make_entry(r)) for r in rows]


def poison_rows(engine: AsyncEngine) -> TurnRows:
    """Rows the database refuses, made past turn_rows' own checks (as an older version might have spilled)."""
    rows = turn_rows(closed_turn("poison"), usage_type="chat")
    if engine.dialect.name == "postgresql":
        rows.usage["user_id"] = "u" * 300
        rows.calls[1]["model"] = "gpt\x00-4o"
    else:
        # SQLite bounds no string and takes NUL: two calls with one seq break the primary key instead.
        rows.calls[1]["seq"] = 0
    return rows


async def stored_turn_ids(engine: AsyncEngine) -> Counter[str]:
    """How many ``token_usage`` rows each turn_id has (the unique index makes it 1, if all is well)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(USAGE_TABLE.c.turn_id))).scalars().all()
    return Counter(rows)


async def stored_call_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(CALLS_TABLE))).scalar_one())


async def stored_cost(engine: AsyncEngine) -> Decimal:
    """The exact sum of every stored call's cost, summed in Python (SQLite keeps money as text)."""
    async with engine.connect() as conn:
        values = (await conn.execute(select(CALLS_TABLE.c.cost_usd))).scalars().all()
    return sum((v for v in values if v is not None), Decimal(0))


async def orphan_calls(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT count(*) FROM token_usage_calls c"
                " LEFT JOIN token_usage u ON u.id = c.usage_id WHERE u.id IS NULL"
            )
        )
        return int(result.scalar_one())


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def line_count(path: Path) -> int:
    return len(path.read_bytes().splitlines())


_VARYING = {"id", "usage_id", "turn_id", "recorded_at", "call_id"}


async def stored_turn(engine: AsyncEngine, turn_id: str) -> tuple[RowMapping, Sequence[RowMapping]]:
    """A stored turn's ``token_usage`` row and its call rows in call order, as read back."""
    async with engine.connect() as conn:
        usage = (await conn.execute(select(USAGE_TABLE).where(USAGE_TABLE.c.turn_id == turn_id))).mappings().one()
        by_usage = select(CALLS_TABLE).where(CALLS_TABLE.c.usage_id == usage["id"]).order_by(CALLS_TABLE.c.seq)
        return usage, (await conn.execute(by_usage)).mappings().all()


async def stored_rows(engine: AsyncEngine, turn_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A stored turn's row and call rows, minus what differs between two recordings of equal turns."""
    usage, calls = await stored_turn(engine, turn_id)
    details = [{k: v for k, v in d.items() if k != "call_id"} for d in usage["call_details"]]
    clean_usage = {k: v for k, v in usage.items() if k not in _VARYING} | {"call_details": details}
    return clean_usage, [{k: v for k, v in c.items() if k not in _VARYING} for c in calls]


def record_syncs_and_deletes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What reaches the disk from now on, in order: ``("fsync", path)`` for a synced file or directory,
    ``("unlink", path)`` for a deleted file (a durability test checks one comes before the other)."""
    steps: list[tuple[str, str]] = []
    real_fsync, real_unlink = os.fsync, Path.unlink

    def fsync(fd: int) -> None:
        real_fsync(fd)
        steps.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def unlink(self: Path, missing_ok: bool = False) -> None:
        steps.append(("unlink", str(self)))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "unlink", unlink)
    return steps
