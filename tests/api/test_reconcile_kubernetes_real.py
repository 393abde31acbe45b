"""The reconciler on the real control plane (``tests/providers/kube_cluster.py``): the provider's
list-then-watch of Deployments and Pods triggers the repair of what was changed behind ctrlplane's
back, the periodic pass being only the safety net; after an API-server restart the watch resumes
and a change made while it was broken is repaired too."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import msgspec
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings
from kubernetes import client

from ctrlplane.operations import queue
from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_kubernetes_real import of_instance
from tests.conftest import Api, bearer
from tests.providers.kube_cluster import ControlPlane, kube_private_control_plane  # noqa: F401
from tests.waiting import eventually

PERIODIC_PASS_SECONDS = 600.0
"""Far beyond the test: only the first pass (at startup) runs; a repair must come from the watch."""


@pytest.fixture
def kube_control_plane(kube_private_control_plane: ControlPlane) -> ControlPlane:
    """This module kills and restarts the API server: its own control plane, not the shared one."""
    return kube_private_control_plane


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, providers=("kubernetes",), reconcile_interval_seconds=PERIODIC_PASS_SECONDS
    )


@pytest.fixture
def providers(settings: Settings, kube_control_plane: ControlPlane) -> ProviderRegistry:
    kube = KubernetesSettings(rollout_timeout_seconds=30, request_timeout_seconds=5)
    return ProviderRegistry(
        [KubernetesProvider(provider_settings(settings), configuration=kube_control_plane.configuration(), kube=kube)]
    )


def deployments(plane: ControlPlane, instance_id: str) -> list[str]:
    return [d["metadata"]["name"] for d in of_instance(plane, "list_deployment_for_all_namespaces", instance_id)]


def the_deployment(plane: ControlPlane, instance_id: str) -> dict[str, Any]:
    (deployment,) = of_instance(plane, "list_deployment_for_all_namespaces", instance_id)
    return deployment


def delete_deployment(plane: ControlPlane, instance_id: str) -> str:
    deployment = the_deployment(plane, instance_id)
    with plane.api() as api:
        client.AppsV1Api(api).delete_namespaced_deployment(
            deployment["metadata"]["name"], deployment["metadata"]["namespace"]
        )
    return str(deployment["metadata"]["uid"])


def scale_to_zero(plane: ControlPlane, instance_id: str) -> str:
    deployment = the_deployment(plane, instance_id)
    with plane.api() as api:
        client.AppsV1Api(api).patch_namespaced_deployment_scale(
            deployment["metadata"]["name"], deployment["metadata"]["namespace"], {"spec": {"replicas": 0}}
        )
    return str(deployment["metadata"]["uid"])


async def no_operation_in_flight(app: Any, instance_id: str) -> None:
    """The repair finished (it re-applies the replica count: one still running when the API server
    restarts would undo a later change by itself, not through the watch)."""

    async def idle() -> bool:
        async with app.state.services.db.read() as session:
            return not await queue.unfinished_for(session, instance_id)

    await eventually(idle, "no operation in flight", timeout=30)


async def repaired(live: Api, plane: ControlPlane, instance_id: str, token: dict[str, str], check: Any) -> None:
    """A Deployment of the instance for which ``check(uid)`` holds runs its replica again."""

    def serving() -> bool:
        found = of_instance(plane, "list_deployment_for_all_namespaces", instance_id)
        return any(
            check(d["metadata"]["uid"]) and d["spec"]["replicas"] == (d.get("status") or {}).get("readyReplicas") == 1
            for d in found
        )

    await eventually(lambda: anyio.to_thread.run_sync(serving), "the Deployment serving its replica", timeout=30)
    await wait_for(live, instance_id, token, state("running"), timeout=30)


# Slow by design: two repairs on the real API server, with the watch re-established across a restart.
async def test_a_deployment_deleted_or_scaled_behind_ctrlplanes_back_is_repaired_from_the_watch_across_a_restart(
    live: Api, app: Any, kube_control_plane: ControlPlane
) -> None:
    plane = kube_control_plane
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    body = {
        "name": "web",
        "image": "registry.example/web:1",
        "ports": [{"container_port": 8080}],
        "resources": {"cpu_millis": 100, "memory_mb": 64},
        "provider_name": "kubernetes",
    }
    created = await live.client.post("/v1/instances", json=body, headers=token)
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    await wait_for(live, instance_id, token, state("running"), timeout=60)

    gone = await anyio.to_thread.run_sync(delete_deployment, plane, instance_id)
    await repaired(live, plane, instance_id, token, lambda uid: uid != gone)
    await no_operation_in_flight(app, instance_id)

    # The API server restarts: the watch breaks; the scale below happens before it resumes (the
    # watch loop waits a second between attempts), so only a resumed watch or a relist sees it.
    # (A scale, not a deletion: right after an API-server restart the real garbage collector may
    # leave a deleted Deployment's pods for minutes, and they carry the instance's labels.)
    await anyio.to_thread.run_sync(lambda: plane.stop("kube-apiserver", kill=True))
    plane.start("kube-apiserver")
    await anyio.to_thread.run_sync(plane.wait_api)
    scaled = await anyio.to_thread.run_sync(scale_to_zero, plane, instance_id)
    await repaired(live, plane, instance_id, token, lambda uid: uid == scaled)

    events = (await live.client.get(f"/v1/instances/{instance_id}/events", headers=token)).json()["items"]
    assert [e["type"] for e in events].count("instance.repairing") == 2
    assert len(deployments(plane, instance_id)) == 1
