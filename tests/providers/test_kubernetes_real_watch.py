"""The provider's list-then-watch (``KubernetesProvider.changes``, ``ctrlplane_kubernetes/watch.py``)
against the real control plane (``kube_cluster``): what is done to ctrlplane's objects behind its
back is reported, and a watch broken by an API-server restart resumes (from its resourceVersion,
or by listing again after a 410) without missing what changed while it was down."""

from __future__ import annotations

from contextlib import aclosing

import anyio
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from kubernetes import client

from ctrlplane.errors import CtrlplaneError
from ctrlplane.provisioning.errors import ProviderUnavailable
from tests.providers.kube_cluster import ControlPlane, kube_private_control_plane  # noqa: F401
from tests.providers.test_kubernetes_real import k8s, namespace_of, track, web  # noqa: F401
from tests.waiting import eventually


@pytest.fixture
def kube_control_plane(kube_private_control_plane: ControlPlane) -> ControlPlane:
    """This module kills and restarts the API server: its own control plane, not the shared one."""
    return kube_private_control_plane


class Changes:
    """A task that reads ``provider.changes()`` into ``seen`` until it ends (``error``)."""

    def __init__(self, provider: KubernetesProvider) -> None:
        self.provider = provider
        self.seen: list[str] = []
        self.error: CtrlplaneError | None = None
        self.ended = anyio.Event()

    async def run(self) -> None:
        try:
            async with aclosing(self.provider.changes()) as changes:
                async for instance_id in changes:
                    self.seen.append(instance_id)
        except CtrlplaneError as exc:
            self.error = exc
        finally:
            self.ended.set()


def deployment_name(instance_id: str) -> str:
    return f"{instance_id.replace('_', '-')}-a"


async def test_a_deployment_scaled_or_deleted_behind_ctrlplanes_back_is_reported(
    kube_control_plane: ControlPlane, k8s: KubernetesProvider
) -> None:
    plane = kube_control_plane
    spec = track(k8s, web())
    other = track(k8s, web())
    await k8s.provision(spec)
    await k8s.provision(other)
    follow = Changes(k8s)
    async with anyio.create_task_group() as group:
        group.start_soon(follow.run)
        await eventually(lambda: all(r._watch is not None for r in k8s.reflectors.values()), "the watches")
        with plane.api() as api:
            client.AppsV1Api(api).patch_namespaced_deployment_scale(
                deployment_name(spec.instance_id), namespace_of(spec), {"spec": {"replicas": 3}}
            )
        await eventually(lambda: spec.instance_id in follow.seen, "the scale reported", timeout=20)
        follow.seen.clear()
        with plane.api() as api:
            client.AppsV1Api(api).delete_namespaced_deployment(deployment_name(spec.instance_id), namespace_of(spec))
        await eventually(lambda: spec.instance_id in follow.seen, "the deletion reported", timeout=20)
        group.cancel_scope.cancel()
    assert other.instance_id not in follow.seen
    assert follow.error is None


async def test_a_change_made_while_the_api_server_restarts_is_not_missed(
    kube_control_plane: ControlPlane, k8s: KubernetesProvider
) -> None:
    plane = kube_control_plane
    spec = track(k8s, web())
    await k8s.provision(spec)
    first = Changes(k8s)
    async with anyio.create_task_group() as group:
        group.start_soon(first.run)
        await eventually(lambda: all(r.listed for r in k8s.reflectors.values()), "the first lists")
        await eventually(lambda: all(r._watch is not None for r in k8s.reflectors.values()), "the watches")
        plane.stop("kube-apiserver", kill=True)
        with anyio.fail_after(30):
            await first.ended.wait()
    assert isinstance(first.error, ProviderUnavailable), first.error
    plane.start("kube-apiserver")
    await anyio.to_thread.run_sync(plane.wait_api)
    # Nothing watches now: the deletion happens between the broken watch and its resumption.
    with plane.api() as api:
        client.AppsV1Api(api).delete_namespaced_deployment(deployment_name(spec.instance_id), namespace_of(spec))
    resumed = Changes(k8s)
    async with anyio.create_task_group() as group:
        group.start_soon(resumed.run)
        await eventually(
            lambda: spec.instance_id in resumed.seen, "the deletion reported after the restart", timeout=30
        )
        group.cancel_scope.cancel()
    assert resumed.error is None
