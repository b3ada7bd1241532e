"""Help screens that show a flag as a flag: ``--json``, not ``--json <bool>``.

typer's rich help (0.29) prints a type placeholder after every option, flags included (``--help
<bool>``), which reads as an option that takes a value. Its plain help already leaves flags bare; an
empty metavar makes the rich one do the same. Parsing is untouched: a flag never takes a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType


def _bare_flags(command: _click.Command, ctx: _click.Context) -> None:
    # get_params includes the --help option, which click builds on first use, not at declaration.
    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


class PlainFlagsCommand(TyperCommand):
    """A command whose help shows its flags without a value placeholder."""

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _bare_flags(self, ctx)
        super().format_help(ctx, formatter)


class PlainFlagsGroup(TyperGroup):
    """A command group whose help shows its flags (``--version``, ``--help``) without a value placeholder."""

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _bare_flags(self, ctx)
        super().format_help(ctx, formatter)


class PlainFlagsTyper(typer.Typer):
    """A ``typer.Typer`` whose group and commands show flags as flags (``cls=`` given to either still wins)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", PlainFlagsGroup)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", PlainFlagsCommand)
        return super().command(*args, **kwargs)


__all__ = ["PlainFlagsCommand", "PlainFlagsGroup", "PlainFlagsTyper"]
