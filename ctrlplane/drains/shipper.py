"""The log shipper: every line an instance writes, labelled, to the tenant's log drains.

One ``LogShipper`` runs on the leader (``Background.leader_only``). Every ``REFRESH_SECONDS`` it
reads the drains and the tenants' live instances, and keeps:

* one **follower** per instance that has a drain: the provider's log stream (``follow=True``),
  restarted when the instance's generation, replica count or release changes (a deploy, a
  scale) and when the stream ends (no replica runs), resuming after the last line it saw. Each
  line becomes a record labelled ``tenant_id``, ``instance_id``, ``release_id``, ``replica``,
  ``stream`` and ``level`` (``telemetry.logparse``), its message redacted of the instance's
  secret values and OTLP token (``secrets.service.InstanceRedactor``, as ``GET .../logs``), and
  is put in the buffer of every drain that covers the instance;
* one **sender** per drain: every ``CTRLPLANE_LOG_DRAIN_FLUSH_SECONDS`` (1 s) it POSTs what its
  buffer holds, in batches of ``CTRLPLANE_LOG_DRAIN_BATCH_LINES``, gzip'd, through the outbound
  guard, as NDJSON or OTLP/HTTP JSON logs. A failed batch is retried
  ``CTRLPLANE_LOG_DRAIN_RETRIES`` times (0.5 s, 1 s, 2 s...), then dropped.

**Back-pressure is bounded**: a drain's buffer holds at most ``CTRLPLANE_LOG_DRAIN_BUFFER_LINES``;
past that the oldest lines are dropped. Dropped lines (buffer or failed batches), lines sent and
the last error are added to the drain's row after every batch, so ``GET /v1/log-drains/{id}``
shows them. The instance never waits for a drain.

What is not promised: lines are shipped from when the shipper first follows the instance (a
drain created for a running instance starts within ``REFRESH_SECONDS``; a new instance's lines
from its start, within the last ``REPLAY_SECONDS``); a leader change may send a few lines twice.
"""

from __future__ import annotations

import gzip
import time
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
import requests
import structlog
from anyio.abc import TaskGroup
from sqlalchemy import select, update

from ctrlplane.drains.models import LogDrain
from ctrlplane.drains.service import headers_aad
from ctrlplane.ids import TenantId
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.outbound import OutboundPolicy, blocked_cause
from ctrlplane.provisioning.errors import WorkloadNotFound
from ctrlplane.secrets.crypto import DecryptionFailed
from ctrlplane.secrets.service import InstanceRedactor
from ctrlplane.telemetry import logparse
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.drains")

REFRESH_SECONDS = 2.0
REPLAY_SECONDS = 30.0
RETRY_BASE_SECONDS = 0.5
MAX_FOLLOW_PAUSE_SECONDS = 30.0
ERROR_CHARS = 500
SEVERITY = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}


class Record(msgspec.Struct, frozen=True):
    timestamp: datetime
    tenant_id: str
    instance_id: str
    release_id: str | None
    replica: int
    stream: str
    level: str
    message: str


def ndjson(records: list[Record]) -> bytes:
    return b"".join(msgspec.json.encode(record) + b"\n" for record in records)


def _attribute(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": str(value)}}


def otlp_logs(records: list[Record]) -> bytes:
    """An OTLP/HTTP ``ExportLogsServiceRequest`` in JSON: one resource per instance and release."""
    resources: dict[tuple[str, str, str | None], list[Record]] = {}
    for record in records:
        resources.setdefault((record.tenant_id, record.instance_id, record.release_id), []).append(record)
    resource_logs = []
    for (tenant_id, instance_id, release_id), members in resources.items():
        attributes = [
            _attribute("service.name", instance_id),
            _attribute("ctrlplane.tenant_id", tenant_id),
            _attribute("ctrlplane.instance_id", instance_id),
        ]
        if release_id is not None:
            attributes.append(_attribute("ctrlplane.release_id", release_id))
        resource_logs.append(
            {
                "resource": {"attributes": attributes},
                "scopeLogs": [
                    {
                        "scope": {"name": "ctrlplane"},
                        "logRecords": [
                            {
                                "timeUnixNano": str(int(r.timestamp.timestamp() * 1_000_000_000)),
                                "severityNumber": SEVERITY.get(r.level, 9),
                                "severityText": r.level.upper(),
                                "body": {"stringValue": r.message},
                                "attributes": [
                                    _attribute("ctrlplane.replica", r.replica),
                                    _attribute("log.iostream", r.stream),
                                ],
                            }
                            for r in members
                        ],
                    }
                ],
            }
        )
    return msgspec.json.encode({"resourceLogs": resource_logs})


@dataclass
class DrainBuffer:
    drain_id: str
    url: str
    format: str
    capacity: int
    headers: dict[str, str] = field(default_factory=dict)
    """The drain's own headers (opened from ``headers_sealed``), sent with every delivery."""
    lines: deque[Record] = field(default_factory=deque)
    dropped: int = 0
    """Dropped since the counters were last written."""

    def put(self, record: Record) -> None:
        if len(self.lines) >= self.capacity:
            self.lines.popleft()
            self.dropped += 1
        self.lines.append(record)


@dataclass
class Follower:
    key: tuple[Any, ...]
    scope: anyio.CancelScope


@dataclass
class Watermark:
    """The newest line a follower saw, and the messages at that instant, so a resumed stream
    (``since`` is inclusive) does not repeat them."""

    at: datetime
    messages: set[tuple[int, str]] = field(default_factory=set)

    def seen(self, timestamp: datetime, replica: int, message: str) -> bool:
        if timestamp < self.at:
            return True
        if timestamp == self.at:
            return (replica, message) in self.messages
        return False

    def advance(self, timestamp: datetime, replica: int, message: str) -> None:
        if timestamp > self.at:
            self.at, self.messages = timestamp, set()
        self.messages.add((replica, message))


class LogShipper:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.settings = services.settings
        self.policy = OutboundPolicy(self.settings.outbound_allow_cidrs)
        self.buffers: dict[str, DrainBuffer] = {}
        self.senders: dict[str, anyio.CancelScope] = {}
        self.routes: dict[str, list[str]] = {}
        """instance id -> the drains its lines go to"""
        self.followers: dict[str, Follower] = {}
        self.watermarks: dict[str, Watermark] = {}

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            while True:
                try:
                    await self.refresh(group)
                except Exception as exc:
                    log.error("log_drain_refresh_error", exc_info=exc)
                await anyio.sleep(REFRESH_SECONDS)

    async def refresh(self, group: TaskGroup) -> None:
        """Start and stop senders and followers to match the drains and instances now."""
        now = utc_now()
        routes: dict[str, list[str]] = {}
        instances: dict[str, Any] = {}
        since: dict[str, datetime] = {}
        opened: dict[str, dict[str, str]] = {}
        async with self.services.db.read() as session:
            drains = list((await session.execute(select(LogDrain).order_by(LogDrain.id))).scalars())
            for drain in drains:
                if drain.headers_sealed is not None and drain.id not in self.buffers:
                    try:
                        plain = await self.services.vault.open(
                            session, drain.tenant_id, drain.headers_sealed, aad=headers_aad(drain.id)
                        )
                    except DecryptionFailed as exc:
                        # never ship without the receiver's credentials: leave the drain idle
                        log.error("log_drain_headers_unreadable", drain_id=drain.id, error=exc.message)
                        continue
                    opened[drain.id] = msgspec.json.decode(plain, type=dict[str, str])
            for tenant_id in sorted({d.tenant_id for d in drains}):
                live = await InstanceRepository(session, TenantId(tenant_id)).live_for_tenant(tenant_id)
                for drain in (d for d in drains if d.tenant_id == tenant_id):
                    for instance in live:
                        if drain.instance_id in (None, instance.id):
                            routes.setdefault(instance.id, []).append(drain.id)
                            instances[instance.id] = instance
                            start = max(drain.created_at, instance.created_at, now - timedelta(seconds=REPLAY_SECONDS))
                            since[instance.id] = min(since.get(instance.id, start), start)
        wanted = {d.id: d for d in drains}
        for drain_id in [d for d in self.buffers if d not in wanted]:
            self.senders.pop(drain_id).cancel()
            del self.buffers[drain_id]
        for drain in drains:
            if drain.headers_sealed is not None and drain.id not in self.buffers and drain.id not in opened:
                continue
            if drain.id not in self.buffers:
                buffer = DrainBuffer(
                    drain.id, drain.url, drain.format, self.settings.log_drain_buffer_lines, opened.get(drain.id, {})
                )
                self.buffers[drain.id] = buffer
                self.senders[drain.id] = await group.start(self._sender, buffer)
        self.routes = routes
        for instance_id in [i for i in self.followers if i not in instances]:
            self.followers.pop(instance_id).scope.cancel()
            self.watermarks.pop(instance_id, None)
        for instance_id, instance in instances.items():
            key = (instance.generation, instance.replicas, instance.current_release_id, instance.state)
            current = self.followers.get(instance_id)
            if current is not None and current.key == key:
                continue
            if current is not None:
                current.scope.cancel()
            labels = (instance.tenant_id, instance.provider_name, instance.current_release_id)
            start = self.watermarks[instance_id].at if instance_id in self.watermarks else since[instance_id]
            scope = await group.start(self._follow, instance_id, labels, start)
            self.followers[instance_id] = Follower(key, scope)

    async def _follow(
        self,
        instance_id: str,
        labels: tuple[str, str, str | None],
        since: datetime,
        *,
        task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        tenant_id, provider_name, release_id = labels
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            mark = self.watermarks.setdefault(instance_id, Watermark(since))
            pause = 1.0
            redact: InstanceRedactor | None = None
            while True:
                seen_before = mark.at
                try:
                    if redact is None:
                        redact = await InstanceRedactor.load(
                            self.services, tenant_id=tenant_id, instance_id=instance_id
                        )
                    provider = self.services.providers.get(provider_name)
                    lines = provider.logs(instance_id, since=mark.at, follow=True)
                    async with aclosing(lines) as stream:  # type: ignore[type-var]
                        async for line in stream:
                            if mark.seen(line.timestamp, line.replica, line.message):
                                continue
                            mark.advance(line.timestamp, line.replica, line.message)
                            await redact.refresh()
                            level, message = logparse.parse(line.message)
                            record = Record(
                                timestamp=line.timestamp,
                                tenant_id=tenant_id,
                                instance_id=instance_id,
                                release_id=release_id,
                                replica=line.replica,
                                stream=line.stream,
                                level=level,
                                message=redact(message),
                            )
                            for drain_id in self.routes.get(instance_id, ()):
                                if (buffer := self.buffers.get(drain_id)) is not None:
                                    buffer.put(record)
                except WorkloadNotFound:
                    pass
                except Exception as exc:
                    log.error("log_drain_follow_error", instance_id=instance_id, exc_info=exc)
                # The stream ended (no replica runs, e.g. a stopped instance): look again soon
                # after a stream that carried lines, less and less often after empty ones.
                pause = 1.0 if mark.at != seen_before else min(pause * 2, MAX_FOLLOW_PAUSE_SECONDS)
                await anyio.sleep(pause)

    async def _sender(
        self, buffer: DrainBuffer, *, task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.CancelScope() as scope, self.policy.session() as session:
            task_status.started(scope)
            while True:
                await anyio.sleep(self.settings.log_drain_flush_seconds)
                try:
                    await self.flush(buffer, session)
                except Exception as exc:
                    log.error("log_drain_send_error", drain_id=buffer.drain_id, exc_info=exc)

    async def flush(self, buffer: DrainBuffer, session: requests.Session) -> None:
        """Send everything buffered now, batch by batch, and write the counters."""
        while buffer.lines or buffer.dropped:
            count = min(len(buffer.lines), self.settings.log_drain_batch_lines)
            batch = [buffer.lines.popleft() for _ in range(count)]
            error = await self.ship(buffer, session, batch) if batch else None
            sent, dropped = (len(batch), 0) if error is None else (0, len(batch))
            dropped, buffer.dropped = dropped + buffer.dropped, 0
            await self.count(buffer.drain_id, sent=sent, dropped=dropped, error=error)
            if error is not None:
                return

    async def ship(self, buffer: DrainBuffer, session: requests.Session, batch: list[Record]) -> str | None:
        """POST one batch with its retries; None when the receiver took it, else the last error."""
        body = gzip.compress(otlp_logs(batch) if buffer.format == "otlp" else ndjson(batch))
        content_type = "application/json" if buffer.format == "otlp" else "application/x-ndjson"
        headers = {**buffer.headers, "Content-Type": content_type, "Content-Encoding": "gzip"}
        timeout = self.settings.log_drain_timeout_seconds
        error: str | None = None
        for attempt in range(self.settings.log_drain_retries + 1):
            if attempt:
                await anyio.sleep(RETRY_BASE_SECONDS * 2 ** (attempt - 1))
            error = await anyio.to_thread.run_sync(_post, session, buffer.url, body, headers, timeout)
            if error is None:
                return None
        return error

    async def count(self, drain_id: str, *, sent: int, dropped: int, error: str | None) -> None:
        values: dict[str, Any] = {
            "sent_lines": LogDrain.sent_lines + sent,
            "dropped_lines": LogDrain.dropped_lines + dropped,
        }
        if error is not None:
            values["last_error"] = error
        if sent:
            values["last_sent_at"] = utc_now()
        async with self.services.db.write() as session, session.begin():
            await session.execute(update(LogDrain).where(LogDrain.id == drain_id).values(**values))


def _post(session: requests.Session, url: str, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
    started = time.monotonic()
    try:
        with session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True
        ) as response:
            if 200 <= response.status_code < 300:
                return None
            return f"answered {response.status_code} after {int((time.monotonic() - started) * 1000)} ms"
    except requests.RequestException as exc:
        blocked = blocked_cause(exc)
        reason = f"refused by the outbound guard: {blocked}" if blocked else f"{type(exc).__name__}: {exc}"
        return reason[:ERROR_CHARS]
