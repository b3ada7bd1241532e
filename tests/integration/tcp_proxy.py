"""A small asyncio TCP proxy on 127.0.0.1 that a test controls, to break a database link on demand.

Modes:
- ``pass``: bytes flow both ways.
- ``cut()``: every open connection is reset and new ones are refused (accepted, then reset at once),
  as when a database restarts or a network partition drops the link.
- ``hang()``: connections stay open but nothing is forwarded either way, new ones included, as when
  a packet filter silently drops traffic: the client waits for an answer that never comes.
- ``restore()``: back to ``pass`` for new connections (hung ones are cut: their streams are broken).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal

from sqlalchemy.engine import make_url

Mode = Literal["pass", "cut", "hang"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.mode: Mode = "pass"
        self.port = 0
        self.connections_total = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url_through(self, url: str) -> str:
        """``url`` (a database at the proxy's target) rewritten to reach it through this proxy."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def cut(self) -> None:
        self.mode = "cut"
        self._flowing.set()
        self._reset_all()

    def hang(self) -> None:
        self.mode = "hang"
        self._flowing.clear()

    def restore(self) -> None:
        if self.mode == "hang":
            # A hung stream may be mid-message: resuming it would hand the client a torn protocol.
            self._reset_all()
        self.mode = "pass"
        self._flowing.set()

    async def stop(self) -> None:
        self._reset_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _reset_all(self) -> None:
        for client, upstream in list(self._links):
            _reset(client)
            _reset(upstream)
        self._links.clear()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.mode == "cut":
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(writer)
            return
        link = (writer, up_writer)
        self._links.add(link)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if link not in self._links:
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if link in self._links:
                self._links.discard(link)
                for w in link:
                    _close(w)


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER 0 makes close() send RST: the peer sees "connection reset", not a polite EOF.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(writer)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
