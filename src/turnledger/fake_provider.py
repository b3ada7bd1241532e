"""A local fake LLM provider that speaks the real OpenAI and Anthropic HTTP wire formats.

LiteLLM is pointed at it with ``api_base`` so that LiteLLM's own request building, HTTP client,
SSE parsing, usage handling and logging callbacks all run for real; only the far end is fake.

The server runs its own event loop in a daemon thread, so it serves sync and async LiteLLM calls
alike and outlives any one test's loop. Behaviour is scripted per wire model name with
:class:`Script`; an unscripted model gets a deterministic default answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_CONTENT = "Hello from the fake provider."

MAX_KEPT_REQUESTS = 1_000
"""Requests :attr:`FakeProvider.requests` keeps, the latest ones: run as a server until Ctrl-C
(``python -m turnledger.fake_provider``), it would otherwise keep every request body it was sent
(about 2 KiB each, measured). A test reads the few requests it made since its ``reset()``."""


@dataclass
class Script:
    """How the fake provider answers one model."""

    content: str = DEFAULT_CONTENT
    """The assistant text; streamed word by word."""
    usage: Mapping[str, Any] | None = None
    """The usage block sent as-is (may be malformed on purpose); ``None`` means a computed default."""
    send_usage: bool = True
    """False: a chat or embedding response carries no usage block at all (some compatible servers)."""
    status: int = 200
    """An HTTP status other than 200 answers with an error body instead."""
    delay_s: float = 0.0
    """Delay before the response headers are sent."""
    chunk_delay_s: float = 0.0
    """Delay between streamed chunks."""
    break_after_chunks: int | None = None
    """Close the connection after this many content chunks of an OpenAI or Anthropic stream (a stream
    broken off mid-flight: the provider generated and sent those chunks, and bills them); 0 closes it
    once the status and headers are sent, before any chunk."""
    done_delay_s: float = 0.0
    """Delay before an OpenAI stream's ``[DONE]``, after its last chunk (its usage chunk when it sends
    one): a client that times out meanwhile has had the whole answer and its usage."""
    include_usage_chunk: bool | None = None
    """Force (True) or suppress (False) the final usage chunk of an OpenAI stream; None follows the request."""
    extra_response: Mapping[str, Any] = field(default_factory=dict)
    """Top-level fields merged into a JSON response (and the last stream chunk)."""
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI-style tool calls returned instead of plain content (streamed: each call's arguments in
    two pieces)."""
    error_message: str = "fake provider failure"
    """The message of an error answer (LiteLLM maps some, such as a context window exceeded, by it)."""


@dataclass
class ReceivedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


PLAN_MARKER = re.compile(r"\[\[plan:([A-Za-z0-9_.-]+)\]\]")
"""``[[plan:KEY]]`` anywhere in a request body (a message, an embedding input, an image prompt)
selects the scripts of :meth:`FakeProvider.plan` ``KEY``: per request, not per model."""


_received_in: ContextVar[int | None] = ContextVar("fake_provider_received_in", default=None)
"""The :meth:`FakeProvider.reset` generation a request arrived in (None: not recorded)."""
_plan_attempt: ContextVar[tuple[str | None, int, float]] = ContextVar(
    "fake_provider_plan_attempt", default=(None, 0, 0.0)
)
"""The plan, attempt and hold of the request being handled: aiohttp runs each handler in a task of its own."""


@dataclass(frozen=True)
class Answer:
    """What the fake provider did with one request: the ground truth a capture is checked against."""

    request_id: str
    """The ``x-request-id`` it answered with (a client that gave up never saw it)."""
    path: str
    model: str
    plan: str | None
    """The plan key the request carried, if any."""
    attempt: int
    """Which request of its plan this was, from 0; 0 without a plan."""
    status: int
    """The HTTP status it answered with."""
    stream: bool
    usage: dict[str, Any] | None
    """The usage block it sent (whole, in the body or a stream's usage chunk); None if it sent none."""
    broken_off: bool = False
    """A stream it broke off on purpose (``break_after_chunks``) before any usage."""
    held_s: float = 0.0
    """How long it held the request before answering (``delay_s``): a client with a shorter timeout
    gave up waiting, whether or not it had hung up yet (``client_gone``)."""
    client_gone: bool = False
    """The client had hung up when the answer was ready (it timed out or was cancelled waiting)."""


def _default_chat_usage(body: Mapping[str, Any], content: str) -> dict[str, int]:
    messages = body.get("messages") or []
    prompt = 5 + sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, Mapping))
    completion = len(content.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class FakeProvider:
    """Start with :meth:`start` (or as a context manager); ``base_url`` is the OpenAI ``api_base``."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.requests: deque[ReceivedRequest] = deque(maxlen=MAX_KEPT_REQUESTS)
        """The latest requests received (at most :data:`MAX_KEPT_REQUESTS`), oldest first."""
        self.plans: dict[str, list[Script]] = {}
        self._plan_attempts: dict[str, int] = {}
        self.answers: deque[Answer] = deque(maxlen=MAX_KEPT_REQUESTS)
        """What it answered to the latest chat, embedding and image requests (at most
        :data:`MAX_KEPT_REQUESTS`), in the order the answers were decided."""
        self._ids = itertools.count(1)
        # Bumped by reset(): a request held or streamed past its test's end (a client that timed out
        # while the server still waited) is answered later, and its answer must not land among the
        # next test's answers.
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self.port = 0
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeProvider:
        self._thread = threading.Thread(target=self._serve, name="fake-provider", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake provider did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        runner = self._runner
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, model: str, **fields: Any) -> Script:
        s = Script(**fields)
        self.scripts[model] = s
        return s

    def plan(self, key: str, scripts: Sequence[Script]) -> None:
        """Script the requests carrying ``[[plan:KEY]]`` one by one: the first gets ``scripts[0]``, the
        next ``scripts[1]``... (a retried or fallen-back call's attempts), the last one repeats."""
        if not scripts:
            raise ValueError("a plan needs at least one script")
        with self._lock:
            self.plans[key] = list(scripts)
            self._plan_attempts[key] = 0

    def received(self, key: str) -> int:
        """How many requests of plan ``key`` have arrived (answered or not yet)."""
        with self._lock:
            return self._plan_attempts.get(key, 0)

    def answers_for(self, key: str) -> list[Answer]:
        """What it answered to the requests of plan ``key``, in the order they arrived (a request it
        held, scripted with ``delay_s``, is answered after the ones that came after it)."""
        with self._lock:
            return sorted((a for a in self.answers if a.plan == key), key=lambda a: a.attempt)

    def reset(self) -> None:
        self.scripts.clear()
        with self._lock:
            self.requests.clear()
            self.plans.clear()
            self._plan_attempts.clear()
            self.answers.clear()
            self._generation += 1

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/embeddings", self._embeddings)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/images/generations", self._images)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/responses", self._responses)
        app.router.add_post("/v1/completions", self._text_completion)
        app.router.add_post("/completions", self._text_completion)
        app.router.add_post("/v1/moderations", self._moderations)
        app.router.add_post("/moderations", self._moderations)
        app.router.add_post("/v1/rerank", self._rerank)
        app.router.add_post("/v2/rerank", self._rerank)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/ocr", self._ocr)
        app.router.add_post("/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/audio/transcriptions", self._transcriptions)
        # Azure OpenAI speaks the OpenAI chat format under a deployment path.
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._embeddings)
        app.router.add_post("/v1beta/models/{model_action}", self._gemini_generate)
        app.router.add_post("/model/{model_id}/converse", self._bedrock_converse)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        sockets = getattr(site._server, "sockets", None)
        assert sockets, "the fake provider's server has no listening socket"
        self.port = int(sockets[0].getsockname()[1])
        self._runner = runner
        self._ready.set()
        loop.run_forever()
        loop.close()

    # -- helpers -----------------------------------------------------------------------------
    async def _receive(self, request: web.Request, model: str | None = None) -> tuple[dict[str, Any], Script]:
        body = await request.json()
        plan, attempt = _plan_key(body), 0
        with self._lock:
            self.requests.append(ReceivedRequest(request.path, body, dict(request.headers)))
            _received_in.set(self._generation)
            scripts = self.plans.get(plan) if plan is not None else None
            if plan is not None and scripts is not None:
                attempt = self._plan_attempts[plan]
                self._plan_attempts[plan] = attempt + 1
                script = scripts[min(attempt, len(scripts) - 1)]
            else:
                # Gemini and Bedrock name the model in the path, not the body.
                script = self.scripts.get(model if model is not None else str(body.get("model", "")), Script())
        _plan_attempt.set((plan, attempt, script.delay_s))
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        return body, script

    def _answered(
        self,
        request: web.Request,
        body: Mapping[str, Any],
        rid: str,
        *,
        status: int = 200,
        usage: Mapping[str, Any] | None = None,
        broken_off: bool = False,
    ) -> None:
        plan, attempt, held_s = _plan_attempt.get()
        answer = Answer(
            request_id=rid,
            path=request.path,
            model=str(body.get("model", "")),
            plan=plan,
            attempt=attempt,
            status=status,
            stream=bool(body.get("stream")),
            usage=dict(usage) if usage is not None else None,
            broken_off=broken_off,
            held_s=held_s,
            client_gone=request.transport is None or request.transport.is_closing(),
        )
        received_in = _received_in.get()
        with self._lock:
            if received_in is not None and received_in != self._generation:
                return  # received before the last reset: an earlier test's
            self.answers.append(answer)

    def _request_id(self) -> str:
        return f"req_fake_{next(self._ids):06d}"

    @staticmethod
    def _error(script: Script, rid: str) -> web.Response:
        return web.json_response(
            {"error": {"message": script.error_message, "type": "server_error", "code": script.status}},
            status=script.status,
            headers={"x-request-id": rid},
        )

    # -- OpenAI chat -------------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            self._answered(request, body, rid, status=script.status)
            return self._error(script, rid)
        model = str(body.get("model", "fake"))
        usage = dict(script.usage) if script.usage is not None else _default_chat_usage(body, script.content)
        created = int(time.time())
        cid = f"chatcmpl-{rid}"
        if body.get("stream"):
            return await self._chat_stream(request, body, script, usage, model, created, cid, rid)
        message: dict[str, Any] = {"role": "assistant", "content": script.content}
        finish = "stop"
        if script.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": script.tool_calls}
            finish = "tool_calls"
        n = int(body.get("n") or 1)
        payload: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": i, "message": message, "finish_reason": finish} for i in range(n)],
            "usage": usage,
        }
        if not script.send_usage:
            del payload["usage"]
        payload.update(script.extra_response)
        self._answered(request, body, rid, usage=payload.get("usage"))
        return web.json_response(payload, headers={"x-request-id": rid})

    async def _chat_stream(
        self,
        request: web.Request,
        body: Mapping[str, Any],
        script: Script,
        usage: dict[str, Any],
        model: str,
        created: int,
        cid: str,
        rid: str,
    ) -> web.StreamResponse:
        want_usage = _wants_usage_chunk(body, script)
        try:
            resp = await _open_event_stream(request, {"x-request-id": rid})
        except ConnectionResetError:
            # The client gave up while the request was held (delay_s): the answer was generated all the same.
            self._answered(request, body, rid, usage=usage if want_usage else None)
            raise

        n = int(body.get("n") or 1)

        def chunk(delta: dict[str, Any], finish: str | None, index: int = 0) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
            }

        answered = False
        try:
            if script.tool_calls:
                for i, call in enumerate(script.tool_calls):
                    function = call.get("function") or {}
                    arguments = str(function.get("arguments", ""))
                    half = len(arguments) // 2
                    head = {"index": i, "id": call.get("id"), "type": "function"}
                    pieces = [
                        {**head, "function": {"name": function.get("name"), "arguments": arguments[:half]}},
                        {"index": i, "function": {"arguments": arguments[half:]}},
                    ]
                    for piece in pieces:
                        call_delta: dict[str, Any] = {"tool_calls": [piece]}
                        if i == 0:
                            call_delta["role"] = "assistant"
                        await _write_event(resp, chunk(call_delta, None))
                await _write_event(resp, chunk({}, "tool_calls"))
            words = script.content.split(" ") if not script.tool_calls else []
            if script.break_after_chunks == 0 and words:
                # Broken off before its first chunk: the status and headers were sent, nothing more.
                answered = True
                self._answered(request, body, rid, broken_off=True)
                _break_off(request)
                return resp
            for i, word in enumerate(words):
                for index in range(n):
                    delta: dict[str, Any] = {"content": word if i == 0 else " " + word}
                    if i == 0:
                        delta["role"] = "assistant"
                    await _write_event(resp, chunk(delta, None, index))
                if script.break_after_chunks is not None and i + 1 >= script.break_after_chunks:
                    answered = True
                    self._answered(request, body, rid, broken_off=True)
                    _break_off(request)
                    return resp
                if script.chunk_delay_s:
                    await asyncio.sleep(script.chunk_delay_s)
            if words:
                for index in range(n):
                    await _write_event(resp, chunk({}, "stop", index))
            answered = True
            self._answered(request, body, rid, usage=usage if want_usage else None)
            if want_usage:
                last: dict[str, Any] = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                last.update(script.extra_response)
                await _write_event(resp, last)
            if script.done_delay_s:
                await asyncio.sleep(script.done_delay_s)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            # The client broke the stream off; a real provider still bills what it generated, the whole
            # answer with its usage.
            if not answered:
                self._answered(request, body, rid, usage=usage if want_usage else None)
        return resp

    # -- OpenAI Responses API ----------------------------------------------------------------
    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            return self._error(script, rid)
        model = str(body.get("model", "fake"))
        if script.usage is not None:
            usage = dict(script.usage)
        else:
            prompt = 5 + len(str(body.get("input", "")).split())
            completion = len(script.content.split())
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            }
        resp_id = f"resp_{rid}"
        item_id = f"msg_{rid}"

        def response(status: str, text: str, with_usage: bool) -> dict[str, Any]:
            output: list[dict[str, Any]] = []
            if text:
                output.append(
                    {
                        "type": "message",
                        "id": item_id,
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                )
            payload: dict[str, Any] = {
                "id": resp_id,
                "object": "response",
                "created_at": int(time.time()),
                "status": status,
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "tool_choice": "auto",
                "tools": [],
                "usage": usage if with_usage and script.send_usage else None,
            }
            payload.update(script.extra_response)
            return payload

        if not body.get("stream"):
            return web.json_response(response("completed", script.content, True), headers={"x-request-id": rid})
        resp = await _open_event_stream(request, {"x-request-id": rid})
        seq = itertools.count()

        async def event(data: dict[str, Any]) -> None:
            data["sequence_number"] = next(seq)
            await _write_event(resp, data, name=data["type"])

        try:
            await event({"type": "response.created", "response": response("in_progress", "", False)})
            for i, word in enumerate(script.content.split(" ")):
                await event(
                    {
                        "type": "response.output_text.delta",
                        "item_id": item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": word if i == 0 else " " + word,
                    }
                )
                if script.chunk_delay_s:
                    await asyncio.sleep(script.chunk_delay_s)
            await event({"type": "response.completed", "response": response("completed", script.content, True)})
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    # -- OpenAI text completions -------------------------------------------------------------
    async def _text_completion(self, request: web.Request) -> web.StreamResponse:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            return self._error(script, rid)
        prompt = 5 + len(str(body.get("prompt", "")).split())
        usage = (
            dict(script.usage)
            if script.usage is not None
            else {
                "prompt_tokens": prompt,
                "completion_tokens": len(script.content.split()),
                "total_tokens": prompt + len(script.content.split()),
            }
        )
        payload: dict[str, Any] = {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "text": script.content, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        }
        if not script.send_usage:
            del payload["usage"]
        payload.update(script.extra_response)
        if not body.get("stream"):
            return web.json_response(payload, headers={"x-request-id": rid})
        resp = await _open_event_stream(request, {"x-request-id": rid})
        want_usage = _wants_usage_chunk(body, script)
        try:
            words = script.content.split(" ")
            for i, word in enumerate(words):
                finish = "stop" if i == len(words) - 1 else None
                piece = {"index": 0, "text": word if i == 0 else " " + word, "logprobs": None, "finish_reason": finish}
                chunk = {**payload, "choices": [piece]}
                chunk.pop("usage", None)
                await _write_event(resp, chunk)
            if want_usage:
                await _write_event(resp, {**payload, "choices": [], "usage": usage})
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    # -- OpenAI moderations ------------------------------------------------------------------
    async def _moderations(self, request: web.Request) -> web.Response:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            return self._error(script, rid)
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        payload: dict[str, Any] = {
            "id": f"modr-{rid}",
            "model": body.get("model") or "omni-moderation-latest",
            "results": [{"flagged": False, "categories": {}, "category_scores": {}} for _ in items],
        }
        payload.update(script.extra_response)
        return web.json_response(payload, headers={"x-request-id": rid})

    # -- Cohere rerank -----------------------------------------------------------------------
    async def _rerank(self, request: web.Request) -> web.Response:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            return self._error(script, rid)
        documents = body.get("documents") or []
        meta = dict(script.usage) if script.usage is not None else {"billed_units": {"search_units": 1}}
        payload: dict[str, Any] = {
            "id": f"rerank-{rid}",
            "results": [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(documents))],
            "meta": meta,
        }
        payload.update(script.extra_response)
        return web.json_response(payload, headers={"x-request-id": rid})

    # -- Mistral OCR -------------------------------------------------------------------------
    async def _ocr(self, request: web.Request) -> web.Response:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            return self._error(script, rid)
        pages = int(script.usage.get("pages_processed", 1)) if script.usage is not None else 1
        payload: dict[str, Any] = {
            "pages": [
                {
                    "index": i,
                    "markdown": script.content,
                    "images": [],
                    "dimensions": {"dpi": 72, "height": 1, "width": 1},
                }
                for i in range(pages)
            ],
            "model": body.get("model"),
            "usage_info": {"pages_processed": pages, "doc_size_bytes": 1024},
        }
        payload.update(script.extra_response)
        return web.json_response(payload, headers={"x-request-id": rid})

    # -- OpenAI speech -----------------------------------------------------------------------
    async def _speech(self, request: web.Request) -> web.Response:
        _body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            return self._error(script, rid)
        return web.Response(body=b"ID3fake-mp3-bytes", content_type="audio/mpeg", headers={"x-request-id": rid})

    # -- OpenAI embeddings -------------------------------------------------------------------
    async def _embeddings(self, request: web.Request) -> web.Response:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            self._answered(request, body, rid, status=script.status)
            return self._error(script, rid)
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        if script.usage is not None:
            usage = dict(script.usage)
        else:
            tokens = sum(max(1, len(str(x).split())) for x in items)
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        payload: dict[str, Any] = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))],
            "model": body.get("model"),
            "usage": usage,
        }
        if not script.send_usage:
            del payload["usage"]
        payload.update(script.extra_response)
        self._answered(request, body, rid, usage=payload.get("usage"))
        return web.json_response(payload, headers={"x-request-id": rid})

    # -- OpenAI images -----------------------------------------------------------------------
    async def _images(self, request: web.Request) -> web.Response:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            self._answered(request, body, rid, status=script.status)
            return self._error(script, rid)
        n = int(body.get("n") or 1)
        payload: dict[str, Any] = {
            "created": int(time.time()),
            "data": [{"url": f"https://images.invalid/{rid}/{i}.png"} for i in range(n)],
        }
        if script.usage is not None:
            payload["usage"] = dict(script.usage)
        payload.update(script.extra_response)
        self._answered(request, body, rid, usage=payload.get("usage"))
        return web.json_response(payload, headers={"x-request-id": rid})

    # -- OpenAI audio transcriptions ---------------------------------------------------------
    async def _transcriptions(self, request: web.Request) -> web.Response:
        # Multipart form, not JSON: the audio file beside the model's name.
        form = await request.post()
        body = {k: v for k, v in form.items() if isinstance(v, str)}
        with self._lock:
            self.requests.append(ReceivedRequest(request.path, body, dict(request.headers)))
        script = self.scripts.get(str(body.get("model", "")), Script())
        rid = self._request_id()
        if script.status != 200:
            return self._error(script, rid)
        # response_format=json (LiteLLM's default) carries the text only; verbose_json adds the
        # duration, which a script can send through extra_response.
        payload: dict[str, Any] = {"text": script.content}
        payload.update(script.extra_response)
        return web.json_response(payload, headers={"x-request-id": rid})

    # -- Anthropic messages ------------------------------------------------------------------
    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        body, script = await self._receive(request)
        rid = self._request_id()
        if script.status != 200:
            return web.json_response(
                {"type": "error", "error": {"type": "api_error", "message": "fake provider failure"}},
                status=script.status,
                headers={"request-id": rid},
            )
        model = str(body.get("model", "claude-fake"))
        usage: dict[str, Any] = (
            dict(script.usage) if script.usage is not None else {"input_tokens": 20, "output_tokens": 5}
        )
        mid = f"msg_{rid}"
        if not body.get("stream"):
            payload: dict[str, Any] = {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": script.content}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
            payload.update(script.extra_response)
            return web.json_response(payload, headers={"request-id": rid})
        resp = await _open_event_stream(request, {"request-id": rid})

        async def event(name: str, data: dict[str, Any]) -> None:
            await _write_event(resp, data, name=name)

        start_usage = {k: v for k, v in usage.items() if k != "output_tokens"}
        start_usage["output_tokens"] = 1
        try:
            await event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
            await event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            for i, word in enumerate(script.content.split(" ")):
                await event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
                    },
                )
                if script.break_after_chunks is not None and i + 1 >= script.break_after_chunks:
                    _break_off(request)
                    return resp
                if script.chunk_delay_s:
                    await asyncio.sleep(script.chunk_delay_s)
            await event("content_block_stop", {"type": "content_block_stop", "index": 0})
            await event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": usage.get("output_tokens", 0)},
                },
            )
            await event("message_stop", {"type": "message_stop"})
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    # -- Gemini generateContent -------------------------------------------------------------
    async def _gemini_generate(self, request: web.Request) -> web.Response:
        model, _, action = request.match_info["model_action"].partition(":")
        _body, script = await self._receive(request, model)
        rid = self._request_id()
        if script.status != 200 or action != "generateContent":
            return self._error(script if script.status != 200 else Script(status=404), rid)
        usage: dict[str, Any] = (
            dict(script.usage)
            if script.usage is not None
            else {"promptTokenCount": 20, "candidatesTokenCount": 5, "totalTokenCount": 25}
        )
        payload: dict[str, Any] = {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": script.content}]}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": rid,
        }
        payload.update(script.extra_response)
        return web.json_response(payload, headers={"x-request-id": rid})

    # -- Bedrock Converse --------------------------------------------------------------------
    async def _bedrock_converse(self, request: web.Request) -> web.Response:
        _body, script = await self._receive(request, request.match_info["model_id"])
        rid = self._request_id()
        if script.status != 200:
            return self._error(script, rid)
        usage: dict[str, Any] = (
            dict(script.usage)
            if script.usage is not None
            else {"inputTokens": 20, "outputTokens": 5, "totalTokens": 25}
        )
        payload: dict[str, Any] = {
            "output": {"message": {"role": "assistant", "content": [{"text": script.content}]}},
            "stopReason": "end_turn",
            "usage": usage,
            "metrics": {"latencyMs": 1},
        }
        payload.update(script.extra_response)
        return web.json_response(payload, headers={"x-amzn-requestid": rid})


async def _open_event_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """A server-sent-events answer, its headers sent."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
    await resp.prepare(request)
    return resp


async def _write_event(resp: web.StreamResponse, data: object, *, name: str | None = None) -> None:
    """One server-sent event: OpenAI's carry data only, Anthropic's and the Responses API's a name too."""
    head = f"event: {name}\n" if name is not None else ""
    await resp.write(f"{head}data: {json.dumps(data)}\n\n".encode())


def _plan_key(body: Mapping[str, Any]) -> str | None:
    """The ``[[plan:KEY]]`` a request carries, if any (see :data:`PLAN_MARKER`)."""
    found = PLAN_MARKER.search(json.dumps(body))
    return found.group(1) if found is not None else None


def _wants_usage_chunk(body: Mapping[str, Any], script: Script) -> bool:
    """Whether an OpenAI-style stream ends with a usage chunk: as asked for, unless the script says."""
    if script.include_usage_chunk is not None:
        return script.include_usage_chunk
    return bool((body.get("stream_options") or {}).get("include_usage"))


def _break_off(request: web.Request) -> None:
    """Drop the connection mid-stream, as a provider or a network does."""
    if request.transport is not None:
        request.transport.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m turnledger.fake_provider``: serve until Ctrl-C, printing the base URL first."""
    parser = argparse.ArgumentParser(
        prog="python -m turnledger.fake_provider",
        description="A fake OpenAI/Anthropic provider on 127.0.0.1 for trying turnledger with no key and no "
        "network. Prints its base URL (set OPENAI_BASE_URL to it), then serves until Ctrl-C.",
    )
    parser.parse_args(argv)
    with FakeProvider() as fp:
        # Flushed: redirected or piped, stdout is block-buffered and the URL would never appear.
        print(fp.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
