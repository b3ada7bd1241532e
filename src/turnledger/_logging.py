"""Logging that speaks once per cause, so a malformed provider cannot flood an application's logs."""

from __future__ import annotations

import logging
import threading
from collections import Counter

logger = logging.getLogger("turnledger")

_lock = threading.Lock()
_seen: set[str] = set()
problem_counts: Counter[str] = Counter()
"""How many times each cause was hit, logged or not. Read it in tests and health checks."""


def warn_once(cause: str, message: str, *args: object, exc_info: bool = False) -> None:
    """Count ``cause`` and log ``message`` the first time it is seen in this process."""
    with _lock:
        problem_counts[cause] += 1
        if cause in _seen:
            return
        _seen.add(cause)
    logger.warning(message + " (logged once per cause)", *args, exc_info=exc_info)


def reset_warnings() -> None:
    """Forget which causes were logged (for tests)."""
    with _lock:
        _seen.clear()
        problem_counts.clear()
