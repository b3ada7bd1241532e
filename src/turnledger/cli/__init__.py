"""The ``turnledger`` command. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

from turnledger.cli.app import app, main

# Command modules register on `app` when imported.
from turnledger.cli import commands_core as _core  # noqa: F401  isort: skip
from turnledger.cli import commands_chart as _chart  # noqa: F401  isort: skip
from turnledger.cli import commands_demo as _demo  # noqa: F401  isort: skip
from turnledger.cli import commands_credits as _credits  # noqa: F401  isort: skip
from turnledger.cli import commands_prices as _prices  # noqa: F401  isort: skip
from turnledger.cli import commands_store as _store  # noqa: F401  isort: skip
from turnledger.cli import commands_replay as _replay  # noqa: F401  isort: skip

__all__ = ["app", "main"]
