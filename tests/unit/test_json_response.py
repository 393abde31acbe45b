"""``JSONResponse`` sends what Litestar's own ``Response`` sends, byte for byte, and leaves to
Litestar every response its short way does not cover."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from litestar import Response
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import Cookie, ResponseHeader
from litestar.response.base import ASGIResponse

from ctrlplane.web.json_response import EncodedJSON, JSONResponse


class Thing(msgspec.Struct):
    id: str
    created_at: datetime
    labels: dict[str, str]
    size: int | None = None


THING = Thing("thing_1", datetime(2026, 12, 7, 21, 0, tzinfo=UTC), {"team": "a"})


class Email(str):
    """A type the app's plugins bring an encoder for (Litestar's pydantic plugin does, for its own)."""


ENCODERS: dict[Any, Callable[[Any], Any]] = {Email: str}


def _sent(response: ASGIResponse) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(dict(message))

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    asyncio.run(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
    return messages


def _both(build: Callable[[type[Response[Any]]], Response[Any]], **handler: Any) -> tuple[ASGIResponse, ASGIResponse]:
    """The ASGI answers Litestar's Response and JSONResponse make of the same response, called as
    Litestar's response handlers call them."""
    return (
        build(Response).to_asgi_response(None, None, **handler),  # type: ignore[arg-type]
        build(JSONResponse).to_asgi_response(None, None, **handler),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("build", "handler"),
    [
        # a handler returning a response (create_response_handler's call)
        (
            lambda cls: cls(THING, headers={"ETag": '"3"'}),
            {"cookies": [], "headers": {}, "media_type": "application/json", "status_code": 200},
        ),
        # a handler returning data (create_data_handler's: the response is built with its status)
        (
            lambda cls: cls(content=[THING, THING], media_type="application/json", status_code=201),
            {"cookies": frozenset(), "headers": {"X-Route": "yes"}},
        ),
        (
            lambda cls: cls({"page": [THING], "next": None}, type_encoders=ENCODERS),
            {"type_encoders": ENCODERS, "status_code": 200},
        ),
        (lambda cls: cls(None), {"status_code": 200}),
        # built by Response.__init__ itself (headers that are not a dict)
        (lambda cls: cls(THING, headers=[ResponseHeader(name="X-A", value="1")]), {"headers": {"X-B": "2"}}),
    ],
    ids=["tagged", "data with route headers", "type encoders", "null", "header list"],
)
def test_the_short_way_sends_what_litestar_sends(build: Any, handler: dict[str, Any]) -> None:
    litestar, ours = _both(build, **handler)
    assert isinstance(ours, EncodedJSON)
    assert _sent(ours) == _sent(litestar)
    assert ours.encode_headers() == litestar.encode_headers()


@pytest.mark.parametrize(
    ("build", "handler"),
    [
        (lambda cls: cls(None, status_code=204), {}),
        (lambda cls: cls("plain", media_type="text/plain"), {}),
        (lambda cls: cls(b'{"raw": true}'), {}),
        (lambda cls: cls(THING, headers={"Content-Type": "application/problem+json"}), {}),
        (lambda cls: cls(THING), {"cookies": [Cookie(key="session", value="1")]}),
        (lambda cls: cls(THING, cookies={"session": "1"}), {}),
        (lambda cls: cls(THING, background=BackgroundTask(lambda: None)), {}),
    ],
    ids=["204", "text", "bytes", "own content type", "cookie", "own cookie", "background"],
)
def test_anything_else_is_litestars_own(build: Any, handler: dict[str, Any]) -> None:
    litestar, ours = _both(build, **handler)
    assert not isinstance(ours, EncodedJSON)
    assert _sent(ours) == _sent(litestar)


def test_a_type_only_the_encoders_know_is_encoded_by_them() -> None:
    class Opaque:
        pass

    encoders = {Opaque: lambda _: "opaque"}
    ours = JSONResponse({"value": Opaque()}).to_asgi_response(None, None, type_encoders=encoders)  # type: ignore[arg-type]
    assert isinstance(ours, EncodedJSON)
    assert ours.body == b'{"value":"opaque"}'
