"""The agent's HTTP client of the control plane's node API (seed 002), on httpx.

Every call but ``register`` carries the node credential as a bearer token. Telemetry goes as
gzip'd bodies (``Content-Encoding: gzip``): metrics as a JSON array, logs as NDJSON. The event
stream is read with httpx-sse.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import httpx
import msgspec
from httpx_sse import ServerSentEvent, aconnect_sse

from ctrlplane.nodes.contract import (
    DriftReport,
    EncryptedSecret,
    ExecutionAck,
    ExecutionResult,
    HeartbeatRequest,
    HeartbeatResponse,
    KeyRotateRequest,
    KeyRotateResponse,
    LogRecord,
    MetricRecord,
    NodeState,
    RegisterRequest,
    RegisterResponse,
    ReportBatch,
)

T = TypeVar("T")


class NodeApiError(Exception):
    """The control plane answered with an error status (``status``) or could not be reached (0)."""

    def __init__(self, message: str, status: int = 0, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        """Seconds the control plane asked to wait (``Retry-After`` of a 429 or 503)."""


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text[:200]


class NodeClient:
    def __init__(self, url: str, *, credential: str | None = None, timeout: float = 15.0) -> None:
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout)
        self.credential = credential

    async def close(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credential}"} if self.credential else {}

    async def _call(
        self,
        method: str,
        path: str,
        answer: type[T] | None,
        *,
        body: msgspec.Struct | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> T | None:
        sent = dict(self._headers(), **(headers or {}))
        if body is not None:
            content = msgspec.json.encode(body)
            sent.setdefault("Content-Type", "application/json")
        try:
            response = await self._http.request(method, path, content=content, headers=sent)
        except httpx.HTTPError as exc:
            raise NodeApiError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise NodeApiError(
                f"{method} {path}: {response.status_code} {_message(response)}",
                response.status_code,
                _retry_after(response),
            )
        if answer is None or not response.content:
            return None
        return msgspec.json.decode(response.content, type=answer)

    async def register(self, request: RegisterRequest) -> RegisterResponse:
        answer = await self._call("POST", "/v1/register", RegisterResponse, body=request)
        assert answer is not None
        return answer

    async def heartbeat(self, node_id: str, request: HeartbeatRequest) -> HeartbeatResponse:
        answer = await self._call("POST", f"/v1/nodes/{node_id}/heartbeat", HeartbeatResponse, body=request)
        return answer or HeartbeatResponse()

    async def state(self, node_id: str) -> NodeState:
        answer = await self._call("GET", f"/v1/nodes/{node_id}/state", NodeState)
        assert answer is not None
        return answer

    async def secret(self, node_id: str, key: str) -> EncryptedSecret:
        answer = await self._call("GET", f"/v1/nodes/{node_id}/secrets/{key}", EncryptedSecret)
        assert answer is not None
        return answer

    async def drift(self, node_id: str, report: DriftReport) -> None:
        await self._call("POST", f"/v1/nodes/{node_id}/drift", None, body=report)

    async def report(self, node_id: str, batch: ReportBatch) -> None:
        await self._call("POST", f"/v1/nodes/{node_id}/report", None, body=batch)

    async def rotate_keys(self, request: KeyRotateRequest) -> KeyRotateResponse:
        answer = await self._call("POST", "/v1/keys/rotate", KeyRotateResponse, body=request)
        assert answer is not None
        return answer

    async def ack(self, node_id: str, ack: ExecutionAck) -> None:
        await self._call("POST", f"/v1/nodes/{node_id}/executions/{ack.execution_id}/ack", None, body=ack)

    async def result(self, node_id: str, result: ExecutionResult) -> None:
        await self._call("POST", f"/v1/nodes/{node_id}/executions/{result.execution_id}/result", None, body=result)

    async def metrics(self, node_id: str, records: Sequence[MetricRecord]) -> None:
        await self._call(
            "POST",
            f"/v1/nodes/{node_id}/metrics",
            None,
            content=gzip.compress(msgspec.json.encode(list(records))),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def logs(self, node_id: str, records: Sequence[LogRecord]) -> None:
        ndjson = b"".join(msgspec.json.encode(record) + b"\n" for record in records)
        await self._call(
            "POST",
            f"/v1/nodes/{node_id}/logs",
            None,
            content=gzip.compress(ndjson),
            headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
        )

    async def events(self, node_id: str, last_event_id: int) -> AsyncIterator[ServerSentEvent]:
        """The node's events after ``last_event_id``, until the connection ends."""
        headers: dict[str, Any] = dict(self._headers(), **{"Last-Event-ID": str(last_event_id)})
        try:
            async with aconnect_sse(
                self._http,
                "GET",
                f"/v1/nodes/{node_id}/events",
                headers=headers,
                timeout=httpx.Timeout(15.0, read=60.0),  # the server sends a keepalive every 15 s
            ) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise NodeApiError(
                        f"event stream: {source.response.status_code} {_message(source.response)}",
                        source.response.status_code,
                    )
                async for event in source.aiter_sse():
                    yield event
        except httpx.HTTPError as exc:
            raise NodeApiError(f"event stream: {exc!r}") from exc
