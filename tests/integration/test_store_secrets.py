"""No API key, auth header, prompt or completion text reaches the database: every column of every table is read."""

from __future__ import annotations

import json
import secrets
from typing import Any

import litellm
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import turnledger
from turnledger import record_token_usage, record_turn, session_factory
from turnledger.fake_provider import FakeProvider

pytestmark = pytest.mark.usefixtures("tracker")


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _every_value(connection: Connection) -> dict[str, list[str]]:
    """``{table: [every non-null value of every column of every row, as text]}`` for all tables."""
    out: dict[str, list[str]] = {}
    for table in inspect(connection).get_table_names():
        rows = connection.execute(text(f'SELECT * FROM "{table}"')).all()
        out[table] = [_as_text(v) for row in rows for v in row if v is not None]
    return out


async def test_planted_key_prompt_and_completion_are_stored_nowhere(
    engine: AsyncEngine, fake_provider: FakeProvider
) -> None:
    marker = secrets.token_hex(8)
    api_key = f"sk-planted-{marker}"
    prompt = f"PLANTED-PROMPT-{marker}: my card number is 4111 1111 1111 1111"
    completion = f"PLANTED-COMPLETION-{marker}"
    fake_provider.script("gpt-4o-mini", content=completion)
    fake_provider.script("gpt-4o", status=500)
    call_kwargs: dict[str, Any] = {
        "api_base": fake_provider.base_url,
        "api_key": api_key,
        "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": prompt}],
        "extra_headers": {"Authorization": f"Bearer {api_key}", "X-Api-Key": api_key},
        "metadata": {"note": prompt, "api_key": api_key},
    }

    async with turnledger.scoped_turn(user_id=f"user-{marker}", thread_id="t-1", tenant_id="acme") as turn:
        await litellm.acompletion(model="openai/gpt-4o-mini", **call_kwargs)
        with pytest.raises(litellm.exceptions.InternalServerError):
            await litellm.acompletion(model="openai/gpt-4o", num_retries=0, **call_kwargs)
    assert [c.status.value for c in turn.calls] == ["success", "failure"]
    assert fake_provider.requests[0].body["messages"][0]["content"] == prompt  # the prompt really went out

    async with session_factory(engine)() as session:
        assert await record_turn(session, turn, usage_type="chat") is not None
        assert record_token_usage(session, usage_type="chat", user_id=f"user-{marker}", prompt_tokens=3) is not None
        await session.commit()

    async with engine.connect() as conn:
        values = await conn.run_sync(_every_value)

    stored = "\n".join(v for table in values.values() for v in table)
    # The scan sees what was stored (attribution, the provider's request id), so it could find a leak.
    assert f"user-{marker}" in stored
    assert "req_fake_" in stored
    assert len(values["token_usage"]) > 20 and len(values["token_usage_calls"]) > 40
    for planted in (api_key, marker + ": my card", "4111 1111", completion, "Bearer "):
        leaks = [table for table, vals in values.items() if any(planted in v for v in vals)]
        assert leaks == [], f"{planted!r} found in {leaks}"
