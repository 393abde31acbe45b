"""Bodies and responses the pipeline holds: a request body read once (with its size limit) and
handed on, and a response held back until its transaction has committed, or made from an error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar.types import Message, Receive, ReceiveMessage, Scope, Send

from ctrlplane.errors import CtrlplaneError, PayloadTooLarge, error_body
from ctrlplane.web.scope import request_id_for


class Captured:
    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self.body.extend(message.get("body", b""))

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def content_type(self) -> str | None:
        return self.header(b"content-type")

    async def flush(self, send: Send, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send(
            {"type": "http.response.start", "status": self.status, "headers": self.headers + (extra_headers or [])}
        )
        await send({"type": "http.response.body", "body": bytes(self.body), "more_body": False})

    @classmethod
    def of_error(cls, scope: Scope, error: CtrlplaneError) -> Captured:
        captured = cls()
        captured.status = error.status
        captured.headers = [(b"content-type", b"application/json")]
        if error.status == 503:
            captured.headers.append((b"retry-after", b"5"))
        captured.body.extend(error_body(error, request_id_for(scope)))
        return captured


async def read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body.extend(message.get("body", b""))
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        if not message.get("more_body", False):
            break
    return bytes(body)


def replay_body(body: bytes) -> Callable[[], Awaitable[ReceiveMessage]]:
    """A ``receive`` that hands the handler the body already read."""
    sent = False

    async def receive() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
