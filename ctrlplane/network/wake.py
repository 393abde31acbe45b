"""The wake listener: where the router sends the requests of a sleeping instance.

A small HTTP/1.1 server (h11 over asyncio streams) on ``CTRLPLANE_ROUTER_WAKE_LISTEN``, loopback by
default. Caddy proxies a request here when the instance's site is marked ``wake`` and no replica is
in rotation (``caddy.py``), with the instance's id, an HMAC of it under this process's wake secret
and the original URI in ``X-Ctrlplane-Wake-*`` headers; a request without a valid HMAC is 403.

For each request the listener

1. claims the wake (``sleep.claim_wake``: one conditional UPDATE, so concurrent first requests,
   here or on another replica, start the instance once) and wakes the workers;
2. holds the request (its body read whole) until the instance runs and one of its replicas for
   the request's route answers HTTP: it probes the replica as soon as a worker of this process
   announces that the provider started it, and otherwise looks at the database again when an event
   is committed, at the latest every ``POLL_SECONDS``;
3. sends it to that replica and answers with the app's own response: status, headers and body.

Past ``CTRLPLANE_WAKE_TIMEOUT`` from its arrival the request is answered ``503`` with
``Retry-After: CTRLPLANE_WAKE_RETRY_AFTER_SECONDS``; an instance that is gone, failed or stopped
(by the API) answers 503 at once. Meanwhile the router's next push puts the woken replicas in
rotation, so later requests go straight to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass

import h11
import httpx
import structlog
from sqlalchemy import select

from ctrlplane import httpclients
from ctrlplane.db import Database
from ctrlplane.instances.models import Instance
from ctrlplane.network.access import route_of
from ctrlplane.network.caddy import WAKE_INSTANCE_HEADER, WAKE_TOKEN_HEADER, WAKE_URI_HEADER, wake_token
from ctrlplane.network.models import Route, Upstream
from ctrlplane.network.sleep import SLEEPING, IdleHandlers, claim_wake
from ctrlplane.provisioning.contract import WorkloadStatus
from ctrlplane.settings import Settings
from ctrlplane.signals import Announcements, Signal

log = structlog.get_logger("ctrlplane.wake")

POLL_SECONDS = 0.05
PROBE_RETRY_SECONDS = 0.01
EVENT_LOOK_SECONDS = 0.02
PROXY_ATTEMPTS = 5
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
PROBE_TIMEOUT_SECONDS = 1.0
MAX_BODY_BYTES = 16 * 1024 * 1024
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
GIVE_UP_STATES = ("failed", "stopped", "stopping", "destroying", "destroyed")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Target:
    dial: str
    path: str


def _text(status: int, message: str, *extra: tuple[str, str]) -> Answer:
    return Answer(status, [("content-type", "text/plain; charset=utf-8"), *extra], message.encode() + b"\n")


Dial = tuple[int, str]
"""(container port, ``host:port``) of one serving replica"""


def _target(uri: str, routes: Sequence[Route], dials: Sequence[Dial], ports: Sequence[int]) -> Target | None:
    """Where Caddy would have sent ``uri``: the longest route path it falls under (the heaviest route
    of that path), else the instance's first port; ``strip_prefix`` applied."""
    path, _, query = uri.partition("?")
    serving = [r for r in routes if r.weight > 0]
    chosen = route_of(path or "/", sorted({r.path for r in serving}))
    candidates = sorted((r for r in serving if r.path == chosen), key=lambda r: (-r.weight, r.id))
    port = candidates[0].port if candidates else (ports[0] if ports else None)
    if port is None:
        return None
    found = [dial for container_port, dial in dials if container_port == port]
    if not found:
        return None
    if candidates and candidates[0].strip_prefix and chosen != "/":
        path = path[len(chosen.rstrip("/")) :] or "/"
    return Target(dial=found[0], path=path + (f"?{query}" if query else ""))


def _rotation(upstreams: Sequence[Upstream]) -> list[Dial]:
    return [(u.container_port, f"{u.host}:{u.host_port}") for u in upstreams if u.weight > 0]


def _started(status: WorkloadStatus) -> list[Dial]:
    """The replicas a provider just reported running, newest generation first (as the rotation)."""
    replicas = sorted(status.replicas, key=lambda r: (-r.generation, r.replica))
    return [
        (e.container_port, f"{e.host}:{e.host_port}")
        for r in replicas
        if r.state == "running"
        for e in r.endpoints
        if e.protocol == "tcp"
    ]


@dataclass(frozen=True)
class Look:
    """What the database says of a woken instance."""

    state: str
    ports: list[int]
    routes: list[Route]
    rotation: list[Dial]


class WakeServer:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        work: Signal,
        events: Signal,
        started: Announcements[WorkloadStatus],
        secret: str,
        handlers: IdleHandlers | None = None,
    ) -> None:
        self.settings = settings
        self.handlers = handlers
        self.db = db
        self.work = work
        self.events = events
        self.started = started
        self.secret = secret
        self.server: asyncio.Server | None = None
        self.woken = 0
        self.client: httpx.AsyncClient | None = None
        self._open: set[asyncio.StreamWriter] = set()
        """The connections being served (Caddy keeps them open between requests)."""

    @property
    def address(self) -> str | None:
        if self.server is None or not self.server.sockets:
            return None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        host, _, port = self.settings.router_wake_listen.rpartition(":")
        # one client for every probe and proxied request (its connections are reused)
        self.client = httpclients.client(timeout=PROBE_TIMEOUT_SECONDS)
        self.server = await asyncio.start_server(self._connection, host, int(port))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None
        # a connection waiting for the router's next request ends at once (a request still held
        # on one is cut: the router answers it 502)
        for writer in list(self._open):
            writer.close()
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)
        self._open.add(writer)
        try:
            while True:
                request, body = await self._read(connection, reader)
                if request is None:
                    return
                try:
                    answer = await self.handle(request, body)
                except Exception as exc:
                    log.error("wake_failed", exc_info=exc)
                    answer = _text(502, "ctrlplane could not wake this instance")
                headers = [*answer.headers, ("content-length", str(len(answer.body)))]
                writer.write(connection.send(h11.Response(status_code=answer.status, headers=headers)) or b"")
                if request.method != b"HEAD" and answer.body:
                    writer.write(connection.send(h11.Data(data=answer.body)) or b"")
                writer.write(connection.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if connection.our_state is h11.MUST_CLOSE or connection.their_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            self._open.discard(writer)
            writer.close()

    async def _read(self, connection: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                connection.receive_data(data)
                if not data and connection.their_state is h11.IDLE:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    raise h11.LocalProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None, b""

    async def handle(self, request: h11.Request, body: bytes) -> Answer:
        arrived = time.monotonic()
        headers = {name.decode().lower(): value.decode("latin-1") for name, value in request.headers}
        instance_id = headers.get(WAKE_INSTANCE_HEADER.lower(), "")
        token = headers.get(WAKE_TOKEN_HEADER.lower(), "")
        if not instance_id or not hmac.compare_digest(token, wake_token(self.secret, instance_id)):
            return _text(403, "not a request from ctrlplane's router")
        uri = headers.get(WAKE_URI_HEADER.lower()) or request.target.decode("latin-1")
        deadline = arrived + self.settings.wake_timeout_seconds
        client = self.client
        assert client is not None, "the listener serves requests only once started"
        target = await self.wait_until_serving(client, instance_id, uri, deadline)
        if target is None:
            return _text(
                503,
                "this instance is waking up; try again shortly",
                ("retry-after", str(self.settings.wake_retry_after_seconds)),
            )
        forwarded = [
            (name, value)
            for name, value in headers.items()
            if name not in HOP_BY_HOP and not name.startswith("x-ctrlplane-wake-")
        ]
        timeout = httpx.Timeout(max(1.0, deadline - time.monotonic()), connect=PROBE_TIMEOUT_SECONDS)
        method = request.method.decode()
        for attempt in range(PROXY_ATTEMPTS):
            try:
                response = await client.request(
                    method, f"http://{target.dial}{target.path}", headers=forwarded, content=body, timeout=timeout
                )
                break
            except httpx.HTTPError as exc:
                # a just-started app may drop a connection or two: retry what was not sent, and
                # idempotent requests (as the router itself does), while the budget lasts
                retryable = isinstance(exc, httpx.ConnectError) or method in IDEMPOTENT
                if not retryable or attempt + 1 == PROXY_ATTEMPTS or time.monotonic() >= deadline:
                    log.warning("wake_proxy_failed", instance=instance_id, error=str(exc))
                    return _text(502, "the woken instance did not answer")
                await asyncio.sleep(PROBE_RETRY_SECONDS)
        # httpx hands the body over decoded, so its encoding header no longer applies
        return Answer(
            response.status_code,
            [
                (name, value)
                for name, value in response.headers.multi_items()
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-encoding"
            ],
            response.content,
        )

    async def wait_until_serving(
        self, probe: httpx.AsyncClient, instance_id: str, uri: str, deadline: float
    ) -> Target | None:
        """Wake the instance if it sleeps, then wait for a replica of the request's route that answers
        HTTP; None past ``deadline`` or when it will not come up (gone, failed, stopped).

        The instance is looked at again as soon as an event is committed (``events`` is relayed
        between replicas on PostgreSQL) and at least every ``POLL_SECONDS``. A worker of this process
        that starts it announces the provider's status at once (``started``), before it records it:
        its replicas are probed from that, without waiting for the record and another look. Once a
        replica is known, it is probed every ``PROBE_RETRY_SECONDS`` until its app answers."""
        with self.started.awaiting(instance_id) as started:
            look: Look | None = None
            looked = 0.0
            changed = self.events.armed()
            while time.monotonic() < deadline:
                # the database is read at most every POLL_SECONDS per held request, sooner only
                # after an event was committed (any event: at most every EVENT_LOOK_SECONDS), so many
                # requests held at once do not crowd it
                since = time.monotonic() - looked
                if look is None or since >= POLL_SECONDS or (changed.is_set() and since >= EVENT_LOOK_SECONDS):
                    changed = self.events.armed()
                    look, looked = await self._look(instance_id), time.monotonic()
                    if look is None:
                        return None
                    if look.state == SLEEPING:
                        async with self.db.write() as session, session.begin():
                            claimed = await claim_wake(session, instance_id, self.handlers)
                        if claimed:
                            self.woken += 1
                            await self.work.notify()
                announced = _started(started.result()) if started.done() else []
                dials = announced or (look.rotation if look.state == "running" else [])
                target = _target(uri, look.routes, dials, look.ports)
                if target is not None:
                    if await _answers(probe, target.dial):
                        return target
                    # started, but its app does not listen yet: a refused loopback connection is cheap
                    await asyncio.sleep(PROBE_RETRY_SECONDS)
                    continue
                await _either(changed, None if started.done() else started, POLL_SECONDS)
        return None

    async def _look(self, instance_id: str) -> Look | None:
        """None when the instance will not come up: gone, failed or stopped."""
        async with self.db.read() as session:
            instance = await session.get(Instance, instance_id)
            if instance is None or instance.state in GIVE_UP_STATES:
                return None
            routes = (await session.execute(select(Route).where(Route.instance_id == instance_id))).scalars()
            upstreams = (
                await session.execute(
                    select(Upstream)
                    .where(Upstream.instance_id == instance_id)
                    .order_by(Upstream.generation.desc(), Upstream.replica)
                )
            ).scalars()
            return Look(
                state=instance.state,
                ports=[int(p["container_port"]) for p in instance.ports if p.get("protocol", "tcp") == "tcp"],
                routes=list(routes),
                rotation=_rotation(list(upstreams)),
            )


async def _either(changed: asyncio.Event, started: asyncio.Future[WorkloadStatus] | None, timeout: float) -> None:
    """Until ``changed`` is set, ``started`` (if any) is done or ``timeout`` passed."""
    if started is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
        return
    waiting = asyncio.ensure_future(changed.wait())
    try:
        await asyncio.wait((waiting, started), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


async def _answers(client: httpx.AsyncClient, dial: str) -> bool:
    try:
        await client.get(f"http://{dial}/")
    except httpx.HTTPError:
        return False
    return True
