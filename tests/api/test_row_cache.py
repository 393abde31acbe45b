"""The row cache end to end (ctrlplane/rowcache.py), on SQLite and on PostgreSQL, over real HTTP to
a served app with its lifespan (on PostgreSQL the cache is live only while the LISTEN connection
is): a cached GET of an instance reads nothing from the database; every change is seen by the
next read on the replica that made it; a change made elsewhere (a worker's session, another
replica) stops the entry being served, and ``Cache-Control: no-cache`` reads through at once; a
suspended or deleted tenant is refused as the API promises; a lost LISTEN connection turns the
cache off until it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text

from ctrlplane.cluster import NotifyRelay, asyncpg_dsn
from ctrlplane.db import Database, connect
from ctrlplane.rowcache import RowCache
from ctrlplane.settings import Settings
from ctrlplane.signals import Signal
from tests.api.test_events import INSTANCE
from tests.conftest import Api, Tokens, bearer
from tests.waiting import eventually

pytestmark = pytest.mark.dialects("the cache is fed by triggers and NOTIFY on PostgreSQL, by an update hook on SQLite")

NO_CACHE = {"Cache-Control": "no-cache"}


async def until_live(db: Database) -> None:
    await eventually(lambda: db.rows.live, "the row cache is live")


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """Every statement either of the app's engines sends while the block runs."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engines = {id(e.sync_engine): e.sync_engine for e in (db.engine, db.query_engine)}.values()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)


async def _tenant_with_instance(live: Api, tokens: Tokens, db: Database) -> tuple[dict[str, str], dict[str, Any]]:
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(tokens.tenant(tenant["id"]))
    created = await live.client.post("/v1/instances", json=INSTANCE, headers=token)
    assert created.status_code == 201, created.text
    await until_live(db)
    return token, created.json()


async def test_a_cached_get_reads_nothing_and_each_write_is_seen_by_the_next_read(
    tokens: Tokens, db: Database, live_server_factory: Any
) -> None:
    url = await live_server_factory(background=False)  # no worker's statements in the count
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await _cached_and_written(Api(http, tokens), tokens, db)


async def _cached_and_written(live: Api, tokens: Tokens, db: Database) -> None:
    token, instance = await _tenant_with_instance(live, tokens, db)
    path = f"/v1/instances/{instance['id']}"
    first = await live.client.get(path, headers=token)
    assert first.status_code == 200, first.text
    with statements(db) as sent:
        again = [await live.client.get(path, headers=token) for _ in range(5)]
    assert sent == [], f"a cached GET read the database: {sent}"
    assert {r.status_code for r in again} == {200}
    assert {r.headers["etag"] for r in again} == {first.headers["etag"]}
    assert all(r.json() == again[0].json() for r in again)

    for n in range(10):  # write, then read at once: never the row before the write
        patched = await live.client.patch(path, json={"labels": {"round": str(n)}}, headers=token)
        assert patched.status_code == 200, patched.text
        read = await live.client.get(path, headers=token)
        assert read.status_code == 200
        assert read.json()["labels"] == {"round": str(n)}
        assert read.headers["etag"] == patched.headers["etag"]
    with statements(db) as sent:
        cached = await live.client.get(path, headers=token)
    assert cached.json()["labels"] == {"round": "9"}
    assert sent == []


async def test_a_change_made_outside_the_request_path_stops_the_entry_and_no_cache_reads_through(
    live: Api, tokens: Tokens, db: Database, settings: Settings
) -> None:
    token, instance = await _tenant_with_instance(live, tokens, db)
    path = f"/v1/instances/{instance['id']}"
    assert (await live.client.get(path, headers=token)).status_code == 200  # now cached
    # On SQLite the change goes through the server's own engine (its workers write so); on
    # PostgreSQL through a separate engine, as another replica (or an operator's SQL) would.
    writer = db if db.dialect == "sqlite" else connect(settings.resolved_database_url)
    try:
        async with writer.write() as session, session.begin():
            await session.execute(
                text("UPDATE instances SET status_message = 'changed elsewhere' WHERE id = :id"), {"id": instance["id"]}
            )
        fresh = await live.client.get(path, headers={**token, **NO_CACHE})
        assert fresh.json()["status_message"] == "changed elsewhere"  # at once, whatever the cache holds

        async def served() -> bool:
            response = await live.client.get(path, headers=token)
            return bool(response.json()["status_message"] == "changed elsewhere")

        if db.dialect == "sqlite":
            assert await served()  # applied when the worker's connection went back to the pool
        else:
            await eventually(served, timeout=5)  # the notification's delivery, far below the TTL
    finally:
        if writer is not db:
            await writer.dispose()


async def test_a_deleted_row_is_not_served_from_the_cache(live: Api, tokens: Tokens, db: Database) -> None:
    token, instance = await _tenant_with_instance(live, tokens, db)
    path = f"/v1/instances/{instance['id']}"
    assert (await live.client.get(path, headers=token)).status_code == 200

    async def running() -> bool:
        response = await live.client.get(path, headers={**token, **NO_CACHE})
        return bool(response.json()["state"] == "running")

    await eventually(running)  # no worker is busy with it any more
    assert (await live.client.get(path, headers=token)).status_code == 200
    async with db.write() as session, session.begin():  # its dependants go by ON DELETE CASCADE
        await session.execute(text("DELETE FROM instances WHERE id = :id"), {"id": instance["id"]})

    async def gone() -> bool:
        return (await live.client.get(path, headers=token)).status_code == 404

    await eventually(gone, timeout=5)
    assert db.rows.get("instances", instance["id"]) is None


async def test_suspension_refuses_the_next_write_and_deletion_the_next_read(
    live: Api, tokens: Tokens, db: Database
) -> None:
    token, instance = await _tenant_with_instance(live, tokens, db)
    tenant_id = instance["tenant_id"]
    path = f"/v1/instances/{instance['id']}"
    assert (await live.client.get(path, headers=token)).status_code == 200  # standing cached
    assert db.rows.get("tenants", tenant_id) is not None

    suspended = await live.client.post(
        f"/v1/admin/tenants/{tenant_id}/suspend", json={"reason": "overdue"}, headers=live.admin_headers
    )
    assert suspended.status_code == 200, suspended.text
    refused = await live.client.patch(path, json={"labels": {"a": "b"}}, headers=token)
    assert refused.status_code == 403 and refused.json()["code"] == "tenant_suspended"
    assert (await live.client.get(path, headers=token)).status_code == 200  # reads stay allowed
    assert db.rows.get("tenants", tenant_id).status == "suspended"

    deleted = await live.client.delete(
        f"/v1/admin/tenants/{tenant_id}", params={"force": "true"}, headers=live.admin_headers
    )
    assert deleted.status_code == 202, deleted.text  # it owns a live instance: deleted in the background
    after = await live.client.get(path, headers=token)
    assert after.status_code == 401, after.text  # at once: the deleting tenant's standing is not served


async def test_another_tenant_never_gets_a_cached_instance(live: Api, tokens: Tokens, db: Database) -> None:
    token, instance = await _tenant_with_instance(live, tokens, db)
    path = f"/v1/instances/{instance['id']}"
    assert (await live.client.get(path, headers=token)).status_code == 200
    assert db.rows.get("instances", instance["id"]) is not None
    other = await live.create_tenant("globex", plan="pro")
    response = await live.client.get(path, headers=bearer(tokens.tenant(other["id"])))
    assert response.status_code == 404


async def test_with_the_cache_off_every_get_reads_the_database(
    settings: Settings, db: Database, tokens: Tokens, live_server_factory: Any
) -> None:
    url = await live_server_factory(read_cache_seconds=0, background=False)  # only the GET's statements
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        live = Api(http, tokens)
        tenant = await live.create_tenant("acme", plan="pro")
        token = bearer(tokens.tenant(tenant["id"]))
        created = await http.post("/v1/instances", json=INSTANCE, headers=token)
        assert created.status_code == 201, created.text
        path = f"/v1/instances/{created.json()['id']}"
        assert (await http.get(path, headers=token)).status_code == 200
        with statements(db) as sent:
            assert (await http.get(path, headers=token)).status_code == 200
        assert len(sent) >= 2  # the standing and the instance
        assert len(db.rows) == 0


async def test_a_list_page_is_read_from_the_cache_and_shows_every_change_and_another_replicas_create(
    tokens: Tokens, db: Database, settings: Settings, providers: Any, live_server_factory: Any
) -> None:
    from ctrlplane.app import create_app

    url = await live_server_factory(background=False)  # no worker's statements in the count
    other = connect(settings.resolved_database_url)  # replica B: its own pools on the same database
    # on SQLite one process serves a database (cluster.SingleProcessLock): B shares A's engines there
    replica_b = create_app(settings, providers=providers, db=other if db.dialect == "postgresql" else db)
    try:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as http,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=replica_b), base_url="http://b.test") as b,
        ):
            live = Api(http, tokens)
            token, first = await _tenant_with_instance(live, tokens, db)
            for name in ("web2", "web3"):
                assert (await http.post("/v1/instances", json={**INSTANCE, "name": name}, headers=token)).is_success
            listed = await http.get("/v1/instances", headers=token)  # read whole; page and views now cached
            assert listed.status_code == 200, listed.text
            first_page = await http.get("/v1/instances", params={"limit": 2}, headers=token)
            cursor = first_page.json()["next_cursor"]
            second_page = await http.get("/v1/instances", params={"limit": 2, "cursor": cursor}, headers=token)
            with statements(db) as sent:
                again = await http.get("/v1/instances", headers=token)
                first_again = await http.get("/v1/instances", params={"limit": 2}, headers=token)
                second_again = await http.get("/v1/instances", params={"limit": 2, "cursor": cursor}, headers=token)
            assert [s for s in sent if "instances" in s] == [], sent  # each page's ids, total and views cached
            assert again.json() == listed.json()
            assert (first_again.json(), second_again.json()) == (first_page.json(), second_page.json())
            assert [len(first_page.json()["items"]), len(second_page.json()["items"])] == [2, 1]
            for item in again.json()["items"]:
                assert item == (await http.get(f"/v1/instances/{item['id']}", headers=token)).json()

            path = f"/v1/instances/{first['id']}"
            patched = await http.patch(path, json={"labels": {"round": "1"}}, headers=token)
            assert patched.status_code == 200, patched.text
            after_patch = (await http.get("/v1/instances", headers=token)).json()
            assert [i["labels"] for i in after_patch["items"] if i["id"] == first["id"]] == [{"round": "1"}]

            made = await b.post("/v1/instances", json={**INSTANCE, "name": "web4"}, headers=token)
            assert made.status_code == 201, made.text

            async def listed_total(total: int) -> bool:
                return bool((await http.get("/v1/instances", headers=token)).json()["total"] == total)

            if db.dialect == "sqlite":
                assert await listed_total(4)  # the insert's TEMP trigger dropped the cached page
            else:
                await eventually(lambda: listed_total(4), timeout=5)  # migration 0027's notification
            after_create = (await http.get("/v1/instances", headers=token)).json()
            assert (
                after_create["items"][0] == (await http.get(f"/v1/instances/{made.json()['id']}", headers=token)).json()
            )

            writer = db if db.dialect == "sqlite" else other  # as in the GET's test above
            async with writer.write() as session, session.begin():
                await session.execute(
                    text("UPDATE instances SET status_message = 'changed elsewhere' WHERE id = :id"),
                    {"id": first["id"]},
                )

            async def served() -> bool:
                page = (await http.get("/v1/instances", headers=token)).json()
                return [i["status_message"] for i in page["items"] if i["id"] == first["id"]] == ["changed elsewhere"]

            if db.dialect == "sqlite":
                assert await served()
            else:
                await eventually(served, timeout=5)  # the notification's delivery

            # a state change elsewhere (a worker finishing a destroy) takes the instance off the page
            async with writer.write() as session, session.begin():
                await session.execute(
                    text("UPDATE instances SET state = 'destroyed' WHERE id = :id"), {"id": first["id"]}
                )

            async def gone() -> bool:
                page = (await http.get("/v1/instances", headers=token)).json()
                return page["total"] == 3 and first["id"] not in [i["id"] for i in page["items"]]

            if db.dialect == "sqlite":
                assert await gone()
            else:
                await eventually(gone, timeout=5)
    finally:
        await other.dispose()


@pytest.fixture
async def live_server_factory(settings: Settings, db: Database, providers: Any) -> Any:
    import msgspec
    import uvicorn

    from ctrlplane.app import create_app

    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**overrides: Any) -> str:
        app = create_app(msgspec.structs.replace(settings, **overrides), providers=providers, db=db)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        await eventually(lambda: server.started, "uvicorn started")
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


# --- PostgreSQL: the LISTEN connection ------------------------------------------------------------


async def test_a_lost_listen_connection_turns_the_cache_off_until_it_is_back(postgres_url: str) -> None:
    db = connect(postgres_url)
    rows = RowCache()
    rows.enable(10, needs_listener=True)
    relay = NotifyRelay(asyncpg_dsn(postgres_url), {"events": Signal()}, replica="r", ping_seconds=1.0, rows=rows)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: rows.live)
        rows.put("instances", "i1", rows.ticket(), "view")
        assert rows.get("instances", "i1") == "view"
        await relay.barrier().wait()  # returns: its token came back on the connection

        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT pg_notify('ctrlplane_rows', 'instances:i1')"))
            await conn.commit()
        await eventually(lambda: rows.get("instances", "i1") is None)

        rows.put("instances", "i2", rows.ticket(), "view")
        pid = relay.backend_pid
        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await conn.commit()
        await eventually(lambda: not rows.live)
        assert rows.get("instances", "i2") is None
        await rows.barrier()  # nothing to wait for while it is off
        await eventually(lambda: rows.live and relay.backend_pid != pid)  # reconnected
        assert rows.get("instances", "i2") is None  # cleared: it may have missed a change
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.dispose()


async def test_a_barrier_round_that_does_not_come_back_clears_the_cache_and_lets_its_waiters_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No connection sends the round's token here (the relay never runs): once the timeout passes,
    every waiter of the round is released and nothing cached before it is served any more."""
    monkeypatch.setattr("ctrlplane.cluster.BARRIER_TIMEOUT_SECONDS", 0.2)
    rows = RowCache()
    rows.enable(10, needs_listener=False)
    relay = NotifyRelay("postgresql://unused", {}, replica="r", rows=rows)
    rows.put("instances", "i1", rows.ticket(), "view")
    ticket = rows.ticket()
    first, second = relay.barrier(), relay.barrier()
    assert first is second  # one round for both
    await asyncio.wait_for(first.wait(), timeout=5)
    assert rows.get("instances", "i1") is None
    assert rows.changed_since("instances", "i1", ticket)
    assert relay.barrier() is not first  # the next caller asks for a round of its own
    relay._release_barriers()  # and its timer goes with it
