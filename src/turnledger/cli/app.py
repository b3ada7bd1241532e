"""The typer application, its shared options and the helpers every command uses.

Exit codes scripts can rely on: 0 ok, 1 the operation failed (e.g. database unreachable),
2 bad input (a bad flag value, URL or file), 3 the schema is missing (run ``turnledger migrate``),
4 done, but some input was set aside for a person to look at (``replay``: lines moved to ``*.rejected``).
"""

from __future__ import annotations

import gc
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from turnledger.cli.closed_pipe import StdoutClosed, end_as_closed_pipe, watching_stdout
from turnledger.cli.plain_flags import PlainFlagsTyper

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SCHEMA_MISSING = 3
EXIT_SET_ASIDE = 4

app = PlainFlagsTyper(
    name="turnledger",
    help="Per-turn LLM token and cost accounting for LiteLLM applications.",
    epilog="New here? `turnledger demo` records a few turns from a local fake provider: no key, no network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(wanted: bool) -> None:
    if wanted:
        from turnledger import __version__

        console.print(__version__, markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print turnledger's version and exit."),
    ] = False,
) -> None:
    """turnledger: which LLM calls each user turn made, their tokens, and their exact cost."""


console = Console()
err_console = Console(stderr=True)

# No `envvar=`: the command reads $TURNLEDGER_DATABASE_URL through turnledger.config, as the library
# does, so a URL the option holds is the flag's and an error can say which one to fix (db.url_source).
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy async URL; defaults to $TURNLEDGER_DATABASE_URL, else sqlite ./turnledger.db.",
    ),
]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print a one-line error (no traceback) and exit with ``code``."""
    # The message is text, not markup: a path or an extra like `turnledger[chart]` prints as written.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str | None, *, now: datetime | None = None, option: str = "--since") -> datetime | None:
    """``7d``, ``24h``, ``30m`` (ago), ``now``, or an ISO date/datetime (UTC if no zone) -> aware UTC datetime."""
    if value is None or value == "":
        return None
    now = now or datetime.now(UTC)
    if value.strip().lower() == "now":
        return now
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        try:
            return now - timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            fail(f"{option}: {value!r} reaches before year 1", EXIT_BAD_INPUT)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"{option}: cannot read {value!r}; use e.g. 7d, 24h, 30m, 2026-11-01 or 2026-11-01T12:00", EXIT_BAD_INPUT)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def require_order(start: datetime | None, end: datetime | None) -> None:
    """Exit 2 for an empty or inverted ``--since``/``--until`` range: its answer could only read as "no usage"."""
    if start is not None and end is not None and end <= start:
        fail(f"--until ({end:%Y-%m-%d %H:%M}) must be after --since ({start:%Y-%m-%d %H:%M})", EXIT_BAD_INPUT)


def is_terminal() -> bool:
    """Progress bars only when a person is watching."""
    return sys.stderr.isatty()


def main() -> None:
    watching_stdout()
    try:
        try:
            app()
        finally:
            # Here, not at exit, so that output the reader left unread is a closed pipe, not an
            # "Exception ignored" message and exit code 120.
            sys.stdout.flush()
    except StdoutClosed:
        end_as_closed_pipe()
    finally:
        # At exit the interpreter would garbage-collect LiteLLM's hundreds of thousands of objects,
        # about a second per command (measured: `turnledger version` 3.3 s -> 2.3 s). Frozen objects
        # are skipped by that collection; atexit handlers and ordinary deallocation still run.
        gc.freeze()
