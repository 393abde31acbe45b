"""An environment's lifecycle on the Kubernetes provider, as objects in kmock's emulator: made
from a template (its Deployment carries the rendered image and replicas), found again by key,
extended, claimed from a warm pool, expired and terminated (every object of its instance gone)."""

from __future__ import annotations

from typing import Any

from tests.api.environments.helpers import ready_members, tenant, up, wait_env
from tests.api.test_instances_kubernetes import (  # noqa: F401 - fixtures
    app_port,
    cluster,
    generations,
    objects,
    providers,
    settings,
)
from tests.conftest import Api
from tests.providers.kube_emulator import Cluster


def template_body(app_port: int, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "preview",
        "spec": {
            "image": "registry.example/web:{{version}}",
            "replicas": 2,
            "ports": [{"container_port": app_port}],
            "resources": {"cpu_millis": 100, "memory_mb": 64},
            "env": {"PR": "{{pr}}"},
        },
        "parameters": [
            {"name": "version", "type": "string", "default": "1"},
            {"name": "pr", "type": "integer", "default": 0},
        ],
        "max_ttl": "1d",
        "max_extends": 1,
        **overrides,
    }


async def test_environment_lifecycle_on_kubernetes(live: Api, cluster: Cluster, app_port: int) -> None:
    _, token = await tenant(live)
    created = await live.client.post("/v1/templates", json=template_body(app_port), headers=token)
    assert created.status_code == 201, created.text
    environment = await up(live, token, key="pr-4", template="preview", parameters={"version": "2", "pr": 4})
    running = await wait_env(live, environment["id"], token, lambda e: e["instance_state"] == "running", timeout=30)
    instance_id = running["instance_id"]
    assert generations(cluster, instance_id) == [("1", "registry.example/web:2", 2)]
    (secret,) = objects(cluster, "secrets", instance_id)
    assert "env.PR" in secret["data"]
    same = await up(live, token, key="pr-4", template="preview", parameters={"version": "2", "pr": 4}, status=200)
    assert same["id"] == environment["id"]
    assert len(cluster.deployments(instance_id)) == 1

    extended = await live.client.post(f"/v1/environments/{environment['id']}/extend", json={"by": "1h"}, headers=token)
    assert extended.status_code == 200
    spent = await live.client.post(f"/v1/environments/{environment['id']}/extend", json={"by": "1h"}, headers=token)
    assert spent.status_code == 409 and spent.json()["code"] == "extend_limit"

    ended = await live.client.post(
        f"/v1/environments/{environment['id']}/terminate", json={"hard": True}, headers=token
    )
    assert ended.status_code == 202
    await wait_env(live, environment["id"], token, lambda e: e["state"] == "terminated", timeout=30)
    assert cluster.deployments(instance_id) == [] and cluster.pods(instance_id) == []
    assert objects(cluster, "secrets", instance_id) == objects(cluster, "services", instance_id) == []


async def test_expiry_and_a_pool_claim_on_kubernetes(live: Api, cluster: Cluster, app_port: int) -> None:
    _, token = await tenant(live)
    body = template_body(app_port, pool={"min_ready": 1, "max_ready": 1})
    assert (await live.client.post("/v1/templates", json=body, headers=token)).status_code == 201
    [member] = await ready_members(live, token, 1, timeout=30)
    assert generations(cluster, member["instance_id"]) == [("1", "registry.example/web:1", 2)]
    claimed = await up(live, token, key="sandbox-1", template="preview", parameters={}, ttl="2s")
    assert claimed["id"] == member["id"]
    assert claimed["instance_state"] == "running"
    expired = await wait_env(live, claimed["id"], token, lambda e: e["state"] == "terminated", timeout=30)
    assert expired["termination_reason"] == "expired"
    assert cluster.deployments(claimed["instance_id"]) == []
    [refilled] = await ready_members(live, token, 1, timeout=30)
    assert refilled["id"] != member["id"]
    assert len(cluster.deployments(refilled["instance_id"])) == 1
