"""The HTTP server's own answers in ctrlplane's error shape.

Requests the HTTP parser refuses before the app sees them (a header block past h11's buffer, a
malformed request line) get uvicorn's ``text/plain`` "Invalid HTTP request received." by default;
``JsonErrorH11Protocol`` answers them as every other error: JSON ``{message, code, request_id}``,
431 when the headers were too large, 400 otherwise.
"""

from __future__ import annotations

from typing import Any

import h11
import msgspec
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ctrlplane.errors import ErrorBody
from ctrlplane.ids import new_id

MAX_HEADER_BLOCK_BYTES = 64 * 1024
"""h11's buffer for a request's head; past it the server answers 431 itself. Below it the app's
own limits (``inputs.MAX_HEADER_BYTES``) answer."""


class JsonErrorH11Protocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused_status = 400
        next_event = self.conn.next_event

        def remembering_next_event() -> Any:
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._refused_status = 431 if exc.error_status_hint == 431 else 400
                raise

        self.conn.next_event = remembering_next_event  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        status = self._refused_status
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
        reason = b"Request Header Fields Too Large" if status == 431 else b"Bad Request"
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason)))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # the connection's state allows no response any more
            pass
        self.transport.close()


def server_config(app: Any, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ctrlplane: h11 with JSON errors and a bounded header block."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=JsonErrorH11Protocol,
        h11_max_incomplete_event_size=MAX_HEADER_BLOCK_BYTES,
        **options,
    )
