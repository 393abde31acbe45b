"""Sleep, the idle policy and the traffic view through the API (the fake provider): validation,
tenant isolation, the state machine around ``sleeping``, and request metric names."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, insert, select, text, update

from ctrlplane import httpclients
from ctrlplane.db import Database
from ctrlplane.ids import TenantId
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.network import requests
from ctrlplane.network.access import Destination, HostTable, RequestBook, parse_line, store
from ctrlplane.network.models import InstanceTraffic
from ctrlplane.network.sleep import claim_wake
from ctrlplane.network.wake import POLL_SECONDS, Look, WakeServer
from ctrlplane.operations.models import Operation
from ctrlplane.settings import Settings
from ctrlplane.signals import Announcements, Signal
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import utc_now
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.conftest import Api
from tests.fakes import FakeProvider


async def test_other_tenant_gets_404_for_traffic_idle_policy_and_sleep(api: Api) -> None:
    _, owner = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "other")
    instance = await create(api, owner)
    base = f"/v1/instances/{instance['id']}"
    assert (await api.client.get(f"{base}/traffic", headers=other)).status_code == 404
    refused = await api.client.put(f"{base}/idle-policy", json={"idle_timeout": "5m"}, headers=other)
    assert refused.status_code == 404
    assert (await api.client.post(f"{base}/sleep", headers=other)).status_code == 404
    mine = (await api.client.get(f"{base}/traffic", headers=owner)).json()
    assert mine["idle_timeout_seconds"] is None and mine["last_request_at"] is None


@pytest.mark.parametrize("value", ["soon", "1s", "90d", ""])
async def test_an_invalid_idle_timeout_is_400_and_changes_nothing(api: Api, value: str) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    url = f"/v1/instances/{instance['id']}/idle-policy"
    response = await api.client.put(url, json={"idle_timeout": value}, headers=token)
    assert response.status_code == 400, response.text
    assert {"message", "code", "request_id"} <= set(response.json())
    traffic = (await api.client.get(f"/v1/instances/{instance['id']}/traffic", headers=token)).json()
    assert traffic["idle_timeout_seconds"] is None


async def test_the_idle_policy_is_set_and_cleared(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    url = f"/v1/instances/{instance['id']}/idle-policy"
    set_ = await api.client.put(url, json={"idle_timeout": "15m"}, headers=token)
    assert set_.status_code == 200, set_.text
    assert set_.json()["idle_timeout_seconds"] == 900
    cleared = await api.client.put(url, json={"idle_timeout": None}, headers=token)
    assert cleared.json()["idle_timeout_seconds"] is None


async def test_a_slept_instance_stays_sleeping_and_start_wakes_it(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    slept = await live.client.post(f"/v1/instances/{instance['id']}/sleep", headers=token)
    assert slept.status_code == 202, slept.text
    assert slept.json()["state"] == "sleeping" and slept.json()["slept_at"] is not None
    # the stop runs and the reconciler looks again: it stays sleeping, not stopped
    await wait_for(live, instance["id"], token, lambda b: b["state"] == "sleeping" and b["desired_state"] == "sleeping")
    await asyncio.sleep(1.0)
    body = (await live.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()
    assert body["state"] == "sleeping", body
    again = await live.client.post(f"/v1/instances/{instance['id']}/sleep", headers=token)
    assert again.status_code == 202 and again.json()["state"] == "sleeping"
    started = await live.client.post(f"/v1/instances/{instance['id']}/start", headers=token)
    assert started.status_code == 202, started.text
    await wait_for(live, instance["id"], token, state("running"))


async def test_a_start_of_existing_replicas_only_starts_them_and_a_missing_one_is_provisioned(
    live: Api, fake: FakeProvider
) -> None:
    # a wake's cold start is the provider's start alone: no spec to build, no image or network to
    # check; what is not there any more is provisioned as before
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    url = f"/v1/instances/{instance['id']}"
    for missing in (False, True):
        assert (await live.client.post(f"{url}/sleep", headers=token)).status_code == 202
        await wait_for(live, instance["id"], token, lambda b: b["state"] == "sleeping" and not running(fake, b["id"]))
        if missing:
            fake.remove_container(instance["id"], 0)
        fake.calls.clear()
        assert (await live.client.post(f"{url}/start", headers=token)).status_code == 202
        await wait_for(live, instance["id"], token, state("running"))
        called = [method for method, of in fake.calls if of == instance["id"] and method in ("start", "provision")]
        if missing:  # (a reconcile pass may have repaired it first: a provision too)
            assert "provision" in called and "start" not in called, called
        else:
            assert called == ["start"]
        assert running(fake, instance["id"])


def running(fake: FakeProvider, instance_id: str) -> bool:
    replicas = fake.replicas(instance_id)
    return bool(replicas) and all(r.state == "running" for r in replicas)


async def test_only_a_running_instance_can_be_put_to_sleep(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    await live.client.post(f"/v1/instances/{instance['id']}/stop", headers=token)
    await wait_for(live, instance["id"], token, state("stopped"))
    refused = await live.client.post(f"/v1/instances/{instance['id']}/sleep", headers=token)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "invalid_state"
    body = (await live.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()
    assert body["state"] == "stopped"


async def test_request_metrics_are_answered_empty_before_any_request(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    url = f"/v1/instances/{instance['id']}/metrics"
    for name in ("http_requests_total", "http_request_duration_seconds", "http_request_bytes"):
        response = await api.client.get(url, params={"name": name, "step": "60s"}, headers=token)
        assert response.status_code == 200, response.text
        assert all(series["points"] == [] for series in response.json()["series"])
    unknown = await api.client.get(url, params={"name": "http_nonsense"}, headers=token)
    assert unknown.status_code == 400


async def test_router_reports_are_stored_batched_and_rolled_up_without_losing_requests(api: Api, db: Database) -> None:
    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    hosts = HostTable()
    hosts.replace({"web.acme.localhost": Destination(instance["id"], tenant_id, ())})
    book = RequestBook(hosts)
    now = utc_now()
    for status in (200, 200, 503):
        record = parse_line(
            json.dumps(
                {
                    "ts": now.timestamp(),
                    "logger": "http.log.access.ctrlplane_access",
                    "request": {"method": "GET", "host": "web.acme.localhost", "uri": "/"},
                    "duration": 0.02,
                    "size": 10,
                    "status": status,
                }
            ).encode()
        )
        assert record is not None
        book.add(record)
    old = now - timedelta(hours=7)
    async with db.write() as session, session.begin():
        assert await store(session, book.drain(), old) == 2
    traffic = (await api.client.get(f"/v1/instances/{instance['id']}/traffic", headers=token)).json()
    assert traffic["last_request_at"] is not None
    settings = Settings(metrics_raw_retention_seconds=3600, metrics_minute_retention_seconds=48 * 3600)
    async with db.write() as session, session.begin():
        await requests.compact(session, settings, now)
    async with db.read() as session:
        rows = await requests.samples_between(
            session, tenant_id=tenant_id, instance_id=instance["id"], since=old - timedelta(minutes=2), until=now
        )
    assert {row.step_seconds for row in rows} == {60}
    assert sum(row.requests for row in rows) == 3
    assert sum(sum(row.duration_buckets) for row in rows) == 3


@pytest.mark.dialects
async def test_concurrent_wakes_of_one_sleeping_instance_claim_it_once(api: Api, db: Database) -> None:
    """The guard is the database's: one conditional UPDATE, whoever and wherever the callers are."""
    _, token = await tenant_token(api)
    instance = await create(api, token)
    async with db.write() as session, session.begin():
        await session.execute(
            update(Instance).where(Instance.id == instance["id"]).values(state="sleeping", desired_state="sleeping")
        )

    async def wake() -> bool:
        async with db.write() as session, session.begin():
            return await claim_wake(session, instance["id"])

    claimed = await asyncio.gather(*(wake() for _ in range(10)))
    assert claimed.count(True) == 1
    async with db.read() as session:
        starts = (
            await session.execute(
                select(func.count()).where(Operation.instance_id == instance["id"], Operation.kind == "start")
            )
        ).scalar_one()
    assert starts == 1
    body = (await api.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()
    assert body["state"] == "starting" and body["desired_state"] == "running"


@pytest.mark.dialects("ten requests held at once; crowding the pool showed on PostgreSQL")
async def test_requests_held_for_a_replica_that_does_not_answer_yet_read_the_database_at_poll_pace(
    live: Api, db: Database, settings: Settings
) -> None:
    """Ten requests held while the instance runs but its app does not listen (the fake provider's
    ports have no listener): each probes every 10 ms, but reads the database at most every
    ``POLL_SECONDS`` (plus once per committed event). Reading it at the probes' pace crowded a
    PostgreSQL pool until other requests got 503 ``unavailable`` (found in CI)."""
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    listener = WakeServer(settings, db, work=Signal(), events=Signal(), started=Announcements(), secret="s")
    seen = await listener._look(instance["id"])
    assert seen is not None and seen.state == "running" and seen.rotation, seen  # a replica to probe
    looks = 0

    async def counted(instance_id: str) -> Look | None:
        # what the database says, without its time: the count depends on the loop alone
        nonlocal looks
        looks += 1
        return seen

    listener._look = counted  # type: ignore[method-assign]
    held = 10
    budget = 0.6
    async with httpclients.client(timeout=1) as probe:
        deadline = time.monotonic() + budget
        targets = await asyncio.gather(
            *(listener.wait_until_serving(probe, instance["id"], "/", deadline) for _ in range(held))
        )
    assert targets == [None] * held  # nothing ever answered
    assert looks <= held * (budget / POLL_SECONDS + 2), looks


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_locked_instance_and_tenant_do_not_block_rows_that_only_refer_to_them(api: Api, db: Database) -> None:
    """``InstanceService.locked`` (sleep, scale, deploy...) holds its tenant and instance for the
    transaction; the router's access-log sink meanwhile inserts request samples and upserts
    ``instance_traffic``, whose foreign keys take KEY SHARE on both rows. With FOR UPDATE the two
    deadlocked (PostgreSQL's log in a CI run: the sleep waited for the instance, the sink for the
    tenant; the sleep got 503). The locks are FOR NO KEY UPDATE: a referring insert goes through."""
    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    async with db.write() as holder, holder.begin():
        await TenantRepository(holder).get(tenant_id, for_update=True)
        await InstanceRepository(holder, TenantId(tenant_id)).get(instance["id"], for_update=True)
        async with db.write() as sink, sink.begin():
            await sink.execute(text("SET LOCAL lock_timeout = '2s'"))
            await sink.execute(delete(InstanceTraffic).where(InstanceTraffic.instance_id == instance["id"]))
            await sink.execute(
                insert(InstanceTraffic).values(
                    instance_id=instance["id"], tenant_id=tenant_id, last_request_at=utc_now()
                )
            )
