"""One-off runs and scheduled jobs through the API on the fake provider: validation, quota,
tenancy, and the job scheduler's rules driven with an explicit clock (each firing once, forbid,
allow, replace, firings missed while the control plane was down, history)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest

from ctrlplane.runs.executor import RunExecutor, run_once
from ctrlplane.runs.models import Job
from ctrlplane.runs.scheduler import JobScheduler
from ctrlplane.settings import Settings
from tests.api.test_instances import create, tenant_token
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, run_history=4, job_starting_deadline_seconds=120)


async def job(api: Api, instance_id: str, token: dict[str, str], **body: Any) -> dict[str, Any]:
    fields = {"name": "tick", "schedule": "*/5 * * * *", "command": ["echo", "tick"], **body}
    response = await api.client.post(f"/v1/instances/{instance_id}/jobs", json=fields, headers=token)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def runs_of(api: Api, instance_id: str, token: dict[str, str]) -> list[dict[str, Any]]:
    return list((await api.client.get(f"/v1/instances/{instance_id}/runs", headers=token)).json()["items"])


async def anchor(app: Any, job_id: str) -> datetime:
    async with app.state.services.db.read() as session:
        found = await session.get(Job, job_id)
        assert found is not None
        return found.last_scheduled_at


def firings(start: datetime, count: int, minutes: int = 5) -> list[datetime]:
    first = start.replace(second=0, microsecond=0) + timedelta(minutes=minutes - start.minute % minutes)
    return [first + timedelta(minutes=minutes * i) for i in range(count)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"schedule": "every day at noon"}, "schedule"),
        ({"schedule": "*/5 * * * *", "timezone": "Mars/Olympus"}, "timezone"),
        ({"schedule": "*/2 * * * * *"}, "schedule"),
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"concurrency": "sometimes"}, "concurrency"),
    ],
)
async def test_a_job_with_a_bad_schedule_is_refused_and_nothing_is_stored(
    api: Api, body: dict[str, Any], field: str
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    fields = {"name": "bad", "schedule": "*/5 * * * *", "command": "true", **body}
    response = await api.client.post(f"/v1/instances/{instance['id']}/jobs", json=fields, headers=token)
    assert response.status_code == 400, response.text
    assert {"message", "code", "request_id"} <= set(response.json())
    assert field in response.text
    listed = await api.client.get(f"/v1/instances/{instance['id']}/jobs", headers=token)
    assert listed.json()["items"] == []


async def test_a_job_name_is_unique_per_instance(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    await job(api, instance["id"], token)
    again = await api.client.post(
        f"/v1/instances/{instance['id']}/jobs",
        json={"name": "tick", "schedule": "0 * * * *", "command": "true"},
        headers=token,
    )
    assert again.status_code == 409


async def test_each_firing_runs_once_however_often_the_schedulers_look(api: Api, app: Any) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    created = await job(api, instance["id"], token, timezone="Europe/Paris")
    start = await anchor(app, created["id"])
    first, second = firings(start, 2)
    schedulers = [JobScheduler(app.state.services), JobScheduler(app.state.services)]
    for scheduler in schedulers:
        assert await scheduler.run_once(first - timedelta(seconds=1)) == 0
    assert await schedulers[0].run_once(first + timedelta(seconds=1)) == 1
    assert await schedulers[1].run_once(first + timedelta(seconds=2)) == 0
    assert await schedulers[1].run_once(second + timedelta(seconds=1)) == 1
    assert await schedulers[0].run_once(second + timedelta(seconds=3)) == 0
    runs = await runs_of(api, instance["id"], token)
    assert sorted(r["scheduled_at"] for r in runs) == [first.isoformat().replace("+00:00", "Z"),
                                                       second.isoformat().replace("+00:00", "Z")]  # fmt: skip
    assert {r["kind"] for r in runs} == {"job"} and {r["job_id"] for r in runs} == {created["id"]}


async def test_forbid_skips_a_firing_while_the_previous_run_is_still_running(api: Api, app: Any) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    created = await job(api, instance["id"], token, concurrency="forbid")
    first, second = firings(await anchor(app, created["id"]), 2)
    scheduler = JobScheduler(app.state.services)
    await scheduler.run_once(first + timedelta(seconds=1))
    await scheduler.run_once(second + timedelta(seconds=1))  # the first never ran: no run worker here
    runs = sorted(await runs_of(api, instance["id"], token), key=lambda r: r["scheduled_at"])
    assert [r["state"] for r in runs] == ["pending", "missed"]
    assert "still running" in runs[1]["error"]
    events = (await api.client.get(f"/v1/instances/{instance['id']}/events", headers=token)).json()["items"]
    assert any(e["type"] == "job.missed" for e in events)


@pytest.mark.parametrize(("concurrency", "cancelled"), [("allow", False), ("replace", True)])
async def test_allow_overlaps_and_replace_cancels_the_running_run(
    api: Api, app: Any, concurrency: str, cancelled: bool
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    created = await job(api, instance["id"], token, concurrency=concurrency)
    first, second = firings(await anchor(app, created["id"]), 2)
    scheduler = JobScheduler(app.state.services)
    await scheduler.run_once(first + timedelta(seconds=1))
    await scheduler.run_once(second + timedelta(seconds=1))
    runs = sorted(await runs_of(api, instance["id"], token), key=lambda r: r["scheduled_at"])
    assert [r["state"] for r in runs] == ["pending", "pending"]
    assert [r["cancel_requested"] for r in runs] == [cancelled, False]


async def test_a_firing_missed_during_downtime_runs_once_within_the_deadline_else_is_recorded_missed(
    api: Api, app: Any
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    created = await job(api, instance["id"], token)
    times = firings(await anchor(app, created["id"]), 6)
    scheduler = JobScheduler(app.state.services)
    # down across three firings, back 60 s after the third: within the 120 s starting deadline
    assert await scheduler.run_once(times[2] + timedelta(seconds=60)) == 3
    runs = sorted(await runs_of(api, instance["id"], token), key=lambda r: r["scheduled_at"])
    assert [r["state"] for r in runs] == ["missed", "missed", "pending"]
    # down again past the next firings, back 200 s after the last: past the deadline, nothing runs
    assert await scheduler.run_once(times[5] + timedelta(seconds=200)) == 3
    runs = sorted(await runs_of(api, instance["id"], token), key=lambda r: r["scheduled_at"])
    # CTRLPLANE_RUN_HISTORY keeps the newest four finished ones (the oldest missed goes), and the pending one
    assert [r["state"] for r in runs] == ["missed", "pending", "missed", "missed", "missed"]
    assert "starting deadline" in runs[-1]["error"]
    events = (await api.client.get(f"/v1/instances/{instance['id']}/events", headers=token)).json()["items"]
    assert [e["data"]["count"] for e in events if e["type"] == "job.missed"] == [2, 3]


async def test_a_one_off_run_is_carried_out_by_a_run_worker_with_the_releases_env(
    api: Api, app: Any, fake: FakeProvider
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token, env={"COLOUR": "blue"})
    response = await api.client.post(
        f"/v1/instances/{instance['id']}/runs", json={"command": ["env"], "env": {"EXTRA": "1"}}, headers=token
    )
    assert response.status_code == 201, response.text
    services = app.state.services
    assert await run_once(services, RunExecutor(services), "test-worker")
    run = (await api.client.get(f"/v1/runs/{response.json()['id']}", headers=token)).json()
    assert run["state"] == "succeeded" and run["exit_code"] == 0
    assert "COLOUR=blue" in run["output"] and "EXTRA=1" in run["output"]
    assert fake.runs == {}  # its container was removed
    assert not await run_once(services, RunExecutor(services), "test-worker")


async def test_running_runs_count_against_the_tenants_quota(api: Api) -> None:
    tenant_id, token = await tenant_token(api)
    admin = bearer(api.tokens.admin())
    quota = {"max_instances": 5, "max_cpu_millis": 1000, "max_memory_mb": 4096,
             "max_domains": 1, "max_routes": 1, "max_secrets": 1}  # fmt: skip
    assert (await api.client.put(f"/v1/admin/tenants/{tenant_id}/quota", json=quota, headers=admin)).status_code == 200
    instance = await create(api, token, resources={"cpu_millis": 400, "memory_mb": 64})
    path = f"/v1/instances/{instance['id']}/runs"
    assert (await api.client.post(path, json={"command": "sleep 60"}, headers=token)).status_code == 201
    refused = await api.client.post(path, json={"command": "sleep 60"}, headers=token)
    assert refused.status_code == 403 and refused.json()["code"] == "quota_exceeded", refused.text
    # the running run holds its 400 millis against new instances too
    crowded = await api.client.post(
        "/v1/instances",
        json={"name": "second", "image": "ctrlplane-test/busybox:1", "resources": {"cpu_millis": 300, "memory_mb": 64}},
        headers=token,
    )
    assert crowded.status_code == 403 and crowded.json()["details"]["used"] == 800, crowded.text


async def test_a_job_firing_with_no_room_in_the_quota_is_recorded_missed(api: Api, app: Any) -> None:
    tenant_id, token = await tenant_token(api)
    admin = bearer(api.tokens.admin())
    quota = {"max_instances": 5, "max_cpu_millis": 500, "max_memory_mb": 4096,
             "max_domains": 1, "max_routes": 1, "max_secrets": 1}  # fmt: skip
    assert (await api.client.put(f"/v1/admin/tenants/{tenant_id}/quota", json=quota, headers=admin)).status_code == 200
    instance = await create(api, token, resources={"cpu_millis": 400, "memory_mb": 64})
    created = await job(api, instance["id"], token, concurrency="allow")
    [first] = firings(await anchor(app, created["id"]), 1)
    await JobScheduler(app.state.services).run_once(first + timedelta(seconds=1))
    [run] = await runs_of(api, instance["id"], token)
    assert run["state"] == "missed" and "quota" in run["error"]


async def test_another_tenants_runs_and_jobs_are_not_found(api: Api) -> None:
    _, token = await tenant_token(api)
    _, other = await tenant_token(api, "other")
    instance = await create(api, token)
    run = (
        await api.client.post(f"/v1/instances/{instance['id']}/runs", json={"command": "true"}, headers=token)
    ).json()
    created = await job(api, instance["id"], token)
    for method, path in [
        ("GET", f"/v1/runs/{run['id']}"),
        ("GET", f"/v1/runs/{run['id']}/logs"),
        ("POST", f"/v1/runs/{run['id']}/cancel"),
        ("GET", f"/v1/jobs/{created['id']}"),
        ("PATCH", f"/v1/jobs/{created['id']}"),
        ("DELETE", f"/v1/jobs/{created['id']}"),
        ("GET", f"/v1/instances/{instance['id']}/runs"),
        ("POST", f"/v1/instances/{instance['id']}/runs"),
        ("GET", f"/v1/instances/{instance['id']}/jobs"),
    ]:
        body = {"enabled": False} if method == "PATCH" else {"command": "true"} if method == "POST" else None
        response = await api.client.request(method, path, json=body, headers=other)
        assert response.status_code == 404, f"{method} {path}: {response.status_code} {response.text}"
    still = (await api.client.get(f"/v1/runs/{run['id']}", headers=token)).json()
    assert still["state"] == "pending" and not still["cancel_requested"]
