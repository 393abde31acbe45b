"""Webhook deliveries: from the durable event log to each endpoint, at least once, in order.

**Fan-out.** ``fan_out`` takes endpoints whose ``cursor`` is behind their tenant's newest event
(``FOR UPDATE SKIP LOCKED``, so replicas share them out), and in one transaction records a
delivery for every event after the cursor whose type the endpoint wants, and moves the cursor.
A crash before the commit loses nothing (the cursor did not move); after it, the deliveries are
durable.

**Sending.** ``claim`` takes the oldest delivery of an endpoint that is due, provided no older
delivery of the same endpoint is unfinished (so an endpoint's messages go out one at a time, in
event order), and leases it: ``state = sending`` until ``lease_expires_at`` (the timeout plus a
margin). The POST is made outside any transaction, through the outbound guard, signed per the
Standard Webhooks scheme (``signing.py``) with a fresh ``webhook-timestamp``; redirects are not
followed and at most ``CTRLPLANE_WEBHOOK_MAX_RESPONSE_BYTES`` of the answer are read. A 2xx is
success; anything else, or no answer within ``CTRLPLANE_WEBHOOK_TIMEOUT_SECONDS``, is a failure.
The result is written in a new transaction only if the lease is still ours. A process killed
mid-delivery leaves the row ``sending``; once the lease expires any replica claims it again, and
the receiver gets the message again with the same ``webhook-id`` (at least once).

**Retries.** After the n-th failed attempt the next one is due after
``min(RETRY_MAX, RETRY_BASE * 2**(n-1))`` seconds, times a random factor in [0.5, 1] (jitter,
so endpoints that failed together do not retry together). When the next attempt would fall past
``CTRLPLANE_WEBHOOK_RETRY_PERIOD`` after the first one, the delivery is ``failed``, its endpoint
``failing`` (its later deliveries wait, so none is lost) and a ``webhook.failing`` event is
appended. Defaults: 5 s doubling up to 1 h, for 24 h.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
import requests
import structlog
from sqlalchemy import and_, delete, func, or_, select

from ctrlplane import __version__
from ctrlplane.events.models import Event, EventStream
from ctrlplane.events.service import append as append_event
from ctrlplane.events.service import events_after
from ctrlplane.outbound import OutboundPolicy, blocked_cause, redacted
from ctrlplane.signals import Absence
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices
from ctrlplane.webhooks import signing
from ctrlplane.webhooks.models import WebhookDelivery, WebhookEndpoint
from ctrlplane.webhooks.service import matches, new_delivery, secret_aad

log = structlog.get_logger("ctrlplane.webhooks")

FAN_OUT_ENDPOINTS = 20
FAN_OUT_EVENTS = 200
LEASE_MARGIN_SECONDS = 5.0
ATTEMPT_LOG = 20
POLL_SECONDS = 1.0
ABSENCE_SECONDS = 10.0
"""With no enabled endpoint, a dispatcher looks again when a commit writes ``webhook_endpoints``, or
after this long (``signals.Absence``), instead of at each of its wake-ups."""
ERROR_CHARS = 500
UNFINISHED = ("pending", "sending")
PRUNE_INTERVAL_SECONDS = 300.0
ENABLED = select(WebhookEndpoint.id).where(WebhookEndpoint.enabled.is_(True))
"""An endpoint that takes deliveries; with none (most installations, most of the time) a wake-up
costs this one small read instead of fan-out's and the claim's."""


def event_payload(event: Any) -> dict[str, Any]:
    """The JSON body of an event's message: Standard Webhooks' ``type``, ``timestamp`` and ``data``."""
    return {
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": {
            "event_id": event.event_id,
            "seq": event.id,
            "tenant_id": event.tenant_id,
            "instance_id": event.instance_id,
            **event.data,
        },
    }


def backoff(settings: Any, attempts: int, rng: random.Random) -> float:
    base = min(settings.webhook_retry_max_seconds, settings.webhook_retry_base_seconds * 2 ** max(attempts - 1, 0))
    return float(base * rng.uniform(0.5, 1.0))


@dataclass(frozen=True)
class Attempt:
    delivery_id: str
    url: str
    message_id: str
    body: bytes
    secrets: list[str]


@dataclass(frozen=True)
class Outcome:
    status: int | None
    latency_ms: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(session: requests.Session, attempt: Attempt, *, timeout: float, max_bytes: int) -> Outcome:
    """One signed POST through a guarded session (blocking: run it in a worker thread)."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"ctrlplane-webhooks/{__version__}",
        **signing.headers(attempt.secrets, attempt.message_id, timestamp, attempt.body),
    }
    started = time.monotonic()
    deadline = started + timeout
    try:
        with session.post(
            attempt.url, data=attempt.body, headers=headers, timeout=timeout, allow_redirects=False, stream=True
        ) as response:
            read = 0
            for chunk in response.iter_content(8192):
                read += len(chunk)
                if read > max_bytes or time.monotonic() > deadline:
                    break
            latency = int((time.monotonic() - started) * 1000)
            error = None if 200 <= response.status_code < 300 else f"answered {response.status_code}"
            return Outcome(status=response.status_code, latency_ms=latency, error=error)
    except requests.RequestException as exc:
        blocked = blocked_cause(exc)
        reason = f"refused by the outbound guard: {blocked}" if blocked else f"{type(exc).__name__}: {exc}"
        return Outcome(status=None, latency_ms=int((time.monotonic() - started) * 1000), error=reason[:ERROR_CHARS])


class WebhookDispatcher:
    READS = frozenset(
        {Event.__tablename__, EventStream.__tablename__, *(m.__tablename__ for m in (WebhookEndpoint, WebhookDelivery))}
    )
    """What fan-out and claims read: a commit that wrote none of it gives them nothing new."""

    def __init__(self, services: AppServices, *, rng: random.Random | None = None) -> None:
        self.services = services
        self.settings = services.settings
        self.owner = f"{services.replica}:{id(self):x}"[-64:]
        self.rng = rng or random.Random()
        self.policy = OutboundPolicy(self.settings.outbound_allow_cidrs)
        # One session per loop, which sends one request at a time: connections to a receiver are
        # kept alive between its deliveries (each new connection is still vetted by the guard).
        self.session = self.policy.session()
        self.endpoints = Absence(services.events, frozenset({WebhookEndpoint.__tablename__}), ABSENCE_SECONDS)

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)

    async def _any(self, statement: Any) -> bool:
        """Whether ``statement`` finds a row now, read without a lock: an idle loop (no endpoint
        behind, no delivery due, the usual case) never opens a write transaction, which on SQLite
        would take the database's write lock at every wake-up."""
        async with self.services.db.read() as session:
            return (await session.execute(statement.limit(1))).first() is not None

    async def fan_out(self) -> int:
        """Turn new events into deliveries for the endpoints that want them; how many were recorded."""
        statement = (
            select(WebhookEndpoint)
            .join(EventStream, EventStream.tenant_id == WebhookEndpoint.tenant_id)
            .where(WebhookEndpoint.enabled.is_(True), WebhookEndpoint.cursor < EventStream.last_seq)
        )
        if not await self._any(statement):
            return 0
        locked = (
            statement.order_by(WebhookEndpoint.id)
            .limit(FAN_OUT_ENDPOINTS)
            .with_for_update(skip_locked=True, of=WebhookEndpoint)
        )
        recorded = 0
        async with self.services.db.write() as session, session.begin():
            for endpoint in (await session.execute(locked)).scalars().all():
                events = await events_after(
                    session, tenant_id=endpoint.tenant_id, after=endpoint.cursor, limit=FAN_OUT_EVENTS
                )
                for event in events:
                    if matches(endpoint.event_types, event.type):
                        session.add(
                            new_delivery(
                                endpoint,
                                message_id=event.event_id,
                                event_seq=event.id,
                                event_type=event.type,
                                payload=event_payload(event),
                            )
                        )
                        recorded += 1
                if events:
                    endpoint.cursor = events[-1].id
        return recorded

    async def claim(self) -> Attempt | None:
        now = utc_now()
        # Each endpoint's head: its oldest unfinished delivery (read through the (state,
        # webhook_id, id) index, so finished deliveries, however many, are never scanned). Only a
        # head is claimable, which is what keeps an endpoint's deliveries in order.
        heads = (
            select(func.min(WebhookDelivery.id))
            .where(WebhookDelivery.state.in_(UNFINISHED))
            .group_by(WebhookDelivery.webhook_id)
        )
        claimable = or_(
            and_(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now),
            and_(WebhookDelivery.state == "sending", WebhookDelivery.lease_expires_at <= now),
        )
        statement = (
            select(WebhookDelivery, WebhookEndpoint)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.webhook_id)
            .where(
                WebhookDelivery.id.in_(heads),
                claimable,
                WebhookEndpoint.enabled.is_(True),
                WebhookEndpoint.status == "active",
            )
        )
        if not await self._any(statement):
            return None
        locked = statement.order_by(WebhookDelivery.id).limit(1).with_for_update(skip_locked=True, of=WebhookDelivery)
        async with self.services.db.write() as session, session.begin():
            row = (await session.execute(locked)).first()
            if row is None:
                return None
            delivery, endpoint = row
            delivery.state = "sending"
            delivery.lease_owner = self.owner
            delivery.lease_expires_at = now + self.lease
            delivery.attempts += 1
            delivery.first_attempt_at = delivery.first_attempt_at or now
            vault = self.services.vault
            secrets = [
                (
                    await vault.open(session, endpoint.tenant_id, endpoint.secret_sealed, aad=secret_aad(endpoint.id))
                ).decode()
            ]
            expires = endpoint.previous_secret_expires_at
            if endpoint.previous_secret_sealed is not None and expires is not None and expires > now:
                previous = await vault.open(
                    session, endpoint.tenant_id, endpoint.previous_secret_sealed, aad=secret_aad(endpoint.id)
                )
                secrets.append(previous.decode())
            return Attempt(
                delivery_id=delivery.id,
                url=endpoint.url,
                message_id=delivery.message_id,
                body=msgspec.json.encode(delivery.payload),
                secrets=secrets,
            )

    async def send(self, attempt: Attempt) -> Outcome:
        return await anyio.to_thread.run_sync(
            lambda: post(
                self.session,
                attempt,
                timeout=self.settings.webhook_timeout_seconds,
                max_bytes=self.settings.webhook_max_response_bytes,
            )
        )

    async def record(self, attempt: Attempt, outcome: Outcome, at: datetime) -> None:
        statement = (
            select(WebhookDelivery)
            .where(WebhookDelivery.id == attempt.delivery_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        async with self.services.db.write() as session, session.begin():
            delivery = (await session.execute(statement)).scalar_one_or_none()
            if delivery is None or delivery.state != "sending" or delivery.lease_owner != self.owner:
                return  # deleted, or the lease expired and another worker took it over
            now = utc_now()
            entry = {
                "at": at.isoformat(),
                "response_status": outcome.status,
                "latency_ms": outcome.latency_ms,
                "error": outcome.error,
            }
            delivery.attempt_log = [*delivery.attempt_log, entry][-ATTEMPT_LOG:]
            delivery.response_status, delivery.latency_ms, delivery.error = (
                outcome.status,
                outcome.latency_ms,
                outcome.error,
            )
            delivery.lease_owner = delivery.lease_expires_at = None
            if outcome.ok:
                delivery.state, delivery.delivered_at = "succeeded", now
                return
            delay = timedelta(seconds=backoff(self.settings, delivery.attempts, self.rng))
            first = delivery.first_attempt_at or now
            if now + delay <= first + timedelta(seconds=self.settings.webhook_retry_period_seconds):
                delivery.state, delivery.next_attempt_at = "pending", now + delay
                return
            delivery.state = "failed"
            endpoint = await session.get(WebhookEndpoint, delivery.webhook_id, with_for_update=True)
            if endpoint is not None and endpoint.status != "failing":
                endpoint.status, endpoint.failing_since, endpoint.updated_at = "failing", now, now
                await append_event(
                    session,
                    tenant_id=endpoint.tenant_id,
                    instance_id=None,
                    type="webhook.failing",
                    data={
                        "webhook_id": endpoint.id,
                        "url": redacted(endpoint.url),
                        "delivery_id": delivery.id,
                        "attempts": delivery.attempts,
                        "error": outcome.error,
                    },
                )
                log.warning("webhook_failing", webhook_id=endpoint.id, delivery_id=delivery.id, error=outcome.error)

    async def deliver_once(self) -> bool:
        """Send one due delivery; False when none was due."""
        attempt = await self.claim()
        if attempt is None:
            return False
        at = utc_now()
        outcome = await self.send(attempt)
        await self.record(attempt, outcome, at)
        return True

    async def prune(self) -> int:
        """Delete finished deliveries older than ``CTRLPLANE_WEBHOOK_DELIVERY_RETENTION``; how many."""
        cutoff = utc_now() - timedelta(seconds=self.settings.webhook_delivery_retention_seconds)
        async with self.services.db.write() as session, session.begin():
            result = await session.execute(
                delete(WebhookDelivery).where(
                    WebhookDelivery.state.in_(("succeeded", "failed")), WebhookDelivery.created_at < cutoff
                )
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    async def run_forever(self) -> None:
        next_prune = time.monotonic() + self.rng.uniform(0, PRUNE_INTERVAL_SECONDS)
        while True:
            busy = False
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                try:
                    await self.prune()
                except Exception as exc:
                    log.error("webhook_prune_error", exc_info=exc)
            try:
                # none: nothing to fan out, and no delivery can be claimed
                if await self.endpoints.present(lambda: self._any(ENABLED)):
                    busy = bool(await self.fan_out())
                    busy = await self.deliver_once() or busy
            except Exception as exc:
                log.error("webhook_delivery_error", exc_info=exc)
            if not busy:
                await self.services.events.wait(
                    min(POLL_SECONDS, self.settings.webhook_retry_base_seconds), interest=self.READS
                )
