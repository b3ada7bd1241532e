"""turnledger's schema revision, kept in a version table of its own beside an application's Alembic.

Versions before this one kept it in Alembic's default ``alembic_version``, where an application
running its own migrations keeps its revision: each side then met a revision it did not know
("Can't locate revision"). :func:`adopt_legacy_revision` moves turnledger's revision over, once, in
the migration's own transaction (under its lock), so that an existing deployment upgrades by
running ``turnledger migrate`` as before.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import column, inspect, table
from sqlalchemy.engine import Connection

from turnledger.errors import ConfigurationError
from turnledger.store.tables import VERSION_TABLE

LEGACY_VERSION_TABLE = "alembic_version"
"""Where versions before this one kept turnledger's revision (Alembic's default)."""

_FIRST_TABLES = frozenset({"token_usage", "token_usage_calls"})
"""Tables every turnledger revision has (0001 creates them)."""


def current_revision(connection: Connection, known: Collection[str]) -> str | None:
    """The revision turnledger's schema is at; ``None`` when it has none.

    A database an earlier version migrated, not yet upgraded, is at the revision it left in
    ``alembic_version``. ``known``: every revision id the installed package has.
    """
    revision = _context(connection).get_current_revision()
    return revision if revision is not None else legacy_revision(connection, known)


def legacy_revision(connection: Connection, known: Collection[str]) -> str | None:
    """turnledger's revision as an earlier version left it in ``alembic_version``, if it is there to adopt.

    Only when turnledger's own version table does not exist yet, and only a revision id of
    turnledger's in a database holding turnledger's tables: an application's revision that happens
    to share an id ("0002") in a database turnledger never migrated is the application's. Raises
    :class:`~turnledger.errors.ConfigurationError` when several of turnledger's ids are there beside its
    tables: which one is turnledger's cannot be told.
    """
    tables = set(inspect(connection).get_table_names())
    if VERSION_TABLE in tables or LEGACY_VERSION_TABLE not in tables or not tables >= _FIRST_TABLES:
        return None
    heads = MigrationContext.configure(connection, opts={"version_table": LEGACY_VERSION_TABLE}).get_current_heads()
    ours = sorted(head for head in heads if head in known)
    if len(ours) > 1:
        # turnledger's history is linear, so an earlier version left one of them; the others are the
        # application's, named like turnledger's ("0001"). Taking none would read turnledger's tables
        # as absent and fail on creating them again ("token_usage already exists"); taking the wrong
        # one would skip or repeat migrations. Which is which, only a person can tell.
        raise ConfigurationError(
            f"{LEGACY_VERSION_TABLE} holds {', '.join(ours)}, all revision ids of turnledger's, beside "
            "turnledger's tables: an earlier turnledger version left one of them there and the others are "
            "the application's. Create turnledger's own version table and move its revision there "
            f"(CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY); INSERT INTO "
            f"{VERSION_TABLE} VALUES ('<turnledger's>'); DELETE FROM {LEGACY_VERSION_TABLE} WHERE "
            "version_num = '<turnledger's>'), then migrate again"
        )
    return ours[0] if ours else None


def adopt_legacy_revision(connection: Connection, script: ScriptDirectory) -> str | None:
    """Move turnledger's revision from ``alembic_version`` to its own table; the revision moved, if any.

    The row goes in the caller's transaction: a migration that fails after it leaves it where it
    was. The ``alembic_version`` table and every other row in it stay as they are.
    """
    revision = legacy_revision(connection, {rev.revision for rev in script.walk_revisions()})
    if revision is None:
        return None
    _context(connection).stamp(script, revision)
    legacy = table(LEGACY_VERSION_TABLE, column("version_num"))
    connection.execute(legacy.delete().where(legacy.c.version_num == revision))
    return revision


def legacy_adoption_sql(revision: str) -> str:
    """PostgreSQL that does what :func:`adopt_legacy_revision` does, for an offline (``--sql``) script
    upgrading from ``revision``: the script's first ``UPDATE`` of turnledger's version table would
    otherwise fail on a deployment an earlier version migrated, which has none. Nothing is done where
    turnledger's version table exists already (or ``alembic_version`` does not)."""
    if not _REVISION_ID.fullmatch(revision):
        raise ValueError(f"not a revision id: {revision!r}")
    return f"""DO $$
BEGIN
    -- Nested: PL/pgSQL plans a whole condition, and a query of a missing table fails even unevaluated.
    IF to_regclass('{VERSION_TABLE}') IS NULL AND to_regclass('{LEGACY_VERSION_TABLE}') IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM {LEGACY_VERSION_TABLE} WHERE version_num = '{revision}') THEN
            CREATE TABLE {VERSION_TABLE} (
                version_num VARCHAR(32) NOT NULL,
                CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num)
            );
            INSERT INTO {VERSION_TABLE} (version_num) VALUES ('{revision}');
            DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = '{revision}';
        END IF;
    END IF;
END $$"""


_REVISION_ID = re.compile(r"[0-9A-Za-z_]{1,32}")
"""What a revision id of turnledger's looks like: safe to write into SQL as a literal."""


def _context(connection: Connection) -> MigrationContext:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})


__all__ = [
    "LEGACY_VERSION_TABLE",
    "adopt_legacy_revision",
    "current_revision",
    "legacy_adoption_sql",
    "legacy_revision",
]
