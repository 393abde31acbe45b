"""The response nearly every route gives, made into its ASGI answer in one step.

Litestar turns a handler's return value into a ``Response``, then into an ``ASGIResponse``: the
layers' headers merged into a dict, a ``MutableScopeHeaders`` built and searched twice for the
content type and length, the type encoders merged and a serializer looked up, then the two ASGI
messages sent through ``start_response`` and ``send_body``. For a JSON body with no cookies and no
background task that is about a tenth of a cached GET's time in-process
(docs/benchmarks.md). ``JSONResponse`` (the app's ``response_class``, and what ``tagged`` returns)
gives those answers the same bytes on the wire, headers in the same order (the response's own,
then ``content-type`` and ``content-length``), and hands everything else to Litestar unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from litestar import Request, Response
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.response.base import ASGIResponse
from litestar.serialization import encode_json, get_serializer
from litestar.types import Receive, ResponseCookies, ResponseHeaders, Scope, Send, TypeEncodersMap

T = TypeVar("T")

JSON = "application/json"
_OWN = frozenset({b"content-type", b"content-length"})
"""Headers the answer sets itself; a response that sets either goes the general way."""


class EncodedJSON(ASGIResponse):
    """A JSON answer already encoded: status, header lines and body, sent as two messages."""

    __slots__ = ("lines",)

    def __init__(self, status: int, lines: list[tuple[bytes, bytes]], body: bytes) -> None:
        # ASGIResponse's own __init__ builds what this one already has; only its slots are set
        self.status_code = status
        self.lines = lines
        self.body = body
        self.background = None
        self.is_head_response = False
        self._encoded_cookies = ()

    def encode_headers(self) -> list[tuple[bytes, bytes]]:
        return self.lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.lines})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


class JSONResponse(Response[T]):
    def __init__(
        self,
        content: T,
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: ResponseCookies | None = None,
        encoding: str = "utf-8",
        headers: ResponseHeaders | None = None,
        media_type: Any = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> None:
        if cookies or self.type_encoders or not (headers is None or type(headers) is dict):
            super().__init__(
                content,
                background=background,
                cookies=cookies,
                encoding=encoding,
                headers=headers,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
            )
            return
        # what Response.__init__ sets for a plain dict of headers and no cookies, without its
        # checks against typing.Mapping; the encoders are the handler's own map (never changed)
        self.content = content
        self.background = background
        self.cookies = []
        self.encoding = encoding
        self.headers = dict(headers) if headers else {}
        self.media_type = media_type
        self.status_code = status_code
        self.response_type_encoders = type_encoders if isinstance(type_encoders, dict) else dict(type_encoders or {})

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: Any = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        status = self.status_code or status_code or 200
        content = self.content
        lines = None
        if not (
            (self.media_type or media_type or JSON) != JSON
            or status < 200
            or status in (204, 304)
            or is_head_response
            or self.cookies
            or cookies
            or encoded_headers is not None
            or self.background is not None
            or background is not None
            or isinstance(content, (bytes, str))
            or app is not None
        ):
            merged = {**headers, **self.headers} if headers else self.headers
            lines = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in merged.items()]
            if any(name in _OWN for name, _ in lines):
                lines = None
        if lines is None:
            return super().to_asgi_response(
                app,
                request,
                background=background,
                cookies=cookies,
                encoded_headers=encoded_headers,
                headers=headers,
                is_head_response=is_head_response,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
            )
        # the encoders as Litestar's own render merges them (the app's plugins register some even
        # where no body holds their types)
        own = self.response_type_encoders
        encoders = {**type_encoders, **own} if type_encoders and own else type_encoders or own
        body = encode_json(content, get_serializer(encoders))
        lines.append((b"content-type", b"application/json"))
        lines.append((b"content-length", str(len(body)).encode()))
        return EncodedJSON(status, lines, body)
