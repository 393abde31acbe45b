"""Health checks through the API with the scheduler running, against the fake provider (command
checks answer through its ``exec_handler``). Real http/tcp/command checks against Docker are in
test_health_docker.py; probes against real sockets in tests/unit/test_health_probes.py."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import anyio
import msgspec
import pytest
from sqlalchemy import func, select

from ctrlplane.db import Database
from ctrlplane.health.models import HealthCheckResult
from ctrlplane.health.scheduler import prune_results
from ctrlplane.ids import new_id
from ctrlplane.provisioning.contract import ExecResult
from ctrlplane.settings import Settings
from ctrlplane.timeutil import utc_now
from tests.api.test_deployments import finished
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.conftest import Api
from tests.fakes import FakeProvider, FakeReplica
from tests.waiting import eventually

CHECK = {"name": "api-health", "type": "http", "target": "http://localhost:8080/healthz", "interval": "30s"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, health_tick_seconds=0.1, deploy_health_timeout_seconds=3)


async def add_check(api: Api, instance_id: str, token: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.client.post(f"/v1/instances/{instance_id}/health/checks", json=body, headers=token)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def health_of(api: Api, instance_id: str, token: dict[str, str]) -> dict[str, Any]:
    response = await api.client.get(f"/v1/instances/{instance_id}/health", headers=token)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def until_health(
    api: Api, instance_id: str, token: dict[str, str], predicate: Any, timeout: float = 30
) -> dict[str, Any]:
    async def matched() -> dict[str, Any] | None:
        body = await health_of(api, instance_id, token)
        return body if predicate(body) else None

    return await eventually(matched, "the instance's health", timeout=timeout)


async def health_events(api: Api, instance_id: str, token: dict[str, str]) -> list[dict[str, Any]]:
    page = (await api.client.get(f"/v1/instances/{instance_id}/events?limit=100", headers=token)).json()
    return [e for e in page["items"] if e["type"].startswith("health.check_")]


class Switch:
    """A command check's answer, flipped by the test: exit 0 while healthy, 1 otherwise."""

    def __init__(self) -> None:
        self.healthy = True
        self.commands: list[tuple[int, int, list[str]]] = []

    def __call__(self, replica: FakeReplica, command: list[str]) -> ExecResult:
        self.commands.append((replica.generation, replica.replica, command))
        return ExecResult(exit_code=0 if self.healthy else 1, output="ready\n" if self.healthy else "not ready\n")


async def test_create_and_list_checks_with_the_seed_body(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    created = await add_check(api, instance["id"], token, **CHECK, timeout="5s", retries=3)
    assert created["id"].startswith("chk_")
    assert {k: created[k] for k in ("name", "type", "target", "interval", "timeout", "retries", "enabled")} == {
        **CHECK,
        "timeout": "5s",
        "retries": 3,
        "enabled": True,
    }
    assert (created["status"], created["consecutive_failures"], created["last_checked_at"]) == ("unknown", 0, None)
    command = await add_check(
        api, instance["id"], token, name="ready-file", type="command", target="cat '/tmp/ready file'", interval="1m30s"
    )
    tcp = await add_check(api, instance["id"], token, name="port", type="tcp", target="localhost:8080")
    listed = (await api.client.get(f"/v1/instances/{instance['id']}/health/checks", headers=token)).json()
    assert [c["id"] for c in listed["items"]] == [tcp["id"], command["id"], created["id"]]
    assert listed["total"] == 3
    health = await health_of(api, instance["id"], token)
    assert health["status"] == "unknown"
    assert [c["uptime_percent"] for c in health["checks"]] == [None, None, None]
    duplicate = await api.client.post(f"/v1/instances/{instance['id']}/health/checks", json=CHECK, headers=token)
    assert duplicate.status_code == 409, duplicate.text
    deleted = await api.client.delete(f"/v1/health/checks/{created['id']}", headers=token)
    assert deleted.status_code == 204
    again = await api.client.delete(f"/v1/health/checks/{created['id']}", headers=token)
    assert again.status_code == 404
    listed = (await api.client.get(f"/v1/instances/{instance['id']}/health/checks", headers=token)).json()
    assert [c["name"] for c in listed["items"]] == ["port", "ready-file"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"interval": "30x"}, "interval"),
        ({"interval": "500ms"}, "interval"),
        ({"interval": ""}, "interval"),
        ({"interval": "25h"}, "interval"),
        ({"timeout": "forever"}, "timeout"),
        ({"timeout": "0s"}, "timeout"),
        ({"interval": "5s", "timeout": "5s"}, "timeout"),
        ({"interval": "5s", "timeout": "10s"}, "timeout"),
        ({"timeout": "2m", "interval": "5m"}, "timeout"),
        ({"type": "grpc"}, "type"),
        ({"retries": 0}, "retries"),
        ({"name": "has spaces"}, "name"),
        ({"target": "http://example.com:8080/healthz"}, "target"),
        ({"target": "http://127.0.0.1:8080/healthz"}, "target"),
        ({"target": "http://10.0.0.7:8080/healthz"}, "target"),
        ({"target": "http://user:pw@localhost:8080/healthz"}, "target"),
        ({"target": "https://localhost:8080/healthz"}, "target"),
        ({"target": "http://localhost:9999/healthz"}, "target"),
        ({"target": "localhost:8080"}, "target"),
        ({"type": "tcp", "target": "db.internal:8080"}, "target"),
        ({"type": "tcp", "target": "localhost:99999"}, "target"),
        ({"type": "command", "target": "cat 'unbalanced"}, "target"),
        ({"type": "command", "target": "   "}, "target"),
        ({"surprise": True}, "surprise"),
    ],
)
async def test_invalid_checks_are_400_and_nothing_is_written(
    api: Api, change: dict[str, Any], field: str, db: Database
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    response = await api.client.post(
        f"/v1/instances/{instance['id']}/health/checks", json={**CHECK, **change}, headers=token
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_input"
    assert field in response.text
    assert {"message", "code", "request_id"} <= set(body)
    listed = (await api.client.get(f"/v1/instances/{instance['id']}/health/checks", headers=token)).json()
    assert listed["total"] == 0


async def test_another_tenant_cannot_read_create_run_or_delete_checks(api: Api) -> None:
    _, token = await tenant_token(api, "acme")
    _, other = await tenant_token(api, "globex")
    instance = await create(api, token)
    check = await add_check(api, instance["id"], token, **CHECK)
    attempts = [
        ("GET", f"/v1/instances/{instance['id']}/health", None),
        ("GET", f"/v1/instances/{instance['id']}/health/checks", None),
        ("POST", f"/v1/instances/{instance['id']}/health/checks", {**CHECK, "name": "sneaky"}),
        ("POST", f"/v1/health/checks/{check['id']}/run", None),
        ("DELETE", f"/v1/health/checks/{check['id']}", None),
    ]
    for method, path, body in attempts:
        response = await api.client.request(method, path, json=body, headers=other)
        assert response.status_code == 404, f"{method} {path}: {response.status_code} {response.text}"
        assert response.json()["code"] == "not_found"
    listed = (await api.client.get(f"/v1/instances/{instance['id']}/health/checks", headers=token)).json()
    assert [(c["name"], c["last_checked_at"]) for c in listed["items"]] == [("api-health", None)]


async def test_a_command_check_turns_unhealthy_after_its_retries_and_healthy_after_one_success(
    live: Api, fake: FakeProvider
) -> None:
    answer = Switch()
    fake.exec_handler = answer
    _, token = await tenant_token(live)
    instance = await wait_for(live, (await create(live, token))["id"], token, state("running"))
    check = await add_check(
        live, instance["id"], token, name="ready", type="command", target="check-ready --quick", interval="1s",
        timeout="500ms", retries=2,
    )  # fmt: skip
    healthy = await until_health(live, instance["id"], token, lambda b: b["status"] == "healthy")
    [entry] = healthy["checks"]
    assert entry["latest"]["status"] == "pass"
    assert entry["latest"]["message"] == "exit 0: ready"
    assert entry["uptime_percent"] == 100.0
    assert answer.commands[0] == (1, 0, ["check-ready", "--quick"])

    answer.healthy = False
    degraded = await until_health(live, instance["id"], token, lambda b: b["checks"][0]["consecutive_failures"] >= 1)
    assert degraded["status"] in ("degraded", "unhealthy")
    unhealthy = await until_health(live, instance["id"], token, lambda b: b["status"] == "unhealthy")
    [entry] = unhealthy["checks"]
    assert entry["status"] == "unhealthy"
    assert entry["consecutive_failures"] >= 2
    assert entry["latest"]["message"] == "exit 1: not ready"
    assert entry["last_success_at"] is not None
    assert 0 < entry["uptime_percent"] < 100

    answer.healthy = True
    await until_health(live, instance["id"], token, lambda b: b["status"] == "healthy")
    events = await health_events(live, instance["id"], token)
    assert [(e["type"], e["data"]["from"], e["data"]["to"]) for e in events] == [
        ("health.check_healthy", "unknown", "healthy"),
        ("health.check_unhealthy", "healthy", "unhealthy"),
        ("health.check_healthy", "unhealthy", "healthy"),
    ]
    assert {e["data"]["check_id"] for e in events} == {check["id"]}
    assert events[1]["data"]["consecutive_failures"] == 2


async def test_one_failing_check_of_two_is_degraded(live: Api, fake: FakeProvider) -> None:
    fake.exec_handler = lambda replica, command: ExecResult(exit_code=0 if command == ["good"] else 3, output="")
    _, token = await tenant_token(live)
    instance = await wait_for(live, (await create(live, token))["id"], token, state("running"))
    for name in ("good", "bad"):
        await add_check(
            live, instance["id"], token, name=name, type="command", target=name, interval="1s", timeout="500ms",
            retries=1,
        )  # fmt: skip
    expected = {"good": "healthy", "bad": "unhealthy"}
    body = await until_health(
        live, instance["id"], token, lambda b: {c["name"]: c["status"] for c in b["checks"]} == expected
    )
    assert body["status"] == "degraded"


async def test_run_returns_a_fresh_result_and_counts_like_a_scheduled_run(live: Api, fake: FakeProvider) -> None:
    answer = Switch()
    fake.exec_handler = answer
    api = live
    _, token = await tenant_token(api)
    instance = await wait_for(live, (await create(live, token))["id"], token, state("running"))
    check = await add_check(
        api, instance["id"], token, name="ready", type="command", target="ready", retries=1, enabled=False
    )
    first = await api.client.post(f"/v1/health/checks/{check['id']}/run", headers=token)
    assert first.status_code == 200, first.text
    assert first.json()["result"]["status"] == "pass"
    assert first.json()["result"]["manual"] is True
    assert first.json()["check"]["status"] == "healthy"
    answer.healthy = False
    second = await api.client.post(f"/v1/health/checks/{check['id']}/run", headers=token)
    assert second.json()["result"]["status"] == "fail"
    assert second.json()["result"]["id"] != first.json()["result"]["id"]
    assert second.json()["result"]["checked_at"] > first.json()["result"]["checked_at"]
    assert second.json()["check"]["status"] == "unhealthy"
    assert len(answer.commands) == 2
    health = await health_of(api, instance["id"], token)
    assert health["checks"][0]["latest"]["id"] == second.json()["result"]["id"]
    assert health["checks"][0]["uptime_percent"] == 50.0


async def test_run_on_an_instance_that_does_not_run_is_409(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    check = await add_check(api, instance["id"], token, name="ready", type="command", target="ready")
    response = await api.client.post(f"/v1/health/checks/{check['id']}/run", headers=token)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "invalid_state"


@pytest.mark.dialects("the scheduler's claims skip a locked check (SKIP LOCKED)")
async def test_one_slow_check_does_not_delay_the_others(live: Api, fake: FakeProvider, db: Database) -> None:
    released = anyio.Event()
    slow_started: list[str] = []

    async def handler(replica: FakeReplica, command: list[str]) -> ExecResult:
        if command == ["slow"]:
            slow_started.append(replica.spec.instance_id)
            await released.wait()
        return ExecResult(exit_code=0, output="")

    fake.exec_handler = handler
    _, token = await tenant_token(live)
    slow = await wait_for(live, (await create(live, token, name="slow"))["id"], token, state("running"))
    quick = await wait_for(live, (await create(live, token, name="quick"))["id"], token, state("running"))
    await add_check(live, slow["id"], token, name="slow", type="command", target="slow", interval="10m", timeout="1m")
    await add_check(
        live, quick["id"], token, name="quick", type="command", target="quick", interval="1s", timeout="500ms"
    )
    try:
        with anyio.fail_after(40):
            while True:
                quick_health = await health_of(live, quick["id"], token)
                if slow_started and await results_of(db, quick["id"]) >= 3:
                    break
                await asyncio.sleep(0.1)
        assert quick_health["status"] == "healthy"
        slow_health = await health_of(live, slow["id"], token)
        assert slow_health["checks"][0]["latest"] is None, "the slow check's run should still be hanging"
    finally:
        released.set()


async def test_a_deploy_whose_new_replica_fails_its_command_check_rolls_back(live: Api, fake: FakeProvider) -> None:
    def handler(replica: FakeReplica, command: list[str]) -> ExecResult:
        return ExecResult(exit_code=0 if replica.spec.image.endswith(":1") else 1, output="no")

    fake.exec_handler = handler
    _, token = await tenant_token(live)
    instance = await wait_for(live, (await create(live, token))["id"], token, state("running"))
    await add_check(live, instance["id"], token, name="ready", type="command", target="ready", interval="1m")
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": "ctrlplane-test/busybox:2"}, headers=token
    )
    assert response.status_code == 201, response.text
    done = await finished(live, response.json()["id"], token)
    assert done["state"] == "rolled_back", done
    assert "check ready: exit 1: no" in done["error"]
    assert [(r.generation, r.spec.image) for r in fake.replicas(instance["id"])] == [(1, "ctrlplane-test/busybox:1")]
    page = (await live.client.get(f"/v1/instances/{instance['id']}/events?limit=100", headers=token)).json()
    failed = [e for e in page["items"] if e["type"] == "health.failed"]
    assert failed and "check ready" in failed[-1]["data"]["error"]

    ok = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": "ctrlplane-test/busybox:1", "env": {"V": "2"}},
        headers=token,
    )
    assert (await finished(live, ok.json()["id"], token))["state"] == "succeeded"


async def test_pruning_keeps_the_retention_period_and_the_cap_per_check(api: Api, db: Database) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    a = await add_check(api, instance["id"], token, name="a", type="command", target="a")
    b = await add_check(api, instance["id"], token, name="b", type="command", target="b")
    now = utc_now()
    async with db.write() as session, session.begin():
        for check, ages in ((a, range(0, 10)), (b, [1, 2, 3, 4000, 5000])):
            for age in ages:
                session.add(
                    HealthCheckResult(
                        id=new_id("hcr"), check_id=check["id"], tenant_id=check["tenant_id"],
                        instance_id=instance["id"],
                        status="pass", latency_ms=1.0, message="", manual=False,
                        checked_at=now - timedelta(seconds=age),
                    )
                )  # fmt: skip
    deleted = await prune_results(db, retention_seconds=3600, per_check=4)
    assert deleted == 6 + 2
    async with db.read() as session:
        rows = (await session.execute(select(HealthCheckResult.check_id, HealthCheckResult.checked_at))).all()
    kept = sorted((check_id, round((now - at).total_seconds())) for check_id, at in rows)
    assert kept == sorted([(a["id"], age) for age in range(0, 4)] + [(b["id"], age) for age in (1, 2, 3)])


async def results_of(db: Database, instance_id: str) -> int:
    async with db.read() as session:
        statement = (
            select(func.count()).select_from(HealthCheckResult).where(HealthCheckResult.instance_id == instance_id)
        )
        return int((await session.execute(statement)).scalar_one())


async def test_dashboard_metrics_and_prometheus_show_the_checks_results(live: Api, fake: FakeProvider) -> None:
    answer = Switch()
    fake.exec_handler = answer
    _, token = await tenant_token(live)
    instance = await wait_for(live, (await create(live, token))["id"], token, state("running"))
    check = await add_check(
        live, instance["id"], token, name="ready", type="command", target="ready", retries=1, interval="1h"
    )
    ran = await live.client.post(f"/v1/health/checks/{check['id']}/run", headers=token)
    assert ran.status_code == 200, ran.text
    dashboard = (await live.client.get(f"/v1/instances/{instance['id']}/dashboard", headers=token)).json()
    assert dashboard["health"] == (await health_of(live, instance["id"], token))["status"] == "healthy"

    answer.healthy = False
    await live.client.post(f"/v1/health/checks/{check['id']}/run", headers=token)
    dashboard = (await live.client.get(f"/v1/instances/{instance['id']}/dashboard", headers=token)).json()
    assert dashboard["health"] == "unhealthy"

    metrics = (
        await live.client.get(
            f"/v1/instances/{instance['id']}/metrics", params={"name": "health_check_latency_ms"}, headers=token
        )
    ).json()
    latency = next(s for s in metrics["series"] if s["name"] == "health_check_latency_ms")
    assert latency["points"], metrics
    text = (await live.client.get("/metrics")).text
    counts = dict(re.findall(r'^ctrlplane_health_results\{status="(\w+)"\} ([0-9.]+)$', text, re.M))
    assert float(counts["pass"]) >= 1 and float(counts["fail"]) >= 1, text
