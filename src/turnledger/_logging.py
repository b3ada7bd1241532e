"""Logging that speaks once per cause, so a malformed provider cannot flood an application's logs."""

from __future__ import annotations

import logging
import threading
from collections import Counter

logger = logging.getLogger("turnledger")

MAX_DETAILED_CAUSES = 1000
"""Distinct ``cause:detail`` keys remembered at most. A detail is text from outside the code (a model
name, which a proxy takes from its clients): without a bound, a process that sees a new model per
call would remember one key per call. Past the bound, a detail not seen before is counted and logged
under ``cause:*`` (once, naming the first such detail); the keys already known keep their own counts.
So no hit is lost, and none is counted under another detail than its own or ``*``."""

OTHER_DETAILS = "*"

_lock = threading.Lock()
_seen: set[str] = set()
problem_counts: Counter[str] = Counter()
"""How many times each cause was hit, logged or not. Read it in tests and health checks."""
_detailed = 0
"""Keys of ``problem_counts`` made with a detail other than :data:`OTHER_DETAILS`."""


def warn_once(cause: str, message: str, *args: object, exc_info: bool = False, detail: str | None = None) -> None:
    """Count ``cause`` (``cause:detail`` when a detail is given) and log ``message`` the first time it is
    seen in this process. ``cause`` is fixed text of the code; any text that comes from outside goes in
    ``detail``, whose keys are bounded (see :data:`MAX_DETAILED_CAUSES`)."""
    global _detailed
    with _lock:
        key = cause
        if detail is not None:
            key = f"{cause}:{detail}"
            if key not in problem_counts:
                if _detailed >= MAX_DETAILED_CAUSES:
                    key = f"{cause}:{OTHER_DETAILS}"
                else:
                    _detailed += 1
        problem_counts[key] += 1
        if key in _seen:
            return
        _seen.add(key)
    logger.warning(message + " (logged once per cause)", *args, exc_info=exc_info)


def reset_warnings() -> None:
    """Forget which causes were logged (for tests)."""
    global _detailed
    with _lock:
        _seen.clear()
        problem_counts.clear()
        _detailed = 0
