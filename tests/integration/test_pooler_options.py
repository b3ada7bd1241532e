"""PostgreSQL behind a transaction-pooling proxy (PgBouncer), checked on the direct server.

What breaks behind the proxy is anything a server session keeps between transactions: named prepared
statements (the next transaction's session has another client's of the same name, or not this one's)
and temp tables. These tests run on one pooled connection and look at what its server session holds;
``test_pgbouncer.py`` runs the same paths through a real PgBouncer where one is installed.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from turnledger import TABLE_NAMES, BatchWriter, CreditLedger, make_engine, record_turn, session_factory, usage_report
from turnledger.errors import ConfigurationError
from turnledger.store import migrate
from turnledger.store.entries import make_entry, transaction_writer
from turnledger.store.record import turn_rows

from .conftest import PG_ADMIN_DSN, _pg_admin, create_pg_database, drop_pg_database
from .writer_support import closed_turn, stored_turn_ids


async def _one_session_engine(url: str) -> AsyncEngine:
    # One pooled connection: every statement below runs in the same server session, which is then inspected.
    return make_engine(url, pool_size=1, max_overflow=0)


async def _named_statements(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM pg_prepared_statements"))).scalar_one())


async def _every_path(engine: AsyncEngine, prefix: str, outbox: Path) -> None:
    """record_turn, a BatchWriter's COPY, a report and a credit reservation settled, on ``engine``."""
    sessions = session_factory(engine)
    async with sessions() as session:
        await record_turn(session, closed_turn(f"{prefix}-direct"), usage_type="chat")
        await session.commit()
    async with BatchWriter(engine, outbox_dir=outbox) as writer:
        for i in range(3):
            await writer.persist(closed_turn(f"{prefix}-batch-{i}"))
        await writer.flush()
    async with sessions() as session:
        assert await usage_report(session, "user")
    ledger = CreditLedger(engine)
    await ledger.grant(f"{prefix}-acct", Decimal("5"), f"{prefix}-grant")
    reservation = await ledger.reserve(f"{prefix}-acct", Decimal("1"), f"{prefix}-reserve")
    await ledger.settle(reservation, Decimal("0.25"))


@pytest.fixture
def clean_pg(pg_engine: AsyncEngine) -> str:
    """The session's migrated PostgreSQL database, emptied; its URL."""
    return pg_engine.url.render_as_string(hide_password=False)


async def test_pgbouncer_flag_leaves_no_prepared_statement_in_the_server_session(clean_pg: str, tmp_path: Path) -> None:
    engine = await _one_session_engine(f"{clean_pg}?pgbouncer=true")
    try:
        await _every_path(engine, "pooled", tmp_path / "outbox")
        assert await _named_statements(engine) == 0
        assert set(await stored_turn_ids(engine)) == {"pooled-direct", *(f"pooled-batch-{i}" for i in range(3))}
    finally:
        await engine.dispose()


async def test_without_the_flag_the_server_session_keeps_named_statements(clean_pg: str, tmp_path: Path) -> None:
    # The control: what the flag removes is there by default (and is what PgBouncer trips over).
    engine = await _one_session_engine(clean_pg)
    try:
        await _every_path(engine, "plain", tmp_path / "outbox")
        assert await _named_statements(engine) > 0
    finally:
        await engine.dispose()


async def test_asyncpg_numeric_options_in_the_url_are_numbers(clean_pg: str) -> None:
    # SQLAlchemy passes the URL's query to asyncpg as strings; "0" < 1 is a TypeError in asyncpg.
    engine = make_engine(f"{clean_pg}?statement_cache_size=0&command_timeout=30")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            assert driver._config.command_timeout == 30.0
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "query", ["timeout=5", "connect_timeout=5", "connect_timeout=0", "application_name=billing-worker"]
)
async def test_connect_timeouts_and_application_name_in_the_url_connect(clean_pg: str, query: str) -> None:
    # asyncpg's timeout= arrived as a string: the first connection failed with "TypeError: unsupported
    # operand type(s) for +: 'float' and 'str'" (a traceback from the CLI). libpq's connect_timeout= and
    # application_name=, common in URLs written for libpq, were refused ("unexpected keyword argument").
    # connect_timeout=0 is libpq's "no limit", not asyncpg's timeout=0 (a TimeoutError at once).
    engine = make_engine(f"{clean_pg}?{query}")
    try:
        async with engine.connect() as conn:
            shown = await conn.execute(text("SELECT current_setting('application_name')"))
            assert shown.scalar_one() == ("billing-worker" if "application_name" in query else "")
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "query", ["pgbouncer=maybe", "statement_cache_size=lots", "connect_timeout=soon", "command_timeout=nan"]
)
def test_a_bad_pooler_option_is_a_configuration_error(query: str) -> None:
    with pytest.raises(ConfigurationError, match=query.split("=")[0]):
        make_engine(f"postgresql://app@127.0.0.1:5432/app?{query}")


async def test_staging_copy_survives_a_server_session_without_its_temp_tables(clean_pg: str) -> None:
    """A replay's COPY goes through temp tables; behind PgBouncer the next transaction's server session
    may never have had them (another server connection, or one the pooler renewed), as here after
    ``DISCARD TEMP``. It used to fail as "turnledger's tables are missing: run `turnledger migrate`"."""
    engine = await _one_session_engine(clean_pg)
    write = transaction_writer(engine)  # not fresh: the staging path replays take
    try:
        assert await write([make_entry(turn_rows(closed_turn("stage-1"), usage_type="chat"))]) == 1
        async with engine.connect() as conn:
            await conn.exec_driver_sql("DISCARD TEMP")
            await conn.commit()
        assert await write([make_entry(turn_rows(closed_turn("stage-2"), usage_type="chat"))]) == 1
        assert set(await stored_turn_ids(engine)) == {"stage-1", "stage-2"}
    finally:
        await engine.dispose()


# What turnledger before migration 0004's audio columns ran in every staging transaction.
_EARLIER_VERSIONS_STAGES = (
    "CREATE TEMP TABLE IF NOT EXISTS turnledger_stage_usage ON COMMIT DELETE ROWS AS "
    "SELECT * FROM token_usage WITH NO DATA; ALTER TABLE turnledger_stage_usage DROP COLUMN id; "
    "CREATE TEMP TABLE IF NOT EXISTS turnledger_stage_calls ON COMMIT DELETE ROWS AS "
    'SELECT u."turn_id", c.* FROM token_usage_calls c JOIN token_usage u ON u."id" = c."usage_id" WITH NO DATA; '
    "ALTER TABLE turnledger_stage_calls DROP COLUMN usage_id, DROP COLUMN audio_input_tokens, "
    "DROP COLUMN audio_output_tokens"
)


async def test_staging_copy_in_a_server_session_an_earlier_version_staged_in(clean_pg: str) -> None:
    """Behind PgBouncer, server sessions are shared by every replica, those of the previous release
    included during a rolling deploy: a session may hold the staging tables an earlier turnledger made,
    of another shape (before 0004's audio columns). Reused by name, every replay landing there failed
    ("database error: UndefinedColumnError": 10 of 10 through a real PgBouncer whose 4 server sessions
    an earlier version had staged in)."""
    engine = await _one_session_engine(clean_pg)
    write = transaction_writer(engine)  # not fresh: the staging path replays take
    try:
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            await driver.execute(_EARLIER_VERSIONS_STAGES)
        assert await write([make_entry(turn_rows(closed_turn("staged-1"), usage_type="chat"))]) == 1
        assert set(await stored_turn_ids(engine)) == {"staged-1"}
    finally:
        await engine.dispose()


@pytest.fixture
def schema_owner_database() -> Iterator[str]:
    """A new database where a new role owns schema ``billing`` (no CREATE on ``public``): its URL as that role."""
    name, url = create_pg_database()
    role = f"tl_role_{secrets.token_hex(4)}"
    admin = make_url(PG_ADMIN_DSN).set(database=name).render_as_string(hide_password=False)

    async def setup() -> None:
        await _pg_admin(f'CREATE ROLE "{role}" LOGIN')
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(
                f'REVOKE CREATE ON SCHEMA public FROM PUBLIC; CREATE SCHEMA billing AUTHORIZATION "{role}"'
            )
        finally:
            await conn.close()

    asyncio.run(setup())
    try:
        yield make_url(url).set(username=role).render_as_string(hide_password=False)
    finally:
        drop_pg_database(name)
        asyncio.run(_pg_admin(f'DROP ROLE IF EXISTS "{role}"'))


async def test_libpq_options_put_a_schema_owner_in_its_schema(schema_owner_database: str, tmp_path: Path) -> None:
    """``?options=-csearch_path%3Dbilling``, as libpq takes it, for a role that owns only that schema:
    migrate, writes, reports and credits all in ``billing``. asyncpg used to refuse the option."""
    url = f"{schema_owner_database}?options=-csearch_path%3Dbilling"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = make_engine(url)
    try:
        await _every_path(engine, "schema", tmp_path / "outbox")
        assert set(await stored_turn_ids(engine)) == {"schema-direct", *(f"schema-batch-{i}" for i in range(3))}
        async with engine.connect() as conn:
            schemas = (
                await conn.execute(
                    text("SELECT DISTINCT table_schema FROM information_schema.tables WHERE table_name = ANY(:t)"),
                    {"t": list(TABLE_NAMES)},
                )
            ).scalars()
            assert set(schemas) == {"billing"}
    finally:
        await engine.dispose()


@pytest.mark.parametrize("options", ["-csearch_path", "--", "-x foo", "search_path=billing"])
def test_options_other_than_settings_are_a_configuration_error(options: str) -> None:
    with pytest.raises(ConfigurationError, match="options="):
        make_engine(f"postgresql://app@127.0.0.1:5432/app?options={options}")


async def test_libpq_options_with_escaped_spaces_set_what_libpq_sets(clean_pg: str) -> None:
    """libpq's ``options`` splits at spaces unless a backslash escapes one: libpq, given the same URL, sets
    exactly these two values. The URL was refused ("only settings as -c name=value are understood, not
    'public'")."""
    options = "-csearch_path%3Dbilling%5C%2C%5C%20public%20-c%20application_name%3Dbilling%5C%20worker%5C%5C1"
    engine = make_engine(f"{clean_pg}?options={options}")
    try:
        async with engine.connect() as conn:
            shown = (
                await conn.execute(text("SELECT current_setting('search_path'), current_setting('application_name')"))
            ).one()
        assert tuple(shown) == ("billing, public", "billing worker\\1")
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sslmode=require", "the driver takes no 'sslmode' option (asyncpg spells TLS ?ssl=require)"),
        ("sslrootcert=/etc/ca.pem", "the driver takes no 'sslrootcert' option (asyncpg spells TLS ?ssl=require)"),
        ("keepalives=1", "the driver takes no 'keepalives' option"),
    ],
)
def test_a_libpq_only_option_is_refused_by_make_engine_not_at_the_first_write(query: str, message: str) -> None:
    # Refused at start-up: taken, it failed every connection with asyncpg's TypeError, and a
    # BatchWriter on it put every turn in its outbox, logging one "batch write failed: TypeError".
    with pytest.raises(ConfigurationError, match=re.escape(message)) as refused:
        make_engine(f"postgresql://app:s3cret@127.0.0.1:5432/app?{query}")
    assert "s3cret" not in str(refused.value)


async def test_the_options_asyncpg_takes_are_taken(clean_pg: str) -> None:
    engine = make_engine(f"{clean_pg}?ssl=disable&target_session_attrs=any&prepared_statement_cache_size=10")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()
