"""Settings read from the environment, in one place."""

from __future__ import annotations

import os
from pathlib import Path

DATABASE_URL_ENV = "TURNLEDGER_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./turnledger.db"


def database_url(explicit: str | None = None) -> str:
    """The database URL: the explicit one, else ``TURNLEDGER_DATABASE_URL``, else SQLite ``./turnledger.db``."""
    return explicit or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL


OUTBOX_DIR_ENV = "TURNLEDGER_OUTBOX_DIR"
DEFAULT_OUTBOX_DIR = "./turnledger-outbox"


def outbox_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The outbox directory: the explicit one, else ``$TURNLEDGER_OUTBOX_DIR``, else ``./turnledger-outbox``."""
    return Path(explicit or os.environ.get(OUTBOX_DIR_ENV) or DEFAULT_OUTBOX_DIR)
