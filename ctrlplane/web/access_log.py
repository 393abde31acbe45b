"""Around the whole app: each request's ID, the headers every response carries, one log line and
the request metrics.

``RequestContextASGI`` settles the request ID (an incoming ``X-Request-ID`` when valid, else a new
one), adds ``X-Request-ID``, ``X-Ctrlplane-Version`` and the caller's ``RateLimit-*`` (once
admission, or an own-auth route's guard, has rate-limited it) to every response, refuses oversized
headers (431) before anything else runs, writes one ``request`` log line (never a header or a
body, so no token reaches the log) and counts and times the request (``RequestMeter``: the app's
``Telemetry``), by its route template, ``unmatched`` when no route matched, so a scan of random
paths cannot grow the label set. One layer for all of it: every request pays for each layer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from ctrlplane.auth.providers import Principal
from ctrlplane.errors import HeaderTooLarge
from ctrlplane.inputs import check_headers
from ctrlplane.logs import request_logger
from ctrlplane.web.admission import rate_limit_headers
from ctrlplane.web.responses import Captured
from ctrlplane.web.scope import PRINCIPAL_KEY, request_id_for


class RequestMeter(Protocol):
    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None: ...


class RequestContextASGI:
    def __init__(
        self,
        app: ASGIApp,
        *,
        version: str,
        allowed_methods: Mapping[str, str] | None = None,
        meter: RequestMeter | None = None,
    ) -> None:
        self.app = app
        self.meter = meter
        """Counts and times each request (``use_services`` may hand the app another)."""
        self.version = version.encode()
        self.allowed_methods = {k: v.encode() for k, v in (allowed_methods or {}).items()}
        """Path template -> the Allow header of OPTIONS: Litestar's own OPTIONS handler can list only
        the methods of the first handlers registered on a path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        http_scope = scope
        request_id = request_id_for(scope)
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = rate_limit_headers(scope, list(message.get("headers", ())))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-ctrlplane-version", self.version))
                if http_scope["method"] == "OPTIONS" and status < 300:
                    allow = self.allowed_methods.get(str(scope.get("path_template")))
                    if allow is not None:
                        headers = [(k, v) for k, v in headers if k.lower() != b"allow"] + [(b"allow", allow)]
                message = {**message, "headers": headers}
            await send(message)

        try:
            try:
                check_headers(scope.get("headers", ()))
            except HeaderTooLarge as exc:
                await Captured.of_error(scope, exc).flush(send_with_headers)
                return
            await self.app(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - started
            template = scope.get("path_template")
            principal: Principal | None = scope.get(PRINCIPAL_KEY)  # type: ignore[assignment]
            request_logger().info(
                "request",
                method=http_scope["method"],
                route=template or scope["path"],
                status=status,
                duration_ms=round(seconds * 1000, 2),
                request_id=request_id,
                tenant=principal.tenant_id if principal else None,
                subject=principal.subject if principal else None,
            )
            if self.meter is not None:
                self.meter.request_finished(http_scope["method"], template or "unmatched", status or 500, seconds)
