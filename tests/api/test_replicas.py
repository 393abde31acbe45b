"""Several replicas on one PostgreSQL database: one leader runs the singleton loops, another takes
over within a lease period when it stops or loses its connection, and events committed through
one replica reach SSE clients of another through LISTEN/NOTIFY.

Each replica is a full app (its own Database, FakeProvider and background) served by uvicorn on a
loopback port, all on this run's PostgreSQL test database. On SQLite one process is the supported
mode: see tests/test_single_process.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from sqlalchemy import text

from ctrlplane.app import create_app
from ctrlplane.cluster import LEADER_LOCK_KEY
from ctrlplane.db import Database, connect
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from tests.api.test_events import INSTANCE
from tests.conftest import Api, Tokens, bearer
from tests.fakes import FakeProvider
from tests.waiting import eventually

LEASE = 3.0
SLACK = 2.0  # a loaded test machine may be slow to schedule the follower's retry


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


class Replica:
    def __init__(self, settings: Settings, name: str) -> None:
        self.name = name
        self.settings = msgspec.structs.replace(settings, replica_name=name)
        self.fake = FakeProvider()
        self.db: Database | None = None
        self.app: Any = None
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        self.db = connect(self.settings.resolved_database_url)
        self.app = app = create_app(self.settings, providers=ProviderRegistry([self.fake]), db=self.db)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(1000):
            if self.server.started:
                break
            await asyncio.sleep(0.01)
        assert self.server.started, "uvicorn did not start"
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await asyncio.wait_for(self.task, timeout=30)
            self.server = None
        if self.db is not None:
            await self.db.dispose()
            self.db = None

    @property
    def reconciler_passes(self) -> int:
        return sum(1 for method, _ in self.fake.calls if method == "observe")


@pytest.fixture
async def replicas(settings: Settings, db: Database) -> AsyncIterator[Callable[..., Any]]:
    started: list[Replica] = []

    async def start(name: str, **overrides: Any) -> Replica:
        replica = Replica(msgspec.structs.replace(settings, leader_lease_seconds=LEASE, **overrides), name)
        await replica.start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


async def only_one_reconciles(a: Replica, b: Replica, seconds: float = 2.0) -> Replica:
    await eventually(lambda: a.reconciler_passes + b.reconciler_passes > 0, timeout=30)
    before = (a.reconciler_passes, b.reconciler_passes)
    await asyncio.sleep(seconds)
    grew = [r for r, old in zip((a, b), before, strict=True) if r.reconciler_passes > old]
    assert len(grew) == 1, f"reconciler passes grew on {[r.name for r in grew]}"
    return grew[0]


async def test_one_replica_leads_and_the_other_takes_over_within_a_lease_when_it_stops(replicas: Any) -> None:
    a = await replicas("a")
    b = await replicas("b")
    leader = await only_one_reconciles(a, b)
    follower = b if leader is a else a
    passes = follower.reconciler_passes
    stopped = time.monotonic()
    await leader.stop()
    await eventually(lambda: follower.reconciler_passes > passes, timeout=30)
    assert time.monotonic() - stopped < LEASE + SLACK


async def test_leader_that_loses_its_database_connection_steps_down(replicas: Any, db: Database) -> None:
    a = await replicas("a")
    b = await replicas("b")
    leader = await only_one_reconciles(a, b)
    follower = b if leader is a else a
    passes = follower.reconciler_passes
    async with db.engine.connect() as conn:
        terminated = (
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND ((classid::bigint << 32) | objid::bigint) = :key"
                ),
                {"key": LEADER_LOCK_KEY},
            )
        ).all()
    assert terminated == [(True,)]
    cut = time.monotonic()
    await eventually(lambda: follower.reconciler_passes > passes, timeout=30)
    assert time.monotonic() - cut < LEASE + SLACK
    assert await only_one_reconciles(a, b) is follower


async def _first_new_event(
    url: str, headers: dict[str, str], since: int, arrived: asyncio.Queue[dict[str, Any]]
) -> None:
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream(
            "GET", f"{url}/v1/events", params={"since": since}, headers={**headers, "Accept": "text/event-stream"}
        ) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
            if data:  # a heartbeat comes with an empty data line
                await arrived.put(msgspec.json.decode(data))


async def test_event_committed_on_one_replica_reaches_an_sse_client_of_another_at_once(
    replicas: Any, tokens: Tokens
) -> None:
    a = await replicas("a", event_poll_seconds=120.0)
    b = await replicas("b", event_poll_seconds=120.0, background=False)  # only NOTIFY can wake its stream
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as http:
        on_a = Api(http, tokens)
        tenant = await on_a.create_tenant("acme", plan="pro")
        token = bearer(tokens.tenant(tenant["id"]))
        arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        reader = asyncio.create_task(_first_new_event(b.url, token, 0, arrived))
        try:
            await asyncio.sleep(1.0)  # the stream on b has replayed nothing and now waits
            assert arrived.empty()
            sent = time.monotonic()
            created = await http.post("/v1/instances", json=INSTANCE, headers=token)
            assert created.status_code == 201, created.text
            event = await asyncio.wait_for(arrived.get(), timeout=10)
            assert time.monotonic() - sent < 10  # the 120 s poll would not have seen it
            assert event["type"] == "instance.created"
            assert event["instance_id"] == created.json()["id"]
        finally:
            reader.cancel()


async def key_cached_by(
    b: Replica, http: httpx.AsyncClient, tokens: Tokens, a: Replica
) -> tuple[dict[str, str], str, dict[str, str]]:
    """A tenant made through ``a`` and an API key of it, which ``b`` then serves from its row cache
    (after three reads: the first writes ``last_used_at``, which invalidates the entry): the
    tenant admin's headers, the key's id and its headers. ``http`` is left pointed at ``a``."""
    http.base_url = httpx.URL(a.url)
    tenant = await Api(http, tokens).create_tenant("acme", plan="pro")
    admin = bearer(tokens.tenant(tenant["id"]))
    created = await http.post("/v1/keys", json={"name": "ci", "roles": ["read"]}, headers=admin)
    assert created.status_code == 201, created.text
    key_id, key = created.json()["id"], bearer(created.json()["key"])
    for _ in range(3):
        assert (await http.get(f"{b.url}/v1/instances", headers=key)).status_code == 200
    assert b.db is not None and b.db.rows.get("api_keys", key_id) is not None, "b does not serve it from memory"
    return admin, key_id, key


def key_provider(replica: Replica) -> Any:
    return next(p for p in replica.app.state.services.authenticator.providers if p.name == "api_key")


async def test_a_key_revoked_on_one_replica_is_refused_by_another_on_its_next_request(
    replicas: Any, tokens: Tokens
) -> None:
    a = await replicas("a", api_key_touch_seconds=3600)
    b = await replicas("b", api_key_touch_seconds=3600, background=False)
    async with httpx.AsyncClient(timeout=30) as http:
        admin, key_id, key = await key_cached_by(b, http, tokens, a)
        revoked = await http.delete(f"{a.url}/v1/keys/{key_id}", headers=admin)
        assert revoked.status_code == 204, revoked.text
        refused = await http.get(f"{b.url}/v1/instances", headers=key)
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == "unauthenticated"


@pytest.mark.parametrize("when", ["after_its_read", "during_the_barrier", "during_a_writes_barrier"])
async def test_a_key_revoked_while_a_request_by_it_is_under_way_on_another_replica_gets_no_answer(
    replicas: Any, tokens: Tokens, when: str
) -> None:
    """A read by a cached key runs its handler while the barrier's round trip is under way; the key
    is revoked through replica a after b read it from its cache, or while b's barrier round is
    under way (committed before its token leaves): the handler's answer is withheld and the caller
    gets 401. A write confirms the key before its handler: refused with 401 too (the key may only
    read, so a write that got past authentication would be a 403)."""
    a = await replicas("a", api_key_touch_seconds=3600)
    b = await replicas("b", api_key_touch_seconds=3600, background=False)
    async with httpx.AsyncClient(timeout=30) as http:
        admin, key_id, key = await key_cached_by(b, http, tokens, a)
        assert b.db is not None

        deferred: list[bool] = []

        async def revoke() -> None:
            revoked = await http.delete(f"{a.url}/v1/keys/{key_id}", headers=admin)
            assert revoked.status_code == 204, revoked.text

        provider = key_provider(b)
        rows = b.db.rows
        if when == "after_its_read":
            authenticate = provider.authenticate

            async def read_then_revoke(token: str, session: Any) -> Any:
                authenticated = await authenticate(token, session)
                deferred.append(authenticated.confirm is not None)
                await revoke()
                # b has heard of it before the answer starts (the revocation came after the request
                # began: without this wait, b's round may come back first and the read be answered)
                await eventually(lambda: rows.get("api_keys", key_id) is None, "b dropped the revoked key")
                return authenticated

            provider.authenticate = read_then_revoke
        else:
            start_barrier = rows.start_barrier
            tasks: list[asyncio.Task[None]] = []

            def revoke_before_the_token_is_sent() -> asyncio.Event:
                rows.start_barrier = start_barrier  # once
                deferred.append(True)
                given = asyncio.Event()

                async def slow_round() -> None:  # the round's token leaves after the revocation's commit
                    await revoke()
                    started = start_barrier()
                    assert started is not None
                    await started.wait()
                    given.set()

                tasks.append(asyncio.create_task(slow_round()))
                return given

            rows.start_barrier = revoke_before_the_token_is_sent
        if when == "during_a_writes_barrier":
            refused = await http.post(f"{b.url}/v1/instances", headers=key, json=INSTANCE)
        else:
            refused = await http.get(f"{b.url}/v1/instances", headers=key)
        assert deferred == [True], "the request did not take the cached key's path"
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == "unauthenticated"
        assert "revoked" in refused.json()["message"]


async def test_a_cached_key_changed_but_not_revoked_while_a_read_is_under_way_is_read_again_and_answered(
    replicas: Any, tokens: Tokens
) -> None:
    """Any change to the key's row invalidates b's entry; the deferred check then reads the key
    again rather than refusing a key that is still good."""
    a = await replicas("a", api_key_touch_seconds=3600)
    b = await replicas("b", api_key_touch_seconds=3600, background=False)
    async with httpx.AsyncClient(timeout=30) as http:
        _admin, key_id, key = await key_cached_by(b, http, tokens, a)
        assert a.db is not None and b.db is not None
        b_rows = b.db.rows
        provider = key_provider(b)
        authenticate = provider.authenticate
        loads: list[str] = []
        load = provider._load

        async def counted_load(session: Any, digest: str) -> Any:
            loads.append(digest)
            return await load(session, digest)

        async def read_then_touch(token: str, session: Any) -> Any:
            authenticated = await authenticate(token, session)
            assert authenticated.confirm is not None
            async with a.db.write() as writer, writer.begin():
                await writer.execute(text("UPDATE api_keys SET last_used_at = now() WHERE id = :id"), {"id": key_id})
            await eventually(lambda: b_rows.get("api_keys", key_id) is None, "b dropped the changed key")
            return authenticated

        provider.authenticate = read_then_touch
        provider._load = counted_load
        answered = await http.get(f"{b.url}/v1/instances", headers=key)
        assert answered.status_code == 200, answered.text
        assert len(loads) == 1, "the changed key was not read again"
