"""The HTTP server's configuration, and its own answers in ctrlplane's error shape.

``ctrlplane serve`` runs uvicorn on asyncio's loop with the httptools parser (docs/benchmarks.md says
why). Requests the HTTP parser refuses before the app sees them (a request head past
``MAX_HEADER_BLOCK_BYTES``, a malformed request line) get uvicorn's ``text/plain`` "Invalid HTTP
request received." by default; ``JsonErrorHttpToolsProtocol`` answers them as every other error:
JSON ``{message, code, request_id}``, 431 when the head was too large, 400 otherwise.
"""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ctrlplane.errors import ErrorBody
from ctrlplane.ids import new_id

MAX_HEADER_BLOCK_BYTES = 64 * 1024
"""The most a request's head (request line and headers) may take; past it the server answers 431
itself. Below it the app's own limits (``inputs.MAX_HEADER_BYTES``) answer."""


def _refusal(status: int) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """The reason phrase, headers and JSON body of the server's own 400 or 431."""
    code, message = (
        ("header_too_large", f"the request headers are larger than {MAX_HEADER_BLOCK_BYTES} bytes")
        if status == 431
        else ("invalid_input", "not a valid HTTP/1.1 request")
    )
    body = msgspec.json.encode(ErrorBody(message=message, code=code, request_id=new_id("req")))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return (b"Request Header Fields Too Large" if status == 431 else b"Bad Request"), headers, body


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    """httptools has no limit of its own on a request's head (a header still arriving is buffered
    without end): this one counts the bytes received while a head is open and refuses past
    ``MAX_HEADER_BLOCK_BYTES``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused_status = 400
        self._head_open = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._head_open:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BLOCK_BYTES:
                self._refused_status = 431
                self.send_400_response("request head too large")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._refused_status = 400

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_open, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        status = self._refused_status
        reason, headers, body = _refusal(status)
        head = [f"HTTP/1.1 {status} ".encode() + reason + b"\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in headers]
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()


KEEP_ALIVE_SECONDS = 75
"""How long an idle kept-alive connection stays open (uvicorn's default is 5 s). A client that sends
a request on a connection just as the server closes it gets no answer, and browsers and most HTTP
clients retry only idempotent requests then (a console's POST failed "Failed to fetch"): a server
should keep connections open longer than its clients and proxies do (60 s is the usual proxy
default; nginx uses 75 s)."""


def settle_heap() -> None:
    """Move what the process built before serving (modules, the app, its routes and schemas) out of
    the garbage collector's way: ``gc.freeze`` keeps those objects out of every later collection,
    which otherwise walks all of them each time the oldest generation is collected. Called once,
    after the app is built and before the first request."""
    gc.collect()
    gc.freeze()


def server_config(app: Any, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ctrlplane: asyncio's loop and httptools, with JSON errors, a
    bounded request head and ``KEEP_ALIVE_SECONDS``."""
    options.setdefault("timeout_keep_alive", KEEP_ALIVE_SECONDS)
    return uvicorn.Config(app, host=host, port=port, loop="asyncio", http=JsonErrorHttpToolsProtocol, **options)
