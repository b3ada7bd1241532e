"""turnledger in a database whose application runs its own Alembic migrations, on PostgreSQL and SQLite.

Each keeps its revision in its own version table, whichever migrates first; a database an earlier
turnledger migrated (its revision in ``alembic_version``) upgrades with ``turnledger migrate`` alone.
"""

from __future__ import annotations

import asyncio
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection

import turnledger
from turnledger import CreditLedger, make_engine, record_token_usage, session_factory
from turnledger.store import migrate
from turnledger.store.models import TokenUsage
from turnledger.store.tables import VERSION_TABLE

from . import cli_run
from .alembic_apps import (
    APP_ITEMS,
    APP_METADATA,
    APP_REVISION,
    app_alembic,
    execute,
    readme_python,
    released_turnledger_alembic,
    rows,
    run_sync,
    upgrade,
)
from .conftest import table_names

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _migrate_cli(url: str) -> None:
    result = cli_run.invoke("migrate", "--database-url", url)
    assert result.exit_code == 0, result.output
    assert f"is at revision {migrate.head_revision()}" in result.stdout


def _app_heads(connection: Connection) -> tuple[str, ...]:
    """The revision the application's Alembic reads (its default version table)."""
    return tuple(MigrationContext.configure(connection).get_current_heads())


async def _seed(url: str) -> None:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            record_token_usage(
                session, usage_type="chat", user_id="u-1", turn_id="kept", prompt_tokens=10, cost_usd="0.25"
            )
            await session.commit()
        await CreditLedger(engine).grant("acct", Decimal("1.5"), "grant-1")
    finally:
        await engine.dispose()


async def _seeded(url: str) -> tuple[Any, Decimal]:
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            kept = (await session.execute(select(TokenUsage.turn_id, TokenUsage.cost_usd))).all()
        return kept, (await CreditLedger(engine).balance("acct")).balance
    finally:
        await engine.dispose()


def test_turnledger_migrates_a_database_whose_app_migrated_first(empty_database_url: str, tmp_path: Path) -> None:
    # Before: "error: migration: Can't locate revision identified by 'a1b2c3d4e5f6'", exit 2.
    url = empty_database_url
    app = app_alembic(tmp_path, url)
    upgrade(app)
    asyncio.run(execute(url, insert(APP_ITEMS).values(name="app data")))

    _migrate_cli(url)
    _migrate_cli(url)  # again: nothing to do

    assert asyncio.run(rows(url, "alembic_version")) == [APP_REVISION]
    assert asyncio.run(rows(url, VERSION_TABLE)) == [migrate.head_revision()]
    upgrade(app)  # the application's next deploy finds its own revision
    assert asyncio.run(run_sync(url, _app_heads)) == (APP_REVISION,)
    assert asyncio.run(rows(url, "app_items")) == [1]
    # Reports read turnledger's tables: present, so no "run turnledger migrate" (exit 3).
    report = cli_run.invoke("report", "--database-url", url, "--format", "json")
    assert report.exit_code == 0, report.output


def test_an_app_migrates_a_database_turnledger_migrated_first(empty_database_url: str, tmp_path: Path) -> None:
    # Before: the application's `alembic upgrade` failed: "Can't locate revision identified by '0004'".
    url = empty_database_url
    migrate.upgrade(url)
    asyncio.run(_seed(url))

    upgrade(app_alembic(tmp_path, url))

    assert asyncio.run(run_sync(url, _app_heads)) == (APP_REVISION,)
    assert migrate.current_revision(url) == migrate.head_revision()
    _migrate_cli(url)
    assert asyncio.run(_seeded(url)) == ([("kept", Decimal("0.25"))], Decimal("1.5"))


def test_the_readme_filter_keeps_an_apps_autogenerate_off_turnledgers_tables(
    empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    upgrade(app_alembic(tmp_path, url))
    migrate.upgrade(url)
    configured: dict[str, Any] = {}

    class Context:  # what the README's lines call, in the app's env.py
        @staticmethod
        def configure(**kwargs: Any) -> None:
            configured.update(kwargs)

    namespace = {"context": Context, "connection": None, "target_metadata": APP_METADATA}
    exec(readme_python(README, "beside your own Alembic"), namespace)
    include_object = configured["include_object"]

    def diffs(connection: Connection, **opts: Any) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection, opts=opts), APP_METADATA))

    # Without the filter the app's autogenerate proposes dropping every turnledger table.
    unfiltered = asyncio.run(run_sync(url, diffs))
    assert {diff[1].name for diff in unfiltered if diff[0] == "remove_table"} == turnledger.TABLE_NAMES
    assert asyncio.run(run_sync(url, lambda c: diffs(c, include_object=include_object))) == []


def test_table_names_are_every_table_turnledgers_migrations_create(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    assert asyncio.run(table_names(empty_database_url)) == turnledger.TABLE_NAMES


def test_a_database_an_earlier_version_migrated_upgrades_keeping_data_and_the_apps_revision(
    empty_database_url: str, tmp_path: Path
) -> None:
    # Before: two rows in alembic_version, and `turnledger migrate` failed on the app's revision.
    url = empty_database_url
    upgrade(released_turnledger_alembic(tmp_path, url), "0003")  # turnledger's revision in alembic_version
    asyncio.run(_seed(url))
    # An application's revision beside it (written as its `alembic stamp` would).
    asyncio.run(execute(url, text("INSERT INTO alembic_version (version_num) VALUES (:v)").bindparams(v=APP_REVISION)))
    assert asyncio.run(rows(url, "alembic_version")) == sorted(["0003", APP_REVISION])
    assert migrate.current_revision(url) == "0003"  # read where the earlier version left it

    _migrate_cli(url)

    assert asyncio.run(rows(url, VERSION_TABLE)) == [migrate.head_revision()]
    assert asyncio.run(rows(url, "alembic_version")) == [APP_REVISION]  # the app's row, its table kept
    assert asyncio.run(_seeded(url)) == ([("kept", Decimal("0.25"))], Decimal("1.5"))
    _migrate_cli(url)


def test_an_apps_revision_named_like_one_of_turnledgers_is_never_taken(empty_database_url: str, tmp_path: Path) -> None:
    # "0002" is a revision id of turnledger's, but no turnledger table is there: the application's.
    url = empty_database_url
    upgrade(app_alembic(tmp_path, url))
    asyncio.run(execute(url, text("UPDATE alembic_version SET version_num = '0002'")))
    assert migrate.current_revision(url) is None

    _migrate_cli(url)

    assert asyncio.run(rows(url, "alembic_version")) == ["0002"]
    assert asyncio.run(rows(url, VERSION_TABLE)) == [migrate.head_revision()]


def test_an_apps_database_without_turnledgers_tables_reads_as_not_migrated(
    empty_database_url: str, tmp_path: Path
) -> None:
    # Before: turnledger reported the app's revision as its own.
    url = empty_database_url
    upgrade(app_alembic(tmp_path, url))
    assert migrate.current_revision(url) is None
    # Exit 3, "run turnledger migrate": the app's version table is not turnledger's schema.
    for command in (["report"], ["credits", "balance", "acct"]):
        result = cli_run.invoke(*command, "--database-url", url)
        assert result.exit_code == 3, result.output
    assert asyncio.run(run_sync(url, lambda c: c.execute(select(func.count()).select_from(APP_ITEMS)).scalar())) == 0


def test_a_database_an_earlier_version_migrated_beside_an_app_revision_named_like_turnledgers_is_refused_plainly(
    empty_database_url: str, tmp_path: Path
) -> None:
    # An application naming its revisions "0001", "0002"... (alembic revision --rev-id) beside a
    # deployment an earlier turnledger version migrated to 0003. Before: turnledger read its tables as
    # absent and failed creating them ("table token_usage already exists", exit 1).
    url = empty_database_url
    upgrade(released_turnledger_alembic(tmp_path, url), "0003")
    asyncio.run(_seed(url))
    asyncio.run(execute(url, text("INSERT INTO alembic_version (version_num) VALUES ('0002')")))

    result = cli_run.invoke("migrate", "--database-url", url)

    assert result.exit_code == 2, result.output
    assert "alembic_version holds 0002, 0003" in " ".join(result.output.split())
    assert asyncio.run(rows(url, "alembic_version")) == ["0002", "0003"]
    assert VERSION_TABLE not in asyncio.run(table_names(url))
    assert asyncio.run(_seeded(url)) == ([("kept", Decimal("0.25"))], Decimal("1.5"))


async def _run_script(url: str, script: str) -> None:
    """An offline migration script run as psql runs it: every statement, in the script's own transaction."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            await driver.execute(script)  # asyncpg: no parameters, several statements
    finally:
        await engine.dispose()


@pytest.mark.parametrize("legacy", [True, False], ids=["earlier-version", "own-version-table"])
def test_an_offline_script_from_a_revision_upgrades_a_database_an_earlier_version_migrated(
    empty_database_url: str, tmp_path: Path, legacy: bool
) -> None:
    # Before: the script's first statement, UPDATE turnledger_alembic_version, failed on a database an
    # earlier version migrated ("relation turnledger_alembic_version does not exist").
    url = empty_database_url
    if not url.startswith("postgresql"):
        pytest.skip("offline adoption is written for PostgreSQL")
    upgrade(released_turnledger_alembic(tmp_path, url) if legacy else migrate.alembic_config(url), "0003")
    asyncio.run(_seed(url))
    if legacy:
        asyncio.run(
            execute(url, text("INSERT INTO alembic_version (version_num) VALUES (:v)").bindparams(v=APP_REVISION))
        )
    cfg = migrate.alembic_config(url)
    cfg.output_buffer = io.StringIO()
    alembic_command.upgrade(cfg, "0003:head", sql=True)

    asyncio.run(_run_script(url, cfg.output_buffer.getvalue()))

    assert migrate.current_revision(url) == migrate.head_revision()
    assert asyncio.run(rows(url, VERSION_TABLE)) == [migrate.head_revision()]
    if legacy:
        assert asyncio.run(rows(url, "alembic_version")) == [APP_REVISION]
    assert asyncio.run(_seeded(url)) == ([("kept", Decimal("0.25"))], Decimal("1.5"))
