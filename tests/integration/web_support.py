"""What the web-pattern tests read back: every stored call with its turn, and the provider's counts."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import RowMapping, select

from turnledger.fake_provider import DEFAULT_CONTENT
from turnledger.store.engine import make_engine
from turnledger.store.record import CALLS_TABLE, USAGE_TABLE

FAKE_COMPLETION_TOKENS = len(DEFAULT_CONTENT.split())
"""What the fake provider counts for its default answer."""


def fake_prompt_tokens(question: str) -> int:
    """What the fake provider counts for one user message (see ``_default_chat_usage``)."""
    return 5 + len(question.split())


def question_of(words: int) -> str:
    """A question whose prompt-token count tells which request it was."""
    return " ".join(["word"] * words)


async def stored_calls(url: str) -> Sequence[RowMapping]:
    """Every stored call with its turn's id, user and call count."""
    engine = make_engine(url)
    try:
        query = select(
            USAGE_TABLE.c.turn_id,
            USAGE_TABLE.c.user_id.label("turn_user_id"),
            USAGE_TABLE.c.calls.label("turn_calls"),
            CALLS_TABLE.c.call_id,
            CALLS_TABLE.c.status,
            CALLS_TABLE.c.prompt_tokens,
            CALLS_TABLE.c.completion_tokens,
            CALLS_TABLE.c.cost_usd,
        ).join(USAGE_TABLE, CALLS_TABLE.c.usage_id == USAGE_TABLE.c.id)
        async with engine.connect() as conn:
            return (await conn.execute(query)).mappings().all()
    finally:
        await engine.dispose()
