"""Secrets against a real Docker engine: a deployed container sees its env secret and its file
secret (content, mode 0400, read-only), nothing of it lands in the image or the container's layer,
and a rollback puts the older values back into real containers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from docker import DockerClient

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
from tests.conftest import Api
from tests.providers.docker_engine import docker_engine  # noqa: F401 - a fixture

pytestmark = pytest.mark.docker


async def set_secret(
    api: Api, token: dict[str, str], instance_id: str, key: str, value: str, type: str = "env", restart: bool = False
) -> dict[str, Any]:
    response = await api.client.post(
        f"/v1/instances/{instance_id}/secrets",
        json={"key": key, "value": value, "type": type},
        params={"restart": "true"} if restart else {},
        headers=token,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def newest_container(engine: DockerClient, instance_id: str) -> Any:
    running = [c for c in containers_of(engine, instance_id) if c.status == "running"]
    assert running, "no running container"
    return max(running, key=lambda c: int(c.labels["ctrlplane.generation"]))


def run(container: Any, *command: str) -> str:
    result = container.exec_run(list(command))
    assert result.exit_code == 0, result.output
    return str(result.output.decode())


async def test_a_deployed_container_sees_its_env_and_file_secrets(live: Api, docker_engine: DockerClient) -> None:
    token = await tenant(live, "acme")
    created = (
        await live.client.post("/v1/instances", json={**APP, "name": "web", "env": {"MODE": "plain"}}, headers=token)
    ).json()
    await wait_for(live, created["id"], token, state("running"), timeout=60)
    await set_secret(live, token, created["id"], "MODE", "from-a-secret")
    await set_secret(live, token, created["id"], "DATABASE_URL", "postgres://u:pw-5f1c@db/app")
    body = await set_secret(
        live, token, created["id"], "/etc/app/token", "token-9a7e\nsecond line", type="file", restart=True
    )
    done = await finished(live, body["deployment_id"], token, timeout=90)
    assert done["state"] == "succeeded", done

    container = newest_container(docker_engine, created["id"])
    assert run(container, "sh", "-c", 'printf %s "$DATABASE_URL"') == "postgres://u:pw-5f1c@db/app"
    assert run(container, "sh", "-c", 'printf %s "$MODE"') == "from-a-secret"
    assert run(container, "cat", "/etc/app/token") == "token-9a7e\nsecond line"
    assert run(container, "stat", "-c", "%a %u", "/etc/app/token").strip() == "400 0"
    written = container.exec_run(["sh", "-c", "echo x > /etc/app/token"])
    assert written.exit_code != 0, "the secret file must be read-only"
    assert run(container, "cat", "/etc/app/token") == "token-9a7e\nsecond line"
    # Docker leaves an empty mount-point stub in the layer; the content must not be there, so
    # committing the container to an image carries no secret into it.
    committed = container.commit(repository="ctrlplane-test/secrets-commit", tag=uuid.uuid4().hex[:12])
    try:
        output = docker_engine.containers.run(
            committed.id,
            ["cat", "/etc/app/token"],
            entrypoint=["/bin/busybox"],
            network_disabled=True,
            remove=True,
        )
        assert b"token-9a7e" not in output
        assert output == b""
    finally:
        docker_engine.images.remove(committed.id, force=True)


async def test_rollback_puts_the_older_secret_back_into_real_containers(live: Api, docker_engine: DockerClient) -> None:
    token = await tenant(live, "acme")
    created = (await live.client.post("/v1/instances", json={**APP, "name": "web"}, headers=token)).json()
    await wait_for(live, created["id"], token, state("running"), timeout=60)
    first = await set_secret(live, token, created["id"], "/etc/app/key", "key-one", type="file", restart=True)
    first_release = (await finished(live, first["deployment_id"], token, timeout=90))["release_id"]
    second = await set_secret(live, token, created["id"], "/etc/app/key", "key-two", type="file", restart=True)
    assert (await finished(live, second["deployment_id"], token, timeout=90))["state"] == "succeeded"
    assert run(newest_container(docker_engine, created["id"]), "cat", "/etc/app/key") == "key-two"

    rollback = await live.client.post(
        f"/v1/instances/{created['id']}/rollback", json={"release_id": first_release}, headers=token
    )
    assert rollback.status_code == 201, rollback.text
    assert (await finished(live, rollback.json()["id"], token, timeout=90))["state"] == "succeeded"
    assert run(newest_container(docker_engine, created["id"]), "cat", "/etc/app/key") == "key-one"
