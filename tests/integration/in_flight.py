"""A call cancelled while the provider holds it: the request has arrived, the answer has not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from turnledger.fake_provider import FakeProvider


async def cancel_once_received(provider: FakeProvider, call: Coroutine[Any, Any, Any], *, received: int) -> None:
    """Start ``call`` and cancel it once ``provider`` has received ``received`` requests in all."""
    task = asyncio.create_task(call)
    while len(provider.requests) < received:
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
