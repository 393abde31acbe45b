"""Faults of the real control plane (``kube_cluster``) during the provider's calls: the API server
killed mid-create and mid-deploy, etcd killed and restarted, and (in test_kubernetes_real.py) a
conflicting write. Each time the call fails as "unavailable" (what a worker retries), and the retry
adopts what the interrupted call left: one Deployment per generation, the wanted pods, no duplicate.

The faults are placed deterministically: a hook on the client's call kills the API server (SIGKILL)
just before or just after the request the test names, and restarts it once the call has failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from kubernetes import client

from ctrlplane.errors import CtrlplaneError
from ctrlplane.provisioning.contract import WorkloadSpec
from ctrlplane.provisioning.errors import ProviderUnavailable
from tests.providers.kube_cluster import ControlPlane, kube_private_control_plane  # noqa: F401
from tests.providers.test_kubernetes_real import k8s, listed, track, web  # noqa: F401
from tests.waiting import eventually


@pytest.fixture
def kube_control_plane(kube_private_control_plane: ControlPlane) -> ControlPlane:
    """This module kills and restarts the API server: its own control plane, not the shared one."""
    return kube_private_control_plane


@contextmanager
def api_server_dies(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, owner: type, method: str, *, after: bool
) -> Iterator[list[str]]:
    """The API server is killed at the first ``owner.method`` call (before it is sent, or after its
    answer with ``after``), and started again when the block ends; yields the calls it died at."""
    original = getattr(owner, method)
    died: list[str] = []

    def hooked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if died:
            return original(self, *args, **kwargs)
        if after:
            # Only a call the API server carried out counts: a patch refused with 409 (the
            # Deployment controller wrote its status since the read) is re-read and sent again
            # by the provider, and the server dies after that one. Counting the refused one let
            # a deploy in CI finish with the server never killed ("DID NOT RAISE").
            result = original(self, *args, **kwargs)
            died.append(method)
            plane.stop("kube-apiserver", kill=True)
            return result
        died.append(method)
        plane.stop("kube-apiserver", kill=True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, hooked)
    try:
        yield died
    finally:
        monkeypatch.setattr(owner, method, original)
        if "kube-apiserver" not in plane.processes:
            plane.start("kube-apiserver")
        plane.wait_api()


def objects_of(plane: ControlPlane, spec: WorkloadSpec) -> dict[str, list[str]]:
    selector = f"ctrlplane.instance={spec.instance_id}"
    found = {}
    for kind, method in (
        ("deployments", "list_deployment_for_all_namespaces"),
        ("pods", "list_pod_for_all_namespaces"),
        ("secrets", "list_secret_for_all_namespaces"),
        ("services", "list_service_for_all_namespaces"),
    ):
        items = listed(plane, method, label_selector=selector)
        found[kind] = sorted(i["metadata"]["name"] for i in items if not i["metadata"].get("deletionTimestamp"))
    return found


@pytest.mark.parametrize(
    ("method", "after"),
    [("create_namespaced_deployment", False), ("create_namespaced_deployment", True)],
    ids=["before-the-deployment", "after-the-deployment"],
)
async def test_api_server_killed_mid_create_then_the_retry_converges_without_duplicates(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    after: bool,
) -> None:
    plane = kube_control_plane
    spec = track(k8s, web(replicas=2))
    with (
        api_server_dies(plane, monkeypatch, client.AppsV1Api, method, after=after) as died,
        pytest.raises(ProviderUnavailable),
    ):
        await k8s.provision(spec)
    assert died == [method]
    status = await k8s.provision(spec)
    assert status.state == "running", status.message
    objects = objects_of(plane, spec)
    assert objects["deployments"] == [f"{spec.instance_id.replace('_', '-')}-a"]
    assert len(objects["secrets"]) == 1 and len(objects["services"]) == 1
    # The pods are the ReplicaSet controller's, not ctrlplane's: a pod create whose answer the
    # killed API server lost makes the controller create one more, and it deletes the surplus
    # once it sees it (seen in CI: 3 pods just after the retry). What must hold is that it
    # settles on the wanted 2, from the one Deployment.
    await eventually(lambda: len(objects_of(plane, spec)["pods"]) == 2, "2 pods", timeout=60)


# Slow by design: the API server is killed mid deploy and restarted.
@pytest.mark.parametrize("strategy", ["rolling", "blue_green"])
async def test_api_server_killed_mid_deploy_then_the_retry_converges_without_duplicates(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:
    """Killed just after the new generation's Deployment was written (patched in place for
    rolling, created in the other slot for blue_green): the retried deploy adopts it and finishes."""
    plane = kube_control_plane
    spec = track(k8s, web(replicas=2))
    await k8s.provision(spec)
    new = msgspec.structs.replace(spec, generation=2, image="ctrlplane-test/app:2")
    method = "patch_namespaced_deployment" if strategy == "rolling" else "create_namespaced_deployment"
    with (
        api_server_dies(plane, monkeypatch, client.AppsV1Api, method, after=True) as died,
        pytest.raises(ProviderUnavailable),
    ):
        await k8s.deploy(new, strategy)  # type: ignore[arg-type]
    assert died == [method]
    status = await k8s.deploy(new, strategy)  # type: ignore[arg-type]
    assert status.state == "running", status.message
    assert [(r.generation, r.state) for r in status.replicas] == [(2, "running"), (2, "running")]
    objects = objects_of(plane, spec)
    assert len(objects["deployments"]) == 1
    assert len(objects["secrets"]) == 1 and objects["secrets"][0].endswith("-g2")


# Slow by design: etcd is killed and restarted under a real API server.
async def test_etcd_killed_and_restarted_then_the_provider_converges(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
) -> None:
    """With etcd down, a provision fails (unavailable or refused: never a hang past the request
    timeout, never a half-made duplicate); once etcd is back, the retry runs it and what ran before
    still runs."""
    plane = kube_control_plane
    before = track(k8s, web())
    assert (await k8s.provision(before)).state == "running"
    spec = track(k8s, web(replicas=2))
    plane.stop("etcd", kill=True)
    try:
        with pytest.raises(CtrlplaneError):
            await k8s.provision(spec)
    finally:
        plane.start("etcd")
        plane.wait_api()
    status = await k8s.provision(spec)
    assert status.state == "running", status.message
    objects = objects_of(plane, spec)
    assert len(objects["deployments"]) == 1 and len(objects["pods"]) == 2
    assert (await k8s.status(before.instance_id)).state == "running"
