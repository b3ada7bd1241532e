"""The tables turnledger owns in a database it may share with an application (and its own Alembic).

An application whose Alembic autogenerates migrations from its own models would propose dropping
every table it has no model for: its ``env.py`` leaves these out (see the README).
"""

from __future__ import annotations

from turnledger import credits_models  # noqa: F401  (registers the credit tables on Base.metadata)
from turnledger.store import models  # noqa: F401  (registers the usage tables on Base.metadata)
from turnledger.store.base import Base

VERSION_TABLE = "turnledger_alembic_version"
"""Where turnledger's migrations keep its revision: not ``alembic_version``, which is the application's."""

TABLE_NAMES: frozenset[str] = frozenset(Base.metadata.tables) | {VERSION_TABLE}
"""Every table turnledger's migrations create, its version table included."""

__all__ = ["TABLE_NAMES", "VERSION_TABLE"]
