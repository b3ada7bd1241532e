"""The tables turnledger owns in a database it may share with an application (and its own Alembic)."""

from __future__ import annotations

VERSION_TABLE = "turnledger_alembic_version"
"""Where turnledger's migrations keep its revision: not ``alembic_version``, which is the application's."""

__all__ = ["VERSION_TABLE"]
