"""The README's "In a web app" patterns, against the fake provider and a real database: parallel calls in
one turn, a sub-agent's turn of its own, threads that do or do not carry the turn, and the sync app."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import litellm
import pytest

import turnledger
from turnledger.fake_provider import FakeProvider

from .readme_blocks import readme_python
from .web_support import FAKE_COMPLETION_TOKENS, fake_prompt_tokens, question_of, stored_calls

SYNC_APP = readme_python("#### A sync app")
HANG_DEADLINE_S = 30


def ask(words: int, provider_kwargs: dict[str, Any], **options: Any) -> Any:
    """A sync call whose prompt-token count says which one it was."""
    messages = [{"role": "user", "content": question_of(words)}]
    return litellm.completion(model="gpt-4o-mini", messages=messages, **provider_kwargs, **options)


async def aask(words: int, provider_kwargs: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": question_of(words)}]
    await litellm.acompletion(model="gpt-4o-mini", messages=messages, **provider_kwargs)


def ask_streamed(words: int, provider_kwargs: dict[str, Any]) -> None:
    for _ in ask(words, provider_kwargs, stream=True, stream_options={"include_usage": True}):
        pass


async def test_parallel_calls_and_a_sub_agent_are_each_stored_once_in_their_own_turn(
    tracker: turnledger.TokenTrackingCallback,
    provider_kwargs: dict[str, Any],
    database_url: str,
    tmp_path: Path,
) -> None:
    engine = turnledger.make_engine(database_url)
    writer = turnledger.BatchWriter(engine, outbox_dir=tmp_path / "outbox")
    async with writer, turnledger.scoped_turn(user_id="agent", persist=writer):
        async with asyncio.TaskGroup() as group:
            group.create_task(aask(1, provider_kwargs))
            group.create_task(aask(2, provider_kwargs))
        async with anyio.create_task_group() as anyio_group:
            anyio_group.start_soon(aask, 3, provider_kwargs)
            anyio_group.start_soon(aask, 4, provider_kwargs)
        await asyncio.gather(
            asyncio.to_thread(ask, 5, provider_kwargs), asyncio.to_thread(ask_streamed, 6, provider_kwargs)
        )
        async with turnledger.scoped_turn(user_id="sub-agent", persist=writer):
            await asyncio.gather(aask(7, provider_kwargs), asyncio.to_thread(ask, 8, provider_kwargs))
        await aask(9, provider_kwargs)
    await engine.dispose()

    calls = await stored_calls(database_url)
    assert len(calls) == len({c["call_id"] for c in calls}) == 9
    by_turn = {
        user: sorted(
            (c["status"], c["prompt_tokens"], c["completion_tokens"]) for c in calls if c["turn_user_id"] == user
        )
        for user in ("agent", "sub-agent")
    }

    def answered(*words: int) -> list[tuple[str, int, int]]:
        return [("success", fake_prompt_tokens(question_of(n)), FAKE_COMPLETION_TOKENS) for n in words]

    assert by_turn == {"agent": answered(1, 2, 3, 4, 5, 6, 9), "sub-agent": answered(7, 8)}


async def test_executor_threads_carry_the_turn_only_with_the_context_copied(
    tracker: turnledger.TokenTrackingCallback, fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    loop = asyncio.get_running_loop()
    async with turnledger.scoped_turn() as bare:
        await loop.run_in_executor(None, ask, 1, provider_kwargs)
        with ThreadPoolExecutor(2) as pool:
            await asyncio.wrap_future(pool.submit(ask, 2, provider_kwargs))
        thread = threading.Thread(target=ask, args=(3, provider_kwargs))
        thread.start()
        await asyncio.to_thread(thread.join)
    async with turnledger.scoped_turn() as copied:
        await loop.run_in_executor(None, contextvars.copy_context().run, ask, 4, provider_kwargs)
        with ThreadPoolExecutor(2) as pool:
            await asyncio.wrap_future(pool.submit(contextvars.copy_context().run, ask, 5, provider_kwargs))
    assert len(fake_provider.requests) == 5
    assert bare.calls == []
    assert sorted(c.prompt_tokens for c in copied.calls) == [fake_prompt_tokens(question_of(n)) for n in (4, 5)]


async def test_litellm_batch_completion_runs_its_calls_in_no_turn(
    tracker: turnledger.TokenTrackingCallback, fake_provider: FakeProvider, provider_kwargs: dict[str, Any]
) -> None:
    # LiteLLM's batch_completion submits each call to a ThreadPoolExecutor of its own, without the
    # caller's context: as the README says, its calls are in no turn (measured on 1.106.12).
    async with turnledger.scoped_turn() as turn:
        await asyncio.to_thread(
            litellm.batch_completion,
            model="openai/gpt-4o-mini",
            messages=[[{"role": "user", "content": question_of(n)}] for n in (1, 2, 3)],
            **provider_kwargs,
        )
    for _ in range(500):
        if tracker.stats["unscoped"] >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(fake_provider.requests) == 3
    assert turn.calls == [] and turn.late_calls == []
    assert tracker.stats["unscoped"] == 3 and tracker.stats["captured"] == 0


def test_the_readme_sync_app_stores_every_turn_its_request_threads_close(
    fake_provider: FakeProvider, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNLEDGER_DATABASE_URL", database_url)
    monkeypatch.setenv("TURNLEDGER_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("OPENAI_BASE_URL", fake_provider.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-not-a-real-key")
    app: dict[str, Any] = {"__name__": "readme_sync_example"}
    exec(compile(SYNC_APP, "README.md", "exec"), app)
    loop: asyncio.AbstractEventLoop = app["loop"]
    try:
        with ThreadPoolExecutor(4) as request_threads:  # a threaded WSGI server's workers
            answers = list(request_threads.map(lambda n: app["answer"](f"u-{n}", question_of(n)), range(1, 9)))
        app["shutdown"]()
    finally:
        asyncio.run_coroutine_threadsafe(app["writer"].engine.dispose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)

    assert answers == ["Hello from the fake provider."] * 8
    calls = asyncio.run(stored_calls(database_url))
    assert Counter(c["turn_user_id"] for c in calls) == {f"u-{n}": 1 for n in range(1, 9)}
    assert {c["turn_user_id"]: (c["status"], c["prompt_tokens"], c["completion_tokens"]) for c in calls} == {
        f"u-{n}": ("success", fake_prompt_tokens(question_of(n)), FAKE_COMPLETION_TOKENS) for n in range(1, 9)
    }


def test_an_async_scope_on_another_loop_than_the_writers_hands_its_turn_over(
    tracker: turnledger.TokenTrackingCallback, provider_kwargs: dict[str, Any], database_url: str, tmp_path: Path
) -> None:
    """The sync app's writer runs on a loop of its own; async code of that app (``asyncio.run`` in a view,
    a worker) opens its scopes on another loop. Handing the turn over used the writer's loop-bound
    futures from the wrong thread: the scope's exit never returned (measured: still waiting after 90 s)."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    writer = turnledger.BatchWriter(turnledger.make_engine(database_url), outbox_dir=tmp_path / "outbox")
    asyncio.run_coroutine_threadsafe(writer.start(), loop).result()

    async def view(n: int) -> None:
        async with turnledger.scoped_turn(user_id=f"u-{n}", persist=writer):
            await aask(n, provider_kwargs)

    async def requests() -> None:
        # Only so that a hang fails the test instead of stalling the suite.
        await asyncio.wait_for(asyncio.gather(*(view(n) for n in (1, 2, 3))), HANG_DEADLINE_S)

    try:
        asyncio.run(requests())
        asyncio.run_coroutine_threadsafe(writer.close(), loop).result()
    finally:
        asyncio.run_coroutine_threadsafe(writer.engine.dispose(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
    calls = asyncio.run(stored_calls(database_url))
    assert sorted((c["turn_user_id"], c["prompt_tokens"]) for c in calls) == [
        (f"u-{n}", fake_prompt_tokens(question_of(n))) for n in (1, 2, 3)
    ]


def test_a_turn_handed_to_a_writer_whose_loop_has_stopped_waits_in_the_outbox(
    tracker: turnledger.TokenTrackingCallback, provider_kwargs: dict[str, Any], database_url: str, tmp_path: Path
) -> None:
    """The writer's loop stopped (its thread's ``run_forever`` returned) without the writer being closed.
    A turn handed over from another loop or thread was queued as a callback that loop never runs: in
    neither the outbox nor the database, and ``persist`` waited for it forever (measured: still waiting
    after 3 s, nothing in the outbox)."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    writer = turnledger.BatchWriter(turnledger.make_engine(database_url), outbox_dir=tmp_path / "outbox")
    asyncio.run_coroutine_threadsafe(writer.start(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    runner.join()

    async def view(n: int) -> None:
        async with turnledger.scoped_turn(user_id=f"u-{n}", persist=writer):
            await aask(n, provider_kwargs)

    async def requests() -> None:
        # Only so that a hang fails the test instead of stalling the suite.
        await asyncio.wait_for(view(1), HANG_DEADLINE_S)

    def sync_view(n: int) -> None:
        with turnledger.scoped_turn(user_id=f"u-{n}", persist=writer):
            ask(n, provider_kwargs)

    try:
        asyncio.run(requests())
        sync_view(2)
    finally:
        loop.run_until_complete(writer.close())
        loop.run_until_complete(writer.engine.dispose())
        loop.close()

    async def replay() -> None:
        engine = turnledger.make_engine(database_url)
        try:
            await turnledger.replay_outbox(engine, tmp_path / "outbox")
        finally:
            await engine.dispose()

    asyncio.run(replay())
    calls = asyncio.run(stored_calls(database_url))
    assert sorted((c["turn_user_id"], c["prompt_tokens"]) for c in calls) == [
        (f"u-{n}", fake_prompt_tokens(question_of(n))) for n in (1, 2)
    ]
