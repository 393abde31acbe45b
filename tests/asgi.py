"""One HTTP GET straight through an ASGI app, no client and no socket: what the in-process
profiles (``tests/profile_request.py``) and the request pipeline's unit tests drive."""

from __future__ import annotations

from typing import Any


async def asgi_get(app: Any, path: str, authorization: str) -> int:
    """``GET path`` (a query after ``?``) with that Authorization header; the response's status."""
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"authorization", authorization.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status
