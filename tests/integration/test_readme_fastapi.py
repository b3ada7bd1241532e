"""The README's streaming FastAPI endpoint, run as written against the fake provider and a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, MutableMapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import litellm
import pytest

import turnledger
from turnledger.fake_provider import FakeProvider

from .readme_blocks import readme_python
from .web_support import FAKE_COMPLETION_TOKENS, fake_prompt_tokens, question_of, stored_calls

# FastAPI runs a `yield` dependency's exit after the response only from 0.118 on: older, the example is wrong.
fastapi = pytest.importorskip("fastapi", minversion="0.118")
fastapi_responses = pytest.importorskip("fastapi.responses")

EXAMPLE = readme_python("#### A streaming endpoint (FastAPI)")
ASGI = MutableMapping[str, Any]


@pytest.fixture
def example(
    database_url: str, fake_provider: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The example's module namespace, configured as a deployment would be: through the environment."""
    monkeypatch.setenv("TURNLEDGER_DATABASE_URL", database_url)
    monkeypatch.setenv("TURNLEDGER_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("OPENAI_BASE_URL", fake_provider.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-not-a-real-key")
    namespace: dict[str, Any] = {"__name__": "readme_fastapi_example"}
    exec(compile(EXAMPLE, "README.md", "exec"), namespace)
    return namespace


async def chat_then_disconnect(app: Any, query: dict[str, str]) -> list[bytes]:
    """One GET /chat whose client goes away after the first chunk of the body, as a server reports it."""
    first_chunk = asyncio.Event()
    chunks: list[bytes] = []
    requested = False

    async def receive() -> ASGI:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await first_chunk.wait()
        return {"type": "http.disconnect"}

    async def send(message: ASGI) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            first_chunk.set()

    scope: ASGI = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/chat",
        "raw_path": b"/chat",
        "query_string": urlencode(query).encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return chunks


async def test_the_readme_fastapi_stream_bills_every_call_once_to_its_turn(
    example: dict[str, Any], database_url: str, fake_provider: FakeProvider
) -> None:
    app = example["app"]
    resources: dict[str, Any] = example["resources"]
    words = range(1, 9)
    async with app.router.lifespan_context(app):
        ledger: turnledger.CreditLedger = resources["ledger"]
        await ledger.grant("u-paid", Decimal(1), "grant-paid")
        await ledger.grant("u-gone", Decimal(1), "grant-gone")
        await ledger.open_account("u-broke")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            answers = await asyncio.gather(
                *(client.get("/chat", params={"user_id": "u-paid", "question": question_of(n)}) for n in words)
            )
            refused = await client.get("/chat", params={"user_id": "u-broke", "question": "hi"})
            # A user nobody granted credits to yet: no account at all, nothing available.
            newcomer = await client.get("/chat", params={"user_id": "u-new", "question": "hi"})
        fake_provider.script("gpt-4o-mini", content=" ".join(["token"] * 40), chunk_delay_s=0.05)
        delivered = await chat_then_disconnect(app, {"user_id": "u-gone", "question": "hi"})
    # Leaving the lifespan closed the writer: every turn it was handed is stored by now.

    assert [(a.status_code, a.text) for a in answers] == [(200, "Hello from the fake provider.")] * len(words)
    assert (refused.status_code, refused.json()) == (402, {"error": "insufficient credits"})
    assert (newcomer.status_code, newcomer.json()) == (402, {"error": "insufficient credits"})
    assert 0 < len(delivered) < 40
    calls = await stored_calls(database_url)
    assert len(fake_provider.requests) == len(words) + 1 == len(calls) == len({c["call_id"] for c in calls})
    assert all(c["turn_calls"] == 1 for c in calls)  # one turn per request
    paid = [c for c in calls if c["turn_user_id"] == "u-paid"]
    # The provider's own counts, each in the turn of the request that made the call.
    assert sorted((c["status"], c["prompt_tokens"], c["completion_tokens"]) for c in paid) == [
        ("success", fake_prompt_tokens(question_of(n)), FAKE_COMPLETION_TOKENS) for n in words
    ]
    [gone] = [c for c in calls if c["turn_user_id"] == "u-gone"]
    assert gone["status"] == "abandoned" and gone["prompt_tokens"] > 0
    # Each turn was settled at its stored cost; the refused one reserved nothing and stored nothing.
    paid_balance, gone_balance, broke_balance = [await ledger.balance(a) for a in ("u-paid", "u-gone", "u-broke")]
    assert (paid_balance.balance, paid_balance.held) == (1 - sum(c["cost_usd"] for c in paid), Decimal(0))
    assert (gone_balance.balance, gone_balance.held) == (1 - gone["cost_usd"], Decimal(0))
    assert (broke_balance.balance, broke_balance.held) == (Decimal(0), Decimal(0))


def streamed_question(question: str) -> Any:
    """The README endpoint's call and body, without its dependency: the scope is the test's to place."""

    async def respond() -> Any:
        stream = await litellm.acompletion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
        )

        async def body() -> AsyncIterator[str]:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return fastapi_responses.StreamingResponse(body(), media_type="text/plain")

    return respond()


@pytest.mark.parametrize("place", ["endpoint", "base_http_middleware"])
async def test_a_scope_that_exits_before_the_body_is_sent_stores_an_estimate(
    example: dict[str, Any], database_url: str, place: str
) -> None:
    """What the README warns of: the turn stores the call abandoned, and the provider's counts come late."""
    app = example["app"]
    resources: dict[str, Any] = example["resources"]
    turns: list[turnledger.TurnTokenAccumulator] = []

    def scope() -> turnledger.scoped_turn:
        opened = turnledger.scoped_turn(user_id="u-early", persist=resources["writer"], settle_timeout=0.2)
        turns.append(opened.turn)
        return opened

    async def in_body(question: str) -> Any:
        async with scope():
            return await streamed_question(question)

    async def plain(question: str) -> Any:
        return await streamed_question(question)

    async def dispatch(request: Any, call_next: Any) -> Any:
        async with scope():
            return await call_next(request)

    if place == "endpoint":
        app.add_api_route("/early", in_body)
    else:
        app.add_api_route("/early", plain)
        app.add_middleware(pytest.importorskip("starlette.middleware.base").BaseHTTPMiddleware, dispatch=dispatch)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            answer = await client.get("/early", params={"question": "hello there"})
        assert answer.text == "Hello from the fake provider."
        [turn] = turns
        for _ in range(200):  # the stream's own event is logged just after its last chunk
            if turn.late_calls:
                break
            await asyncio.sleep(0.05)

    [stored] = await stored_calls(database_url)
    assert (stored["status"], stored["completion_tokens"]) == ("abandoned", 0)
    assert [(c.status, c.prompt_tokens, c.completion_tokens) for c in turn.late_calls] == [
        (turnledger.CallStatus.SUCCESS, fake_prompt_tokens("hello there"), FAKE_COMPLETION_TOKENS)
    ]


async def test_a_plain_def_dependency_opens_a_turn_its_endpoint_never_sees(
    example: dict[str, Any], database_url: str, fake_provider: FakeProvider
) -> None:
    app = example["app"]
    resources: dict[str, Any] = example["resources"]
    turns: list[turnledger.TurnTokenAccumulator] = []

    def sync_turn() -> Iterator[turnledger.TurnTokenAccumulator]:
        with turnledger.scoped_turn(user_id="u-sync-dep", persist=resources["writer"]) as turn:
            turns.append(turn)
            yield turn

    # A default, not Annotated: this module's annotations are strings, and sync_turn is a local name.
    async def ask(question: str, turn: Any = fastapi.Depends(sync_turn)) -> str:  # noqa: B008
        answer = await litellm.acompletion(model="gpt-4o-mini", messages=[{"role": "user", "content": question}])
        return str(answer.choices[0].message.content)

    app.add_api_route("/sync-dep", ask)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.get("/sync-dep", params={"question": "hello there"})

    assert answer.json() == "Hello from the fake provider."
    assert len(fake_provider.requests) == 1
    [turn] = turns
    assert turn.calls == [] and turn.late_calls == []
    assert await stored_calls(database_url) == []


async def test_background_tasks_run_inside_the_dependencys_turn_and_are_charged_with_it(
    example: dict[str, Any], database_url: str
) -> None:
    app = example["app"]
    resources: dict[str, Any] = example["resources"]
    paid_turn = example["paid_turn"]

    async def follow_up() -> None:
        await litellm.acompletion(model="gpt-4o-mini", messages=[{"role": "user", "content": question_of(6)}])

    async def ask(background: Any, turn: Any = fastapi.Depends(paid_turn)) -> str:  # noqa: B008
        answer = await litellm.acompletion(model="gpt-4o-mini", messages=[{"role": "user", "content": question_of(2)}])
        background.add_task(follow_up)
        return str(answer.choices[0].message.content)

    # FastAPI injects BackgroundTasks by the parameter's annotation, read from the signature.
    ask.__annotations__["background"] = fastapi.BackgroundTasks
    app.add_api_route("/with-follow-up", ask)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ledger: turnledger.CreditLedger = resources["ledger"]
        await ledger.grant("u-bg", Decimal(1), "grant-bg")
        answer = await client.get("/with-follow-up", params={"user_id": "u-bg"})
        balance = await ledger.balance("u-bg")

    assert answer.json() == "Hello from the fake provider."
    calls = await stored_calls(database_url)
    assert sorted((c["turn_user_id"], c["turn_calls"], c["prompt_tokens"]) for c in calls) == [
        ("u-bg", 2, fake_prompt_tokens(question_of(2))),
        ("u-bg", 2, fake_prompt_tokens(question_of(6))),
    ]
    assert balance.balance == 1 - sum(c["cost_usd"] for c in calls)


async def test_a_plain_def_endpoint_under_the_readme_dependency_makes_its_calls_in_the_turn(
    example: dict[str, Any], database_url: str
) -> None:
    app = example["app"]
    resources: dict[str, Any] = example["resources"]

    def ask(turn: Any = fastapi.Depends(example["paid_turn"])) -> str:  # noqa: B008
        messages = [{"role": "user", "content": question_of(3)}]
        litellm.completion(model="gpt-4o-mini", messages=messages)
        for _ in litellm.completion(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
        ):
            pass
        return "asked"

    app.add_api_route("/sync-endpoint", ask)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await resources["ledger"].grant("u-def", Decimal(1), "grant-def")
        answer = await client.get("/sync-endpoint", params={"user_id": "u-def"})

    assert answer.json() == "asked"
    calls = await stored_calls(database_url)
    assert (
        sorted((c["turn_user_id"], c["turn_calls"], c["status"], c["prompt_tokens"]) for c in calls)
        == [("u-def", 2, "success", fake_prompt_tokens(question_of(3)))] * 2
    )
