"""Core commands: ``version``."""

from __future__ import annotations

from turnledger.cli.app import app, console


@app.command()
def version() -> None:
    """Print turnledger's version."""
    from turnledger import __version__

    console.print(__version__)
