"""Settings read from the environment, in one place."""

from __future__ import annotations

import os

DATABASE_URL_ENV = "TURNLEDGER_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./turnledger.db"


def database_url(explicit: str | None = None) -> str:
    """The database URL: the explicit one, else ``TURNLEDGER_DATABASE_URL``, else SQLite ``./turnledger.db``."""
    return explicit or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
