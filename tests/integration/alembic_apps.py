"""Alembic environments beside turnledger's in one database: an application's own, and turnledger's
migrations as versions before its own version table ran them (in ``alembic_version``).

Each is an ``env.py`` written into a temp directory, the async one Alembic's template makes, run with
Alembic's API as an application's deploy would run ``alembic upgrade head``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Column, Integer, MetaData, String, Table, text

import turnledger.migrations
from turnledger.store.engine import make_engine

APP_REVISION = "a1b2c3d4e5f6"
"""The application's revision: one turnledger does not know."""

APP_METADATA = MetaData()
APP_ITEMS = Table("app_items", APP_METADATA, Column("id", Integer, primary_key=True), Column("name", String(50)))

TURNLEDGER_VERSIONS = Path(turnledger.migrations.__file__).parent / "versions"

ENV_PY = """
import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config


def run(connection):
    context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine(config.attributes["url"], poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()
    await engine.dispose()


asyncio.run(main())
"""

APP_REVISION_PY = f'''
import sqlalchemy as sa
from alembic import op

revision = "{APP_REVISION}"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("app_items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50)))


def downgrade():
    op.drop_table("app_items")
'''


def _environment(directory: Path, url: str, versions: Path) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "env.py").write_text(ENV_PY, encoding="utf-8")
    cfg = Config()
    cfg.set_main_option("script_location", str(directory))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(versions))
    cfg.attributes["url"] = url
    return cfg


def app_alembic(tmp_path: Path, url: str) -> Config:
    """The application's Alembic: one revision, creating ``app_items``; its revision in ``alembic_version``."""
    versions = tmp_path / "app_alembic" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (versions / f"{APP_REVISION}_items.py").write_text(APP_REVISION_PY, encoding="utf-8")
    return _environment(tmp_path / "app_alembic", url, versions)


def released_turnledger_alembic(tmp_path: Path, url: str) -> Config:
    """turnledger's own revisions, run as versions before its version table did: Alembic's defaults."""
    return _environment(tmp_path / "released_turnledger", url, TURNLEDGER_VERSIONS)


def upgrade(cfg: Config, revision: str = "head") -> None:
    command.upgrade(cfg, revision)


def readme_python(readme: str, heading: str) -> str:
    """The first Python block after ``heading`` in the README's text."""
    section = readme[readme.index(heading) :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def rows(url: str, table: str) -> list[Any]:
    """Every row's first column, sorted."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return sorted(r[0] for r in await conn.execute(text(f'SELECT * FROM "{table}"')))
    finally:
        await engine.dispose()


async def execute(url: str, *statements: Any) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(statement)
    finally:
        await engine.dispose()


async def run_sync(url: str, fn: Any) -> Any:
    """``fn(connection)`` on a sync connection to ``url``."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()
