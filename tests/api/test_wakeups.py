"""Targeted wake-ups: a write request wakes only the background loops that read what it wrote.

``db.written_tables`` reads the tables from the statements each dialect runs (ORM flushes, Core
DML, dialect upserts; plain SQL counts as any table); the request boundary hands them to
``Signal.notify``, and on PostgreSQL ``NotifyRelay`` carries them to the other replicas."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import delete, select, text, update

from ctrlplane.cluster import NOTIFY_CHANNEL, NotifyRelay, asyncpg_dsn
from ctrlplane.db import Database, connect, written_tables
from ctrlplane.events.service import append as append_event
from ctrlplane.ids import TenantId
from ctrlplane.instances.models import Instance
from ctrlplane.operations import queue
from ctrlplane.operations.models import Operation
from ctrlplane.operations.reconciler import Reconciler
from ctrlplane.operations.worker import OperationWorker
from ctrlplane.signals import Signal
from ctrlplane.tenants.models import Tenant
from tests.api.test_events import INSTANCE
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider
from tests.waiting import eventually

pytestmark = pytest.mark.dialects(
    "the written tables are read from each dialect's statements (upserts differ); the relay is LISTEN/NOTIFY"
)

ROUTES = frozenset({"routes"})


async def test_written_tables_names_each_table_a_transaction_wrote(db: Database, api: Api) -> None:
    tenant = await api.create_tenant("acme")
    async with db.write() as session, session.begin():
        await session.execute(select(Tenant).where(Tenant.id == tenant["id"]))
        assert await written_tables(session) == frozenset()  # reads name nothing
        found = await session.get(Tenant, tenant["id"])
        assert found is not None
        found.name = "Acme Two"  # an ORM flush
        await session.execute(update(Instance).where(Instance.id == "none").values(name="x"))  # Core, no row
        await session.execute(delete(Operation).where(Operation.id == "none"))
        await append_event(session, tenant_id=TenantId(tenant["id"]), instance_id=None, type="test.written", data={})
        assert await written_tables(session) == {"tenants", "instances", "operations", "events", "event_streams"}
        await session.rollback()
    async with db.write() as session, session.begin():  # a new transaction starts with nothing noted
        assert await written_tables(session) == frozenset()
        await session.execute(text("UPDATE tenants SET name = name WHERE id = 'none'"))
        assert await written_tables(session) is None  # plain SQL: any table


async def test_a_write_request_wakes_the_workers_only_when_it_enqueued_an_operation(api: Api, app: object) -> None:
    work: Signal = app.state.services.work  # type: ignore[attr-defined]
    operations, routes, anything = work.armed(queue.READS), work.armed(ROUTES), work.armed()
    tenant = await api.create_tenant("acme")
    assert anything.is_set() and not operations.is_set() and not routes.is_set()
    headers = bearer(api.tokens.tenant(tenant["id"]))
    created = await api.client.post("/v1/instances", json=INSTANCE, headers=headers)
    assert created.status_code == 201, created.text
    assert operations.is_set() and not routes.is_set()


async def test_a_reconciler_pass_that_changes_nothing_wakes_no_one(api: Api, app: object, fake: FakeProvider) -> None:
    services = app.state.services  # type: ignore[attr-defined]
    tenant = await api.create_tenant("acme")
    headers = bearer(api.tokens.tenant(tenant["id"]))
    created = await api.client.post("/v1/instances", json=INSTANCE, headers=headers)
    assert created.status_code == 201, created.text
    while await OperationWorker(services).run_once():  # provisioned, by hand: no lifespan here
        pass
    reconciler = Reconciler(services)
    events, work = services.events.armed(), services.work.armed()
    await reconciler.run_once()
    assert not events.is_set() and not work.is_set()  # every replica as it was: nothing to announce

    fake.crash(created.json()["id"], replica=0, exit_code=137)
    await reconciler.run_once()
    assert events.is_set() and work.is_set()  # a restart: its event, and an operation for the workers


async def test_a_finished_operation_wakes_the_workers_only_when_another_is_claimable(api: Api, app: object) -> None:
    services = app.state.services  # type: ignore[attr-defined]
    work: Signal = services.work
    tenant = await api.create_tenant("acme")
    headers = bearer(api.tokens.tenant(tenant["id"]))
    created = await api.client.post("/v1/instances", json=INSTANCE, headers=headers)
    assert created.status_code == 201, created.text
    path = f"/v1/instances/{created.json()['id']}"
    assert (await api.client.post(f"{path}/stop", headers=headers)).status_code == 202  # queued behind
    worker = OperationWorker(services)

    operations, anything = work.armed(queue.READS), work.armed()
    assert await worker.run_once()  # the provision: its finish makes the stop claimable
    assert operations.is_set() and anything.is_set()

    operations, anything = work.armed(queue.READS), work.armed()
    assert not await worker.run_once()  # the stop, the last one: nothing left to claim
    assert anything.is_set() and not operations.is_set()  # its event and state, no worker sent to look
    async with services.db.read() as session:
        states = (await session.execute(select(Operation.state).order_by(Operation.id))).scalars().all()
    assert states == ["succeeded", "succeeded"]


async def test_the_relay_carries_the_tables_to_the_other_replicas(postgres_url: str) -> None:
    dsn = asyncpg_dsn(postgres_url)
    here, there = Signal(), Signal()
    relays = [
        NotifyRelay(dsn, {"work": here}, replica="here", ping_seconds=1.0),
        NotifyRelay(dsn, {"work": there}, replica="there", ping_seconds=1.0),
    ]
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    db = connect(postgres_url)
    try:
        await eventually(lambda: all(relay.connected.is_set() for relay in relays), "both relays listen")
        operations, routes, anything = there.armed(queue.READS), there.armed(ROUTES), there.armed()
        await here.notify({"operations", "audit_log"})
        await eventually(lambda: operations.is_set(), "the other replica's workers are woken")
        assert anything.is_set() and not routes.is_set()  # one message woke both, and not the router

        routes = there.armed(ROUTES)
        await here.notify()  # no tables: everyone
        await eventually(lambda: routes.is_set(), "a wake-up without tables wakes every waiter")

        routes = there.armed(ROUTES)
        async with db.engine.connect() as conn:  # what a replica of an earlier version sends
            await conn.execute(text("SELECT pg_notify(:channel, 'work:older')"), {"channel": NOTIFY_CHANNEL})
            await conn.commit()
        await eventually(lambda: routes.is_set(), "an older replica's wake-up wakes every waiter")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.dispose()
