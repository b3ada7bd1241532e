"""Audio tokens, billed at their own rates, are kept in the call record and in the call rows.

On PostgreSQL and SQLite: a call through the fake provider and LiteLLM for real, stored by
``record_turn`` and by a ``BatchWriter`` (COPY and INSERT); outbox lines the version before
migration 0004 wrote (``tests/fixtures/outbox_before_0004.jsonl``, written by commit 9f7030b's
``encode_line`` and ``encode_entry``: ``tests/fixtures/make_outbox_before_0004.py``) replay;
migration 0004 upgrades a database holding calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import litellm
import pytest
from sqlalchemy import MetaData, Table, insert, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import turnledger
from tests.integration.usage_blocks import AUDIO_USAGE
from turnledger import PriceTable
from turnledger.fake_provider import FakeProvider
from turnledger.store import migrate
from turnledger.store.engine import make_engine
from turnledger.store.entries import make_entry
from turnledger.store.lines import encode_line
from turnledger.store.record import CALLS_TABLE, TurnRows, insert_turn_rows, turn_rows
from turnledger.store.replay import replay_outbox
from turnledger.store.writer import BatchWriter

from .conftest import schema_diffs
from .writer_support import closed_turn, files_in, stored_turn

KEY = "sk-fake-not-a-real-key"
OLD_OUTBOX = Path(__file__).parent.parent / "fixtures" / "outbox_before_0004.jsonl"
# gpt-audio's rates, from LiteLLM's map, for a deployment it does not know.
VOICE_PRICES = {
    "models": {
        "acme-voice": {
            "input_cost_per_token": "0.0000025",
            "output_cost_per_token": "0.00001",
            "input_cost_per_audio_token": "0.000032",
            "output_cost_per_audio_token": "0.000064",
        }
    }
}
VOICE_COST = (
    200 * Decimal("0.0000025") + 800 * Decimal("0.000032") + 100 * Decimal("0.00001") + 400 * Decimal("0.000064")
)


@pytest.fixture
def voice_tracker() -> Iterator[turnledger.TokenTrackingCallback]:
    cb = turnledger.install(turnledger.TokenTrackingCallback(price_table=PriceTable.from_dict(VOICE_PRICES)))
    yield cb
    turnledger.uninstall(cb)


async def _audio_turn(fp: FakeProvider, turn_id: str) -> turnledger.TurnTokenAccumulator:
    fp.script("acme-voice", usage=AUDIO_USAGE)
    async with turnledger.scoped_turn(turn_id=turn_id, user_id="u-voice") as turn:
        await litellm.acompletion(
            model="openai/acme-voice",
            messages=[{"role": "user", "content": "say hello"}],
            api_base=fp.base_url,
            api_key=KEY,
        )
    return turn


async def _audio_columns(engine: AsyncEngine, turn_id: str) -> list[tuple[int, int, int, int]]:
    _usage, calls = await stored_turn(engine, turn_id)
    return [
        (c["prompt_tokens"], c["completion_tokens"], c["audio_input_tokens"], c["audio_output_tokens"]) for c in calls
    ]


@pytest.mark.usefixtures("voice_tracker")
async def test_an_audio_call_keeps_its_audio_tokens_in_the_record_and_the_rows(
    fake_provider: FakeProvider, engine: AsyncEngine, tmp_path: Path
) -> None:
    recorded = await _audio_turn(fake_provider, "audio-recorded")
    [record] = recorded.calls
    assert (record.prompt_tokens, record.completion_tokens) == (1000, 500)
    assert (record.audio_input_tokens, record.audio_output_tokens) == (800, 400)
    assert record.cost_usd == VOICE_COST  # the counts that priced it are the counts it shows
    assert record.to_dict()["audio_input_tokens"] == 800

    async with turnledger.session_factory(engine)() as session:
        assert await turnledger.record_turn(session, recorded, usage_type="voice") is not None
        await session.commit()
    assert await _audio_columns(engine, "audio-recorded") == [(1000, 500, 800, 400)]
    usage, _calls = await stored_turn(engine, "audio-recorded")
    [detail] = usage["call_details"]
    assert (detail["audio_input_tokens"], detail["audio_output_tokens"]) == (800, 400)

    # The batch writer: COPY on PostgreSQL, then the multi-row INSERT every backend has.
    for pg_copy in (True, False):
        turn_id = f"audio-written-{pg_copy}"
        written = await _audio_turn(fake_provider, turn_id)
        async with BatchWriter(engine, outbox_dir=tmp_path / turn_id, flush_interval=0.01, pg_copy=pg_copy) as w:
            await w.persist(written, usage_type="voice")
            await w.flush(timeout=30)
        assert await _audio_columns(engine, turn_id) == [(1000, 500, 800, 400)]


async def test_an_outbox_written_before_the_audio_columns_still_replays(engine: AsyncEngine, tmp_path: Path) -> None:
    # The old writer's segment, beside a line of this version with audio counts (one batch holds both).
    segment = tmp_path / "old-writer.000001.jsonl"
    turn = closed_turn("new-audio", calls=1)
    rows = turn_rows(turn, usage_type="voice")
    rows.calls[0].update(audio_input_tokens=7, audio_output_tokens=3)
    segment.write_bytes(OLD_OUTBOX.read_bytes() + encode_line(make_entry(rows)))

    report = await replay_outbox(engine, tmp_path)

    assert (report.inserted, len(report.bad_lines)) == (3, 0)
    assert files_in(tmp_path) == []  # nothing set aside, the segment replayed and deleted
    assert await _audio_columns(engine, "old-packed") == [(10, 20, 0, 0)]
    assert await _audio_columns(engine, "old-v1") == [(10, 20, 0, 0)]
    assert await _audio_columns(engine, "new-audio") == [(10, 20, 7, 3)]
    old_usage, [old_call] = await stored_turn(engine, "old-packed")
    assert old_usage["cost_usd"] == old_call["cost_usd"] == Decimal("0.0000135")
    assert old_usage["tags"] == ["old"]


AUDIO_COLUMNS = ("audio_input_tokens", "audio_output_tokens")
CALLS_BEFORE_0004 = Table(
    "token_usage_calls", MetaData(), *(c._copy() for c in CALLS_TABLE.columns if c.name not in AUDIO_COLUMNS)
)
"""The call table as the version before 0004 wrote to it (it names no audio column)."""


async def _write_as_before_0004(conn: AsyncConnection, turn_id: str, seqs: range) -> None:
    rows = turn_rows(closed_turn(turn_id, calls=len(seqs)), usage_type="chat")
    usage_id = (await insert_turn_rows(conn, [TurnRows(turn_id, rows.usage)]))[turn_id]
    old_calls = [
        {k: v for k, v in call.items() if k not in AUDIO_COLUMNS} | {"seq": seq, "usage_id": usage_id}
        for seq, call in zip(seqs, rows.calls, strict=True)
    ]
    await conn.execute(insert(CALLS_BEFORE_0004), old_calls)


async def _call_columns(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("token_usage_calls")})


async def test_migration_0004_upgrades_a_database_holding_calls_and_downgrades(empty_database_url: str) -> None:
    url = empty_database_url
    await migrate.upgrade_async(url, "0003")
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await _write_as_before_0004(conn, "before-0004", range(2))

        await migrate.upgrade_async(url, "0004")
        assert await migrate.current_revision_async(url) == "0004"
        assert await _call_columns(engine) >= set(AUDIO_COLUMNS)
        assert await _audio_columns(engine, "before-0004") == [(10, 20, 0, 0)] * 2
        async with engine.connect() as conn:
            assert await conn.run_sync(schema_diffs, {"token_usage", "token_usage_calls"}) == []
        # An older version still running (a rolling deploy) names no audio column: the server's 0 fills them.
        async with engine.begin() as conn:
            await _write_as_before_0004(conn, "during-deploy", range(1))
        assert await _audio_columns(engine, "during-deploy") == [(10, 20, 0, 0)]
        # NOT NULL: an unknown count is not stored as one.
        _usage, [call] = await stored_turn(engine, "during-deploy")
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(CALLS_TABLE).values({**call, "seq": 5, "audio_input_tokens": None}))

        await migrate.downgrade_async(url, "0003")
        assert await migrate.current_revision_async(url) == "0003"
        assert not await _call_columns(engine) & set(AUDIO_COLUMNS)
        # The calls survive the downgrade (SQLite rebuilds the table) and the upgrade after it.
        await migrate.upgrade_async(url)
        assert await _audio_columns(engine, "before-0004") == [(10, 20, 0, 0)] * 2
        assert await _audio_columns(engine, "during-deploy") == [(10, 20, 0, 0)]
    finally:
        await engine.dispose()


def test_the_fixture_segment_is_what_the_old_version_wrote() -> None:
    # Regenerating the fixture with this version would make the replay test prove nothing.
    data = OLD_OUTBOX.read_bytes()
    assert data.count(b"\n") == 2 and b"audio" not in data
