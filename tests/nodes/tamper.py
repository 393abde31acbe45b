"""A TCP proxy on 127.0.0.1 between agents and the control plane: a fixed address for agents while
the control plane restarts on another port (``point_at``), and a man in the middle for the
tampered-event test: in the answers to an event-stream request it replaces ``old`` by ``new`` (of
the same length, so HTTP framing stays intact)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit

_METHODS = {b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD"}


class TamperingProxy:
    def __init__(self, upstream_url: str, old: bytes = b"", new: bytes = b"") -> None:
        assert len(old) == len(new)
        self.point_at(upstream_url)
        self._old, self._new = old, new
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.tampered = 0
        self.url = ""

    def point_at(self, upstream_url: str) -> None:
        """New connections go to ``upstream_url`` (open ones stay where they are)."""
        parts = urlsplit(upstream_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80

    async def __aenter__(self) -> TamperingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            client_writer.close()
            return
        streaming = asyncio.Event()

        async def requests() -> None:
            while chunk := await client_reader.read(65536):
                # a kept-alive connection carries other requests after an event stream ends: only
                # the answers to an event-stream request are altered (a state pull is not)
                if chunk.split(b" ", 1)[0] in _METHODS:
                    if b" /v1/nodes/" in chunk and b"/events " in chunk:
                        streaming.set()
                    else:
                        streaming.clear()
                upstream_writer.write(chunk)
                await upstream_writer.drain()
            upstream_writer.close()

        async def answers() -> None:
            while chunk := await upstream_reader.read(65536):
                if self._old and streaming.is_set() and self._old in chunk:
                    chunk = chunk.replace(self._old, self._new)
                    self.tampered += 1
                client_writer.write(chunk)
                await client_writer.drain()
            client_writer.close()

        pair = [asyncio.ensure_future(requests()), asyncio.ensure_future(answers())]
        for task in pair:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.wait(pair, return_when=asyncio.FIRST_COMPLETED)
        for task in pair:
            task.cancel()
        client_writer.close()
        upstream_writer.close()
