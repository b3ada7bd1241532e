"""The library's warnings, taken in by a command that says what they mean in its own words.

The CLI configures no logging, so a warning of the ``turnledger`` logger reaches the user as Python's
bare last-resort line (``could not read the price map source (FileNotFoundError) (logged once per
cause)``), beside the command's own message about the same thing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from turnledger._logging import logger

_ONCE_SUFFIX = " (logged once per cause)"  # meant for an application's log, not a person at a shell


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().removesuffix(_ONCE_SUFFIX)
        if message not in self._into:
            self._into.append(message)


@contextmanager
def library_warnings() -> Iterator[list[str]]:
    """Collect the ``turnledger`` logger's warnings (their text, once each) instead of printing them."""
    heard: list[str] = []
    handler = _Collect(heard)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield heard
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


__all__ = ["library_warnings"]
