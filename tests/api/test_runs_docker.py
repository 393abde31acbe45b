"""The release phase and one-off runs against a real Docker engine: a failing release command
leaves the old release serving untouched, a passing one saw the new release's env and secrets, a
timeout kills it; one-off runs pass their exit code and output through, cancel stops them, and
they never run inside a serving replica."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from docker import DockerClient

from ctrlplane.telemetry.otlp import instance_token
from tests.api.test_deployments import finished
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    APP,
    _remove_what_the_test_made,
    containers_of,
    providers,
    settings,
    tenant,
)
from tests.conftest import Api, bearer
from tests.providers.docker_engine import (  # noqa: F401 - docker_engine is a fixture
    IMAGE,
    V2_IMAGE,
    docker_engine,
    ensure_variant_images,
)

pytestmark = pytest.mark.docker

SECRET = "hunter2-correct-horse"


@pytest.fixture(scope="module")
def variant_images(docker_engine: DockerClient) -> None:
    ensure_variant_images(docker_engine)


async def running(live: Api, token: dict[str, str], **extra: Any) -> dict[str, Any]:
    created = await live.client.post("/v1/instances", json={**APP, "name": "web", **extra}, headers=token)
    assert created.status_code == 201, created.text
    return await wait_for(live, created.json()["id"], token, state("running"), timeout=30)


async def run_ended(live: Api, run_id: str, token: dict[str, str], timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = (await live.client.get(f"/v1/runs/{run_id}", headers=token)).json()
        if body["state"] not in ("pending", "running"):
            return dict(body)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"run never ended: {body}")
        await asyncio.sleep(0.1)


async def events(live: Api, instance_id: str, token: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = (await live.client.get(f"/v1/instances/{instance_id}/events", params=params, headers=token)).json()
        found += page["items"]
        if not page["items"] or not page["next_cursor"]:
            return found
        params["since"] = page["next_cursor"]


def run_containers(engine: DockerClient, instance_id: str) -> list[Any]:
    """The instance's run containers as the engine lists them (no inspect, which races a removal)."""
    listed = engine.api.containers(all=True, filters={"label": f"ctrlplane.instance={instance_id}"})
    return [c for c in listed if "ctrlplane.run" in c["Labels"]]


async def test_a_release_command_that_exits_1_fails_the_deploy_and_the_old_release_keeps_serving(
    live: Api, docker_engine: DockerClient, variant_images: None
) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token)
    replicas_before = {c.id for c in containers_of(docker_engine, instance["id"])}
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": V2_IMAGE, "release_command": "echo migrating; echo 'table users: lock timeout' >&2; exit 1"},
        headers=token,
    )
    assert response.status_code == 201, response.text
    done = await finished(live, response.json()["id"], token, timeout=60)
    assert done["state"] == "failed", done
    assert "exited with code 1" in done["error"]
    failed_step = next(s for s in done["steps"] if s["name"] == "release phase failed")
    assert "migrating" in failed_step["message"] and "lock timeout" in failed_step["message"]
    seen = await events(live, instance["id"], token)
    release_failed = [e for e in seen if e["type"] == "deploy.release_failed"]
    assert release_failed and release_failed[0]["data"]["exit_code"] == 1
    assert not [e for e in seen if e["type"] == "replica.started"]
    after = await wait_for(live, instance["id"], token, state("running"), timeout=10)
    assert after["image"] == IMAGE and after["current_release_id"] == instance["current_release_id"]
    # the very same containers serve: none was replaced, and the release container is gone
    assert {c.id for c in containers_of(docker_engine, instance["id"])} == replicas_before
    run = await run_ended(live, release_failed[0]["data"]["run_id"], token)
    assert run["kind"] == "release" and run["exit_code"] == 1 and "migrating" in run["output"]


async def test_a_release_command_that_exits_0_saw_the_new_release_and_the_deploy_proceeds(
    live: Api, docker_engine: DockerClient, variant_images: None
) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token)
    secret = await live.client.post(
        f"/v1/instances/{instance['id']}/secrets", json={"key": "DB_PASSWORD", "value": SECRET}, headers=token
    )
    assert secret.status_code == 201, secret.text
    command = 'test "$DB_PASSWORD" = "' + SECRET + '" && echo "flavor=$FLAVOR password=$DB_PASSWORD" && ls /tmp'
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": V2_IMAGE, "env": {"FLAVOR": "new"}, "release_command": command, "release_timeout": 60},
        headers=token,
    )
    assert response.status_code == 201, response.text
    done = await finished(live, response.json()["id"], token, timeout=90)
    assert done["state"] == "succeeded", done
    names = [s["name"] for s in done["steps"]]
    assert names.index("release phase succeeded") < names.index("start replicas up to 1")
    started = next(e for e in await events(live, instance["id"], token) if e["type"] == "deploy.release_started")
    run = await run_ended(live, started["data"]["run_id"], token)
    assert run["exit_code"] == 0 and run["state"] == "succeeded"
    assert "flavor=new password=[redacted]" in run["output"]
    assert SECRET not in run["output"]
    assert run_containers(docker_engine, instance["id"]) == []
    after = (await live.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()
    assert after["image"] == V2_IMAGE and after["release_command"] == ["/bin/sh", "-c", command]


async def test_a_release_command_past_its_timeout_is_killed_and_fails_the_deploy(
    live: Api, docker_engine: DockerClient, variant_images: None
) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": V2_IMAGE, "release_command": ["sleep", "300"], "release_timeout": 2},
        headers=token,
    )
    done = await finished(live, response.json()["id"], token, timeout=60)
    assert done["state"] == "failed", done
    assert "timed out after 2s" in done["error"]
    assert run_containers(docker_engine, instance["id"]) == []
    after = await wait_for(live, instance["id"], token, state("running"), timeout=10)
    assert after["image"] == IMAGE


async def test_rollback_reruns_the_release_command_only_when_asked(
    live: Api, docker_engine: DockerClient, variant_images: None
) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token, release_command=["echo", "migrated"])
    first = await live.client.post(f"/v1/instances/{instance['id']}/deploy", json={"image": V2_IMAGE}, headers=token)
    assert (await finished(live, first.json()["id"], token, timeout=60))["state"] == "succeeded"
    for run_release, expected in ((False, 1), (True, 2)):
        back = await live.client.post(
            f"/v1/instances/{instance['id']}/rollback",
            json={"release_id": instance["current_release_id"], "run_release": run_release},
            headers=token,
        )
        assert back.status_code == 201, back.text
        assert (await finished(live, back.json()["id"], token, timeout=60))["state"] == "succeeded"
        runs = (await live.client.get(f"/v1/instances/{instance['id']}/runs", headers=token)).json()["items"]
        assert len([r for r in runs if r["kind"] == "release"]) == expected, runs


async def test_a_one_off_run_returns_its_exit_code_and_output_and_never_runs_in_a_serving_replica(
    live: Api, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token, env={"GREETING": "hello"})
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/runs",
        json={"command": "touch /tmp/one-off-was-here; echo $GREETING $EXTRA; hostname; exit 7", "env": {"EXTRA": "x"}},
        headers=token,
    )
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "pending" and response.json()["id"].startswith("run_")
    run = await run_ended(live, response.json()["id"], token)
    assert run["state"] == "failed" and run["exit_code"] == 7, run
    lines = run["output"].splitlines()
    assert lines[0] == "hello x"
    replicas = containers_of(docker_engine, instance["id"])
    assert len(replicas) == 1
    assert lines[1] != replicas[0].id[:12]  # the run's own container, not the replica
    probe = replicas[0].exec_run(["ls", "/tmp/one-off-was-here"])
    assert probe.exit_code != 0, "the one-off command ran inside the serving replica"
    assert run_containers(docker_engine, instance["id"]) == []
    logs = await live.client.get(f"/v1/runs/{run['id']}/logs", headers=token)
    assert [line["message"] for line in logs.json()["items"]][:1] == ["hello x"]
    types = [e["type"] for e in await events(live, instance["id"], token)]
    assert "run.started" in types and "run.failed" in types


async def test_cancel_stops_a_running_one_off_run(live: Api, docker_engine: DockerClient) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/runs", json={"command": ["sleep", "600"]}, headers=token
    )
    run_id = response.json()["id"]
    for _ in range(200):
        if run_containers(docker_engine, instance["id"]):
            break
        await asyncio.sleep(0.1)
    assert run_containers(docker_engine, instance["id"]), "the run's container never appeared"
    cancelled = await live.client.post(f"/v1/runs/{run_id}/cancel", headers=token)
    assert cancelled.status_code == 202, cancelled.text
    run = await run_ended(live, run_id, token, timeout=30)
    assert run["state"] == "cancelled", run
    assert run_containers(docker_engine, instance["id"]) == []
    again = await live.client.post(f"/v1/runs/{run_id}/cancel", headers=token)
    assert again.status_code == 409


async def test_a_runs_output_printing_its_secret_and_otlp_token_is_redacted_and_shown_to_deploy_only(
    live: Api, docker_engine: DockerClient
) -> None:
    created = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(created["id"]))
    instance = await running(live, token)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/secrets",
        json={"key": "DB_PASSWORD", "value": SECRET},
        params={"restart": "true"},
        headers=token,
    )
    assert response.status_code == 201, response.text
    rolled = await finished(live, response.json()["deployment_id"], token, timeout=90)
    assert rolled["state"] == "succeeded", rolled
    command = 'echo "plain=$DB_PASSWORD"; printf %s "$DB_PASSWORD" | base64; echo "otlp=$OTEL_EXPORTER_OTLP_HEADERS"'
    started = await live.client.post(f"/v1/instances/{instance['id']}/runs", json={"command": command}, headers=token)
    assert started.status_code == 201, started.text
    run = await run_ended(live, started.json()["id"], token)
    assert run["state"] == "succeeded", run
    encoded = base64.b64encode(SECRET.encode()).decode()
    otlp = instance_token(live.tokens.settings, instance["id"])
    lines = run["output"].splitlines()
    assert lines[:3] == ["plain=[redacted]", "[redacted]", "otlp=authorization=Bearer%20[redacted]"], lines
    logs = await live.client.get(f"/v1/runs/{run['id']}/logs", headers=token)
    for shown in (run["output"], logs.text):
        assert SECRET not in shown and encoded not in shown and otlp not in shown
    reader = bearer(live.tokens.tenant(created["id"], roles=["read"]))
    as_reader = await live.client.get(f"/v1/runs/{run['id']}", headers=reader)
    assert as_reader.status_code == 200 and as_reader.json()["output"] == "(shown to the deploy role only)"
    listed = await live.client.get(f"/v1/instances/{instance['id']}/runs", headers=reader)
    assert {item["output"] for item in listed.json()["items"]} == {"(shown to the deploy role only)"}
    refused = await live.client.get(f"/v1/runs/{run['id']}/logs", headers=reader)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden", refused.text
