"""Deployments through the API with workers running, against the fake provider (no ports, so a
gate passes when the new replicas run). Real HTTP gates run in test_deployments_docker.py."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ctrlplane.settings import Settings
from tests.api.test_instances import state, tenant_token, wait_for
from tests.conftest import Api
from tests.fakes import FakeProvider
from tests.waiting import eventually

APP = {"name": "web", "image": "ctrlplane-test/busybox:1", "env": {"A": "1"}, "replicas": 2}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, canary_observation_seconds=1.5, deploy_health_timeout_seconds=5)


async def running_instance(api: Api, token: dict[str, str]) -> dict[str, Any]:
    response = await api.client.post("/v1/instances", json=APP, headers=token)
    assert response.status_code == 201, response.text
    return await wait_for(api, response.json()["id"], token, state("running"))


async def finished(api: Api, deployment_id: str, token: dict[str, str], timeout: float = 20) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        body = dict((await api.client.get(f"/v1/deployments/{deployment_id}", headers=token)).json())
        return body if body["state"] in ("succeeded", "failed", "rolled_back", "cancelled") else None

    return await eventually(ended, f"deployment {deployment_id} ends", timeout=timeout)


@pytest.mark.parametrize("strategy", ["rolling", "blue_green", "canary", "recreate"])
async def test_each_strategy_rolls_the_new_image_out(live: Api, fake: FakeProvider, strategy: str) -> None:
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": "ctrlplane-test/busybox:2", "strategy": strategy, "env": {"B": "2"}, "commit_sha": "abc123"},
        headers=token,
    )
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "pending"
    done = await finished(live, response.json()["id"], token)
    assert done["state"] == "succeeded", done
    replicas = fake.replicas(instance["id"])
    assert [(r.generation, r.spec.image) for r in replicas] == [(2, "ctrlplane-test/busybox:2")] * 2
    assert replicas[0].app_env == {"A": "1", "B": "2"}
    after = (await live.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()
    assert after["current_release_id"] == done["release_id"]
    releases = (await live.client.get(f"/v1/instances/{instance['id']}/releases", headers=token)).json()["items"]
    assert [(r["version"], r["reason"], r["commit_sha"]) for r in releases] == [
        (2, "deploy", "abc123"),
        (1, "create", None),
    ]
    events = (await live.client.get(f"/v1/instances/{instance['id']}/events?limit=100", headers=token)).json()
    types = [e["type"] for e in events["items"]]
    assert types.index("deploy.started") < types.index("health.passed") < types.index("deploy.succeeded")


async def test_a_deploy_that_cannot_start_rolls_back_and_the_old_version_keeps_running(
    live: Api, fake: FakeProvider
) -> None:
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    fake.missing_images.add("ghcr.io/nobody/broken:1")
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": "ghcr.io/nobody/broken:1"}, headers=token
    )
    done = await finished(live, response.json()["id"], token)
    assert done["state"] == "rolled_back"
    assert "ghcr.io/nobody/broken:1" in done["error"]
    replicas = fake.replicas(instance["id"])
    assert [(r.generation, r.spec.image, r.state) for r in replicas] == [(1, "ctrlplane-test/busybox:1", "running")] * 2
    after = await wait_for(live, instance["id"], token, state("running"))
    assert after["image"] == "ctrlplane-test/busybox:1"
    assert after["current_release_id"] == instance["current_release_id"]


async def test_a_second_deploy_while_one_runs_is_409(api: Api) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post("/v1/instances", json=APP, headers=token)
    instance_id = response.json()["id"]
    from sqlalchemy import text

    app = api.client._transport.app  # type: ignore[attr-defined]
    async with app.state.services.db.write() as session, session.begin():
        await session.execute(text("UPDATE instances SET state = 'running' WHERE id = :id"), {"id": instance_id})
    first = await api.client.post(f"/v1/instances/{instance_id}/deploy", json={"image": "a:1"}, headers=token)
    second = await api.client.post(f"/v1/instances/{instance_id}/deploy", json={"image": "a:2"}, headers=token)
    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json()["details"]["deployment_id"] == first.json()["id"]


async def test_cancel_during_a_canary_puts_the_old_release_back(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": "ctrlplane-test/busybox:2", "strategy": "canary"},
        headers=token,
    )
    deployment_id = response.json()["id"]

    async def observing() -> bool:
        body = (await live.client.get(f"/v1/deployments/{deployment_id}", headers=token)).json()
        return any("observe canary" in s["name"] for s in body["steps"])

    await eventually(observing, "the canary is observed")
    cancelled = await live.client.post(f"/v1/deployments/{deployment_id}/cancel", headers=token)
    assert cancelled.status_code == 202
    done = await finished(live, deployment_id, token)
    assert done["state"] == "cancelled"
    assert {(r.generation, r.spec.image) for r in fake.replicas(instance["id"])} == {(1, "ctrlplane-test/busybox:1")}
    again = await live.client.post(f"/v1/deployments/{deployment_id}/cancel", headers=token)
    assert again.status_code == 409


async def test_rollback_restores_the_old_configuration_env_included(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    v1 = instance["current_release_id"]
    deploy = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": "ctrlplane-test/busybox:2", "env": {"A": "changed"}},
        headers=token,
    )
    assert (await finished(live, deploy.json()["id"], token))["state"] == "succeeded"
    rollback = await live.client.post(
        f"/v1/instances/{instance['id']}/rollback", json={"release_id": v1}, headers=token
    )
    assert rollback.status_code == 201
    assert (await finished(live, rollback.json()["id"], token))["state"] == "succeeded"
    replicas = fake.replicas(instance["id"])
    assert {(r.spec.image, r.spec.env["A"]) for r in replicas} == {("ctrlplane-test/busybox:1", "1")}
    releases = (await live.client.get(f"/v1/instances/{instance['id']}/releases", headers=token)).json()["items"]
    newest = releases[0]
    assert (newest["version"], newest["reason"], newest["notes"]) == (3, "rollback", "rollback to v1")


async def test_deploy_input_is_validated_before_anything_is_written(api: Api) -> None:
    _, token = await tenant_token(api)
    _, other_token = await tenant_token(api, "other")
    instance = (await api.client.post("/v1/instances", json=APP, headers=token)).json()
    other = (await api.client.post("/v1/instances", json=APP, headers=other_token)).json()
    path = f"/v1/instances/{instance['id']}"
    assert (
        await api.client.post(f"{path}/deploy", json={"image": "a:1", "strategy": "yolo"}, headers=token)
    ).status_code == 400
    assert (await api.client.post(f"{path}/deploy", json={"image": "Bad Image"}, headers=token)).status_code == 400
    not_running = await api.client.post(f"{path}/deploy", json={"image": "a:1"}, headers=token)
    assert not_running.status_code == 409
    assert "provisioning" in not_running.json()["message"]
    from sqlalchemy import text

    app = api.client._transport.app  # type: ignore[attr-defined]
    async with app.state.services.db.write() as session, session.begin():
        await session.execute(text("UPDATE instances SET state = 'running' WHERE id = :id"), {"id": instance["id"]})
    foreign = await api.client.post(f"{path}/rollback", json={"release_id": other["current_release_id"]}, headers=token)
    assert foreign.status_code == 400
    assert (await api.client.get(f"{path}/deployments", headers=token)).json()["total"] == 0


async def test_admin_stats_count_the_last_days_deployments(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    deployed = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": "ctrlplane-test/busybox:2"}, headers=token
    )
    await finished(live, deployed.json()["id"], token)
    stats = (await live.client.get("/v1/admin/stats", headers=live.admin_headers)).json()
    assert stats["deployments_last_24h"] == 1


async def test_configuration_changes_wait_for_a_running_deploy(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    path = f"/v1/instances/{instance['id']}"
    response = await live.client.post(
        f"{path}/deploy", json={"image": "ctrlplane-test/busybox:2", "strategy": "canary"}, headers=token
    )
    patch = await live.client.patch(path, json={"env": {"A": "9"}}, headers=token)
    assert patch.status_code == 409
    assert patch.json()["details"]["deployment_id"] == response.json()["id"]
    assert (await live.client.post(f"{path}/scale", json={"replicas": 3}, headers=token)).status_code == 409
    assert (await finished(live, response.json()["id"], token))["state"] == "succeeded"
    assert (await live.client.patch(path, json={"env": {"A": "9"}}, headers=token)).status_code == 200


@pytest.mark.parametrize("how", ["scale", "patch"])
async def test_a_scale_before_a_deploy_is_not_undone_when_the_deploy_rolls_back(
    live: Api, fake: FakeProvider, how: str
) -> None:
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    path = f"/v1/instances/{instance['id']}"
    resources = {"cpu_millis": 250, "memory_mb": 128}
    if how == "scale":
        changed = await live.client.post(f"{path}/scale", json={"replicas": 3, "resources": resources}, headers=token)
    else:
        changed = await live.client.patch(path, json={"resources": resources}, headers=token)
    assert changed.status_code == (202 if how == "scale" else 200), changed.text
    replicas = 3 if how == "scale" else 2
    await wait_for(live, instance["id"], token, lambda b: b["state"] == "running" and b["replicas"] == replicas)
    fake.missing_images.add("ghcr.io/nobody/broken:1")
    response = await live.client.post(f"{path}/deploy", json={"image": "ghcr.io/nobody/broken:1"}, headers=token)
    done = await finished(live, response.json()["id"], token)
    assert done["state"] == "rolled_back", done
    after = await wait_for(live, instance["id"], token, state("running"))
    assert after["image"] == "ctrlplane-test/busybox:1"
    assert (after["replicas"], after["resources"]) == (replicas, resources)
    running = [r for r in fake.replicas(instance["id"]) if r.state == "running"]
    assert len(running) == replicas
    assert {(r.resources.cpu_millis, r.resources.memory_mb) for r in running} == {(250, 128)}
