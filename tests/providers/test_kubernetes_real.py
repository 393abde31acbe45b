"""The Kubernetes provider against a real control plane (``kube_cluster``: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok on loopback): the conformance suite, then what only
a real API server shows (the admission chain, resourceVersion conflicts, label selectors, garbage
collection, ResourceQuota admission, the controllers' rollouts).

Pods run on kwok's simulated node: they are scheduled, created by the real ReplicaSets and reported
running (or waiting with ``ErrImagePull`` for an image under ``missing.invalid/``), but no container
runs, so what needs a kubelet (``pods/log``, ``pods/exec``, metrics figures) stays on the emulator
(``test_kubernetes.py``; the absence of metrics is tested here); the tests below say where a
conformance test differs and why.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread
import msgspec
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.errors import ClusterQuotaExceeded, UsageUnavailable
from ctrlplane_kubernetes.settings import KubernetesSettings
from kubernetes import client

from ctrlplane.provisioning.contract import (
    PortSpec,
    Provider,
    ProviderSettings,
    RegistryAuth,
    Resources,
    Strategy,
    TenantQuota,
    WorkloadSpec,
)
from ctrlplane.provisioning.errors import ProviderError
from tests.providers.conformance import SMALL, AppImage, ProviderConformance, Workloads, containers_of, new_id
from tests.providers.kube_cluster import ControlPlane, free_port, kube_control_plane  # noqa: F401
from tests.waiting import eventually

REAL_CLUSTER = f"test-kreal-{uuid.uuid4().hex[:8]}"
KUBE = KubernetesSettings(rollout_timeout_seconds=30, request_timeout_seconds=10)


def quantity(raw: str) -> int:
    return int(raw.removesuffix("m").removesuffix("Mi"))


def real_provider(plane: ControlPlane, cluster: str = REAL_CLUSTER, **kube: Any) -> KubernetesProvider:
    settings = KubernetesSettings(**{**KUBE.__dict__, **kube})
    return KubernetesProvider(
        ProviderSettings(cluster_name=cluster), configuration=plane.configuration(), kube=settings
    )


def pods_of(plane: ControlPlane, instance_id: str) -> list[dict[str, Any]]:
    with plane.api() as api:
        listed = client.CoreV1Api(api).list_pod_for_all_namespaces(
            label_selector=f"ctrlplane.instance={instance_id}", _preload_content=False
        )
    return sorted(
        (p for p in json.loads(listed.data)["items"] if not p["metadata"].get("deletionTimestamp")),
        key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]),
    )


def pod_named(plane: ControlPlane, instance_id: str, name: str) -> dict[str, Any]:
    return next(p for p in pods_of(plane, instance_id) if p["metadata"]["name"] == name)


async def replica_pod(plane: ControlPlane, provider: Provider, instance_id: str, replica: int) -> dict[str, Any]:
    status = await provider.status(instance_id)
    name = next(r.name for r in status.replicas if r.replica == replica)
    return pod_named(plane, instance_id, name)


class TestKubernetesProviderOnARealApiServer(ProviderConformance):
    @pytest.fixture
    async def provider(self, kube_control_plane: ControlPlane) -> AsyncIterator[Provider]:
        provider = real_provider(kube_control_plane)
        self.plane = kube_control_plane
        yield provider
        await provider.close()

    @pytest.fixture
    async def unavailable_provider(self, kube_control_plane: ControlPlane) -> AsyncIterator[Provider]:
        configuration = kube_control_plane.configuration()
        configuration.host = f"https://127.0.0.1:{free_port()}"
        provider = KubernetesProvider(
            ProviderSettings(cluster_name=REAL_CLUSTER), configuration=configuration, kube=KUBE
        )
        yield provider
        await provider.close()

    @pytest.fixture
    def image(self) -> AppImage:
        return AppImage("ctrlplane-test/app:1", 8080)

    @pytest.fixture
    def missing_image(self) -> str:
        return f"missing.invalid/{new_id('absent')}:1"

    async def crash(self, provider: Provider, instance_id: str, replica: int) -> int:
        """Writes what a kubelet reports for a container that died with exit code 2 (pods/status)."""
        pod = await replica_pod(self.plane, provider, instance_id, replica)
        started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        body = {
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": "app",
                        "image": pod["spec"]["containers"][0]["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": 2,
                                "reason": "Error",
                                "startedAt": started,
                                "finishedAt": started,
                            }
                        },
                    }
                ],
            }
        }
        with self.plane.api() as api:
            client.CoreV1Api(api).patch_namespaced_pod_status(
                pod["metadata"]["name"], pod["metadata"]["namespace"], body
            )
        return 2

    async def remove_replica(self, provider: Provider, instance_id: str, replica: int) -> None:
        pod = await replica_pod(self.plane, provider, instance_id, replica)
        with self.plane.api() as api:
            client.CoreV1Api(api).delete_namespaced_pod(
                pod["metadata"]["name"], pod["metadata"]["namespace"], grace_period_seconds=0
            )

    async def limits(self, provider: Provider, instance_id: str) -> list[Resources]:
        status = await provider.status(instance_id)
        found = []
        for replica in status.replicas:
            limits = pod_named(self.plane, instance_id, replica.name)["spec"]["containers"][0]["resources"]["limits"]
            found.append(Resources(cpu_millis=quantity(limits["cpu"]), memory_mb=quantity(limits["memory"])))
        return found

    async def write_log(self, provider: Provider, instance_id: str, message: str) -> None:
        raise AssertionError("kwok runs no container: the log tests run on the emulator")

    # -- what needs a kubelet (a running container) stays on the emulator (test_kubernetes.py) ----

    test_exec_returns_the_exit_code_and_output = None  # type: ignore[assignment]
    test_exec_runs_in_the_generation_and_replica_named = None  # type: ignore[assignment]
    test_exec_without_a_running_replica_is_workload_not_found = None  # type: ignore[assignment]
    test_logs_return_written_lines_oldest_first_and_tail_keeps_the_last = None  # type: ignore[assignment]
    test_logs_follow_yields_a_line_written_after_it_began = None  # type: ignore[assignment]
    test_usage_sums_the_running_replicas = None  # type: ignore[assignment]
    test_replica_usage_reports_each_running_replica_against_its_limit = None  # type: ignore[assignment]

    # -- conformance tests whose runtime assumption differs on Kubernetes --------------------------

    async def test_provision_runs_every_replica_with_an_endpoint(
        self, provider: Provider, workloads: Workloads, image: AppImage
    ) -> None:
        """Differs: an endpoint is the pod's IP (kwok's, from a loopback range) and the container
        port, so two replicas differ by address, not by port."""
        spec = workloads.spec(replicas=2)
        status = await provider.provision(spec)
        assert status.state == "running", status.message
        assert [(r.replica, r.generation, r.state) for r in status.replicas] == [(0, 1, "running"), (1, 1, "running")]
        for replica in status.replicas:
            ip = pod_named(self.plane, spec.instance_id, replica.name)["status"]["podIP"]
            assert ip.startswith("127.")
            (endpoint,) = replica.endpoints
            assert (endpoint.host, endpoint.host_port, endpoint.url, endpoint.replica) == (
                ip,
                image.http_port,
                f"http://{ip}:{image.http_port}",
                replica.replica,
            )
        assert len({e.host for e in status.endpoints}) == 2

    async def test_stop_keeps_replicas_and_reports_stopped_then_start_runs_them(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        """Differs: Kubernetes has no stopped pod. Stop scales the Deployment to 0 (the real
        ReplicaSet deletes the pods); status reports the wanted replicas as exited."""
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        stopped = await provider.stop(spec.instance_id)
        assert stopped.state == "stopped", stopped.message
        assert [r.state for r in stopped.replicas] == ["exited", "exited"]
        assert pods_of(self.plane, spec.instance_id) == []
        started = await provider.start(spec.instance_id)
        assert started.state == "running", started.message
        assert len(started.endpoints) == 2

    async def test_scale_applies_limits_in_place_and_matches_the_replica_count(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        """Differs: new resources change the pod template, so the Deployment controller replaces
        the pods (RollingUpdate) instead of resizing them in place."""
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        assert await self.limits(provider, spec.instance_id) == [SMALL, SMALL]
        bigger = Resources(cpu_millis=500, memory_mb=96)
        down = await provider.scale(workloads.again(spec, replicas=1, resources=bigger))
        assert [(r.replica, r.state) for r in down.replicas] == [(0, "running")], down.message
        assert await self.limits(provider, spec.instance_id) == [bigger]
        # Indices follow creation times, recorded to the second: new pods in a later second than
        # the survivor's (see test_provision_recreates_a_replica_removed_from_outside).
        await anyio.sleep(1.05 - time.time() % 1)
        up = await provider.scale(workloads.again(spec, replicas=3, resources=bigger))
        assert up.state == "running", up.message
        assert [r.replica for r in up.replicas] == [0, 1, 2]
        assert up.replicas[0].name == down.replicas[0].name
        assert await self.limits(provider, spec.instance_id) == [bigger, bigger, bigger]

    async def test_restart_restarts_all_replicas_or_only_those_named(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        """Differs: the kubelet (kwok) reports start times to the second, so a restart within the
        second of the provision cannot show a later time; a restarted replica is a new pod (the
        Deployment's rollout replaces all; a named replica's pod is deleted and replaced)."""
        spec = workloads.spec(replicas=2)
        first = await provider.provision(spec)
        everything = await provider.restart(spec.instance_id)
        assert everything.state == "running", everything.message
        assert not {r.name for r in everything.replicas} & {r.name for r in first.replicas}
        # Indices follow creation times, recorded to the second (see the next test).
        await anyio.sleep(1.05 - time.time() % 1)
        only_one = await provider.restart(spec.instance_id, replicas=(1,))
        assert only_one.state == "running", only_one.message
        assert only_one.replicas[0].name == everything.replicas[0].name
        assert only_one.replicas[1].name != everything.replicas[1].name

    async def test_provision_recreates_a_replica_removed_from_outside(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        """Differs: the real ReplicaSet replaces a deleted pod by itself, at once; the replacement
        takes the free index and the other replica keeps its own. A provision then changes nothing.

        Replica indices follow the pods' creation times, which the API server records to the
        second: the removal waits for the next second, as any removal that is not within the second
        of the provision does (one within it could give the replacement the lower index)."""
        spec = workloads.spec(replicas=2)
        first = await provider.provision(spec)
        await anyio.sleep(1.05 - time.time() % 1)
        removed = first.replicas[1].name
        await self.remove_replica(provider, spec.instance_id, 1)

        async def replaced() -> bool:
            status = await provider.status(spec.instance_id)
            names = [r.name for r in status.replicas]
            return status.state == "running" and len(names) == 2 and removed not in names

        with anyio.fail_after(20):
            while not await replaced():
                await anyio.sleep(0.2)
        healed = await provider.provision(spec)
        assert healed.state == "running", healed.message
        assert [r.replica for r in healed.replicas] == [0, 1]
        assert healed.replicas[0].name == first.replicas[0].name
        assert healed.replicas[0].started_at == first.replicas[0].started_at
        assert len(containers_of(await provider.inventory(), spec.instance_id)) == 2


# -- Kubernetes only, on the real API server ----------------------------------------------------------

WEB = {"name": "web", "image": "ctrlplane-test/app:1", "resources": SMALL, "ports": (PortSpec(8080),)}


def web(**overrides: Any) -> WorkloadSpec:
    return WorkloadSpec(**{"instance_id": new_id("inst"), "tenant_id": new_id("ten"), **WEB, **overrides})


@pytest.fixture
async def k8s(kube_control_plane: ControlPlane) -> AsyncIterator[KubernetesProvider]:
    provider = real_provider(kube_control_plane)
    made: list[str] = []
    provider.made = made  # type: ignore[attr-defined]
    yield provider
    for instance_id in made:
        await provider.deprovision(instance_id)
    await provider.close()


def track(k8s: KubernetesProvider, spec: WorkloadSpec) -> WorkloadSpec:
    k8s.made.append(spec.instance_id)  # type: ignore[attr-defined]
    return spec


def listed(plane: ControlPlane, method: str, *args: Any, **params: Any) -> list[dict[str, Any]]:
    """Items of a list call, made as raw JSON through the admin client."""
    with plane.api() as api:
        owner = client.AppsV1Api(api) if "deployment" in method or "replica_set" in method else client.CoreV1Api(api)
        if "network_polic" in method:
            owner = client.NetworkingV1Api(api)
        response = getattr(owner, method)(*args, _preload_content=False, **params)
    return list(json.loads(response.data)["items"])


def namespace_of(spec: WorkloadSpec) -> str:
    return f"{REAL_CLUSTER}-{spec.tenant_id.replace('_', '-')}"


async def eventually_true(check: Callable[[], object], timeout: float = 30.0) -> None:
    """``eventually`` for a blocking check against the API server (run in a worker thread)."""
    await eventually(lambda: anyio.to_thread.run_sync(check), getattr(check, "__name__", "the check"), timeout=timeout)


async def test_the_tenant_namespace_and_its_guards_pass_the_real_admission_chain(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
) -> None:
    """Namespace (with Pod Security labels), NetworkPolicy, ResourceQuota and LimitRange are
    accepted as written; the quota controller counts the pods; Pod Security admission enforces
    ``restricted`` there (a pod without a security context is refused), and ctrlplane's own pods pass it."""
    plane = kube_control_plane
    quota = TenantQuota(max_instances=2, max_cpu_millis=1000, max_memory_mb=512)
    spec = track(k8s, web(replicas=2, tenant_quota=quota))
    status = await k8s.provision(spec)
    assert status.state == "running", status.message
    namespace = namespace_of(spec)
    with plane.api() as api:
        core = client.CoreV1Api(api)
        labels = core.read_namespace(namespace).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        assert labels["ctrlplane.cluster"] == REAL_CLUSTER
        (policy,) = listed(plane, "list_namespaced_network_policy", namespace)
        assert policy["spec"]["policyTypes"] == ["Ingress"] or "Ingress" in policy["spec"]["policyTypes"]
        (limits,) = listed(plane, "list_namespaced_limit_range", namespace)
        assert limits["spec"]["limits"][0]["max"] == {"cpu": "1", "memory": "512Mi"}

    def counted() -> bool:
        (rq,) = listed(plane, "list_namespaced_resource_quota", namespace)
        used = rq.get("status", {}).get("used", {})
        return rq["status"]["hard"]["limits.cpu"] == "2" and used.get("limits.cpu") == "500m"

    await eventually_true(counted)
    unconfined = {  # no securityContext: may run as root, keeps its capabilities, may escalate
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "unconfined"},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {"cpu": "10m", "memory": "8Mi"}}}]},
    }
    with plane.api() as api, pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(api).create_namespaced_pod(namespace, unconfined)
    assert refused.value.status == 403 and "PodSecurity" in str(refused.value.body), refused.value.body


async def test_registry_credentials_and_a_read_only_root_pass_the_real_admission_chain(
    kube_control_plane: ControlPlane, k8s: KubernetesProvider
) -> None:
    """A pull Secret of type ``kubernetes.io/dockerconfigjson`` named in ``imagePullSecrets``, and a
    read-only root filesystem with a memory ``/tmp``, are accepted by a real API server under the
    ``restricted`` Pod Security standard, and the pods run."""
    auth = RegistryAuth(registry="registry.example.com", username="robot", password="pull-s3cret")
    spec = track(k8s, web(registry_auth=auth, read_only_root_fs=True))
    status = await k8s.provision(spec)
    assert status.state == "running", status.message
    namespace = namespace_of(spec)
    pull = next(
        s
        for s in listed(kube_control_plane, "list_namespaced_secret", namespace)
        if s["metadata"]["name"].endswith("-pull")
    )
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    assert "registry.example.com" in json.loads(base64.b64decode(pull["data"][".dockerconfigjson"]))["auths"]
    (pod, *_) = pods_of(kube_control_plane, spec.instance_id)
    assert pod["spec"]["imagePullSecrets"] == [{"name": pull["metadata"]["name"]}]
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


async def test_pods_beyond_the_real_resource_quota_are_a_clear_quota_error(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
) -> None:
    """The ResourceQuota (twice 250m CPU) admits two pods of 250m; the ReplicaSet's third is refused
    by the API server, and provision reports ctrlplane's quota error (403 ``quota_exceeded``) naming
    the quota instead of waiting out its timeout, and removes the half-made generation."""
    quota = TenantQuota(max_instances=2, max_cpu_millis=250, max_memory_mb=512)
    spec = track(k8s, web(replicas=3, tenant_quota=quota))
    with anyio.fail_after(25):
        with pytest.raises(ClusterQuotaExceeded) as raised:
            await k8s.provision(spec)
    error = raised.value
    assert (error.status, error.code) == (403, "quota_exceeded")
    assert error.details["quota"] == "ctrlplane-tenant-quota"
    assert "limits.cpu" in error.message
    assert listed(kube_control_plane, "list_namespaced_deployment", namespace_of(spec)) == []


async def test_a_deployment_beyond_the_real_object_count_quota_is_a_clear_quota_error(
    k8s: KubernetesProvider,
) -> None:
    """``count/deployments.apps`` = twice max_instances: a tenant of one instance may run a deploy's
    two slots; a second instance's Deployment is refused at create, as ctrlplane's quota error
    (before this, the 403 read as a missing RBAC permission)."""
    tenant = new_id("ten")
    quota = TenantQuota(max_instances=1, max_cpu_millis=2000, max_memory_mb=1024)
    first = track(k8s, web(tenant_id=tenant, tenant_quota=quota))
    await k8s.provision(first)
    # Re-applying the existing Service with its quota used up (quota admission answers 403 before
    # the API server would answer 409) adopts it, as any retried create does.
    await k8s.provision(track(k8s, msgspec.structs.replace(first, generation=2)))
    second = track(k8s, web(tenant_id=tenant, tenant_quota=quota))
    with pytest.raises(ClusterQuotaExceeded, match=r"count/deployments\.apps"):
        await k8s.provision(second)
    assert (await k8s.status(second.instance_id)).state == "missing"


async def test_each_installation_lists_only_its_own_objects_by_the_servers_label_selector(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
) -> None:
    """Two installations (cluster names) share the API server and a tenant ID: the label selector
    the API server applies keeps each one's status and inventory to its own objects."""
    other = real_provider(kube_control_plane, cluster=f"{REAL_CLUSTER}-other")
    tenant = new_id("ten")
    mine = track(k8s, web(tenant_id=tenant))
    theirs = web(tenant_id=tenant, instance_id=mine.instance_id)
    try:
        await k8s.provision(mine)
        await other.provision(theirs)
        assert len((await k8s.status(mine.instance_id)).replicas) == 1
        inventory = await k8s.inventory()
        assert {i.name for i in inventory if i.kind == "network" and i.tenant_id == tenant} == {namespace_of(mine)}
        assert len(containers_of(inventory, mine.instance_id)) == 1
        selected = listed(
            kube_control_plane,
            "list_pod_for_all_namespaces",
            label_selector=f"ctrlplane.cluster={REAL_CLUSTER},ctrlplane.instance={mine.instance_id}",
        )
        assert [p["metadata"]["namespace"] for p in selected] == [namespace_of(mine)]
    finally:
        await other.deprovision(theirs.instance_id)
        await other.close()


# Slow by design: the real garbage collector and namespace controller remove what ctrlplane left to them.
async def test_deprovision_leaves_the_rest_to_the_real_garbage_collector(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
) -> None:
    """ctrlplane deletes the Deployment; the garbage collector deletes its ReplicaSet (owned by it)
    and the namespace controller empties and removes the namespace."""
    plane = kube_control_plane
    spec = web(replicas=2)
    await k8s.provision(spec)
    selector = f"ctrlplane.instance={spec.instance_id}"
    assert len(listed(plane, "list_replica_set_for_all_namespaces", label_selector=selector)) == 1
    await k8s.deprovision(spec.instance_id)
    assert (await k8s.status(spec.instance_id)).state == "missing"

    def collected() -> bool:
        sets = listed(plane, "list_replica_set_for_all_namespaces", label_selector=selector)
        names = [n["metadata"]["name"] for n in listed(plane, "list_namespace")]
        return not sets and namespace_of(spec) not in names

    await eventually_true(collected, timeout=60)
    # A provision of the same tenant right after waits for the namespace to go, then recreates it.
    again = track(k8s, web(tenant_id=spec.tenant_id))
    await k8s.provision(again)
    await k8s.deprovision(again.instance_id)
    late = track(k8s, web(tenant_id=spec.tenant_id))
    assert (await k8s.provision(late)).state == "running"


async def test_a_conflicting_write_is_retried_from_the_new_version_not_overwritten(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """start() computes the replica count from the Deployment it read. A concurrent writer changes
    the wanted count (2 → 3) between that read and the patch: the patch carries the old
    resourceVersion, the API server answers 409, and start reads again and starts 3, not 2."""
    plane = kube_control_plane
    spec = track(k8s, web(replicas=2))
    await k8s.provision(spec)
    await k8s.stop(spec.instance_id)
    original = client.AppsV1Api.patch_namespaced_deployment
    conflicts: list[int] = []

    def concurrent_writer_first(self: client.AppsV1Api, name: str, namespace: str, body: Any, **kwargs: Any) -> Any:
        if not conflicts and name.startswith(spec.instance_id.replace("_", "-")):
            with plane.api() as api:
                original(
                    client.AppsV1Api(api),
                    name,
                    namespace,
                    {"metadata": {"annotations": {"ctrlplane.io/replicas": "3"}}},
                )
            try:
                return original(self, name, namespace, body, **kwargs)
            except client.ApiException as exc:
                conflicts.append(exc.status)
                raise
        return original(self, name, namespace, body, **kwargs)

    monkeypatch.setattr(client.AppsV1Api, "patch_namespaced_deployment", concurrent_writer_first)
    started = await k8s.start(spec.instance_id)
    assert conflicts == [409]
    assert started.state == "running", started.message
    assert len(started.replicas) == 3
    (deployment,) = listed(
        plane, "list_deployment_for_all_namespaces", label_selector=f"ctrlplane.instance={spec.instance_id}"
    )
    assert deployment["spec"]["replicas"] == 3


@pytest.mark.parametrize("strategy", ["rolling", "recreate", "blue_green", "canary"])
async def test_every_deploy_strategy_ends_in_the_state_it_promises_with_the_real_controllers(
    kube_control_plane: ControlPlane,
    k8s: KubernetesProvider,
    strategy: Strategy,
) -> None:
    """After a deploy: one Deployment (in place for rolling/recreate, the other slot for
    blue_green/canary), every pod of the new generation and image, ready; the real Deployment
    controller scaled the old ReplicaSet to 0 (or the garbage collector removed it with the old
    Deployment); the Service selects the instance unpinned; only the new generation's Secret is left."""
    plane = kube_control_plane
    spec = track(k8s, web(replicas=2))
    await k8s.provision(spec)
    deployed = await k8s.deploy(msgspec.structs.replace(spec, generation=2, image="ctrlplane-test/app:2"), strategy)
    assert deployed.state == "running", deployed.message
    assert [(r.generation, r.state) for r in deployed.replicas] == [(2, "running"), (2, "running")]
    selector = f"ctrlplane.instance={spec.instance_id}"
    (deployment,) = listed(plane, "list_deployment_for_all_namespaces", label_selector=selector)
    slot = "a" if strategy in ("rolling", "recreate") else "b"
    assert deployment["metadata"]["name"].endswith(f"-{slot}")
    assert deployment["spec"]["strategy"]["type"] == ("Recreate" if strategy == "recreate" else "RollingUpdate")

    def settled() -> bool:
        pods = listed(plane, "list_pod_for_all_namespaces", label_selector=selector)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        images = {p["spec"]["containers"][0]["image"] for p in live}
        sets = listed(plane, "list_replica_set_for_all_namespaces", label_selector=selector)
        running_sets = [s for s in sets if s["spec"]["replicas"]]
        return len(live) == 2 and images == {"ctrlplane-test/app:2"} and len(running_sets) == 1

    await eventually_true(settled)
    namespace = deployment["metadata"]["namespace"]
    (service,) = listed(plane, "list_namespaced_service", namespace, label_selector=selector)
    assert "ctrlplane.slot" not in service["spec"]["selector"]
    secrets = listed(plane, "list_namespaced_secret", namespace, label_selector=selector)
    assert [s["metadata"]["name"] for s in secrets] == [f"{spec.instance_id.replace('_', '-')}-g2"]


async def test_usage_without_a_metrics_server_is_unavailable_not_zero(k8s: KubernetesProvider) -> None:
    """This control plane serves no ``metrics.k8s.io`` (no metrics-server): the API server's own
    404 for the group is reported as unavailable usage, never as zeros."""
    spec = track(k8s, web())
    await k8s.provision(spec)
    with pytest.raises(UsageUnavailable, match=r"metrics\.k8s\.io") as raised:
        await k8s.usage(spec.instance_id)
    assert (raised.value.status, raised.value.code) == (503, "usage_unavailable")


async def test_logs_and_exec_where_no_kubelet_answers_are_a_provider_error_not_a_crash(k8s: KubernetesProvider) -> None:
    """kwok's node runs no kubelet: the API server cannot proxy ``pods/log`` or ``pods/exec`` to it.
    Both are reported as the provider's error (502 to API callers), naming what failed."""
    spec = track(k8s, web())
    await k8s.provision(spec)
    with pytest.raises(ProviderError, match="read logs") as logs:
        [line async for line in k8s.logs(spec.instance_id)]
    assert logs.value.status == 502
    with pytest.raises(ProviderError, match="exec") as executed:
        await k8s.exec(spec.instance_id, ["true"])
    assert executed.value.status == 502
