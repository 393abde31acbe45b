"""The Kubernetes provider against kmock's Kubernetes API emulator, with the real ``kubernetes``
client over loopback HTTP: the conformance suite, then what only Kubernetes shows (the objects
written for each call and strategy, pod conditions, API errors).

The emulator runs no controllers and no containers; ``kube_emulator.Cluster`` plays the Deployment
controller and the kubelet by patching the emulated objects. Where a conformance test assumes what
only a container runtime does, the test is overridden below and says which assumption differs.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import anyio
import kmock
import kubernetes_validate
import msgspec
import pytest
import yaml
from ctrlplane_kubernetes import KubernetesProvider, naming
from ctrlplane_kubernetes.settings import KubernetesSettings

from ctrlplane.provisioning.contract import (
    HttpRoute,
    PortSpec,
    Probe,
    Provider,
    ProviderSettings,
    RegistryAuth,
    Resources,
    RunSpec,
    SecretFile,
    Strategy,
    TenantQuota,
    WorkloadSpec,
)
from ctrlplane.provisioning.errors import ImageNotFound, ProviderError, ProviderUnavailable, WorkloadNotFound
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from tests.providers.conformance import SMALL, AppImage, ProviderConformance, Workloads, containers_of, new_id
from tests.providers.kube_emulator import (
    DEPLOYMENTS,
    NAMESPACES,
    SECRETS,
    SERVICES,
    Cluster,
    closed_port,
    configuration,
    start_cluster,
)

TEST_CLUSTER = f"test-k8s-{uuid.uuid4().hex[:8]}"
KUBE = KubernetesSettings(rollout_timeout_seconds=15, request_timeout_seconds=5)
MIB = 1024 * 1024


def quantity(raw: str) -> int:
    """``250m`` → 250, ``64Mi`` → 64: the units the provider writes."""
    match = re.fullmatch(r"(\d+)(?:m|Mi)", raw)
    assert match, raw
    return int(match.group(1))


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with start_cluster() as running:
        yield running


def make_provider(cluster: Cluster, **kube: Any) -> KubernetesProvider:
    settings = KubernetesSettings(**{**KUBE.__dict__, **kube})
    return KubernetesProvider(
        ProviderSettings(cluster_name=TEST_CLUSTER), configuration=configuration(cluster.url), kube=settings
    )


async def replica_pod(cluster: Cluster, provider: Provider, instance_id: str, replica: int) -> dict[str, Any]:
    status = await provider.status(instance_id)
    name = next(r.name for r in status.replicas if r.replica == replica)
    return cluster.pod_of(instance_id, name)


class TestKubernetesProvider(ProviderConformance):
    @pytest.fixture
    async def provider(self, cluster: Cluster) -> AsyncIterator[Provider]:
        provider = make_provider(cluster)
        yield provider
        await provider.close()

    @pytest.fixture
    async def unavailable_provider(self) -> AsyncIterator[Provider]:
        provider = KubernetesProvider(
            ProviderSettings(cluster_name=TEST_CLUSTER),
            configuration=configuration(f"http://127.0.0.1:{closed_port()}"),
            kube=KUBE,
        )
        yield provider
        await provider.close()

    @pytest.fixture
    def image(self) -> AppImage:
        return AppImage("ctrlplane-test/app:1", 8080)

    @pytest.fixture
    def missing_image(self, cluster: Cluster) -> str:
        name = f"ctrlplane-test/{new_id('absent')}:1"
        cluster.missing_images.add(name)
        return name

    @pytest.fixture
    def kube(self, cluster: Cluster) -> Cluster:
        return cluster

    # The hooks reach the emulator through the provider's own fixture chain: pytest gives the
    # test's ``cluster`` to ``provider``, and the provider's URL names it.
    clusters: dict[str, Cluster] = {}

    @pytest.fixture(autouse=True)
    def _remember(self, cluster: Cluster, provider: Provider) -> None:
        self.clusters[id(provider)] = cluster  # type: ignore[index]

    def emulated(self, provider: Provider) -> Cluster:
        return self.clusters[id(provider)]  # type: ignore[index]

    async def crash(self, provider: Provider, instance_id: str, replica: int) -> int:
        """The kubelet reports the container terminated with exit code 2."""
        cluster = self.emulated(provider)
        cluster.crash(await replica_pod(cluster, provider, instance_id, replica), 2)
        return 2

    async def remove_replica(self, provider: Provider, instance_id: str, replica: int) -> None:
        cluster = self.emulated(provider)
        pod = await replica_pod(cluster, provider, instance_id, replica)
        cluster.emulator.objects[
            kmock.resource(group="", version="v1", plural="pods"), pod["metadata"]["namespace"], pod["metadata"]["name"]
        ].delete()

    async def limits(self, provider: Provider, instance_id: str) -> list[Resources]:
        cluster = self.emulated(provider)
        status = await provider.status(instance_id)
        found = []
        for replica in status.replicas:
            limits = cluster.pod_of(instance_id, replica.name)["spec"]["containers"][0]["resources"]["limits"]
            found.append(Resources(cpu_millis=quantity(limits["cpu"]), memory_mb=quantity(limits["memory"])))
        return found

    async def write_log(self, provider: Provider, instance_id: str, message: str) -> None:
        cluster = self.emulated(provider)
        cluster.write_log((await replica_pod(cluster, provider, instance_id, 0))["metadata"]["name"], message)

    # -- conformance tests whose runtime assumption differs on Kubernetes --------------------------

    async def test_provision_runs_every_replica_with_an_endpoint(
        self, provider: Provider, workloads: Workloads, image: AppImage, cluster: Cluster
    ) -> None:
        """Differs: Kubernetes publishes no host port on 127.0.0.1. An endpoint is the pod's IP and
        the container port, so two replicas differ by address, not by port."""
        spec = workloads.spec(replicas=2)
        status = await provider.provision(spec)
        assert status.state == "running", status.message
        assert [(r.replica, r.generation, r.state) for r in status.replicas] == [(0, 1, "running"), (1, 1, "running")]
        for replica in status.replicas:
            ip = cluster.pod_of(spec.instance_id, replica.name)["status"]["podIP"]
            (endpoint,) = replica.endpoints
            assert (endpoint.host, endpoint.host_port, endpoint.url, endpoint.replica, endpoint.protocol) == (
                ip,
                image.http_port,
                f"http://{ip}:{image.http_port}",
                replica.replica,
                "tcp",
            )
            assert replica.started_at is not None and replica.exit_code is None
        assert len({e.host for e in status.endpoints}) == 2

    async def test_stop_keeps_replicas_and_reports_stopped_then_start_runs_them(
        self, provider: Provider, workloads: Workloads, cluster: Cluster
    ) -> None:
        """Differs: Kubernetes has no stopped pod. Stop scales the Deployment to 0 (its pods go) and
        keeps the wanted count on it; status reports the wanted replicas as exited."""
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        stopped = await provider.stop(spec.instance_id)
        assert stopped.state == "stopped", stopped.message
        assert [r.state for r in stopped.replicas] == ["exited", "exited"]
        assert stopped.endpoints == []
        (deployment,) = cluster.deployments(spec.instance_id)
        assert deployment["spec"]["replicas"] == 0
        assert deployment["metadata"]["annotations"]["ctrlplane.io/stopped"] == "true"
        assert deployment["metadata"]["annotations"]["ctrlplane.io/replicas"] == "2"
        assert cluster.pods(spec.instance_id) == []
        assert containers_of(await provider.inventory(), spec.instance_id) == []
        assert (await provider.status(spec.instance_id)).state == "stopped"
        started = await provider.start(spec.instance_id)
        assert started.state == "running", started.message
        assert len(started.endpoints) == 2
        (deployment,) = cluster.deployments(spec.instance_id)
        assert (
            deployment["spec"]["replicas"] == 2 and "ctrlplane.io/stopped" not in deployment["metadata"]["annotations"]
        )

    async def test_scale_applies_limits_in_place_and_matches_the_replica_count(
        self, provider: Provider, workloads: Workloads, cluster: Cluster
    ) -> None:
        """Differs: new resources change the Deployment's pod template, so Kubernetes replaces the
        pods by a rolling update instead of resizing them in place; the replica count matches."""
        spec = workloads.spec(replicas=2)
        provisioned = await provider.provision(spec)
        assert await self.limits(provider, spec.instance_id) == [SMALL, SMALL]
        bigger = Resources(cpu_millis=500, memory_mb=96)
        down = await provider.scale(workloads.again(spec, replicas=1, resources=bigger))
        assert [(r.replica, r.state) for r in down.replicas] == [(0, "running")]
        assert down.replicas[0].name not in {r.name for r in provisioned.replicas}
        assert await self.limits(provider, spec.instance_id) == [bigger]
        (deployment,) = cluster.deployments(spec.instance_id)
        assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"] == {
            "requests": {"cpu": "500m", "memory": "96Mi"},
            "limits": {"cpu": "500m", "memory": "96Mi"},
        }
        up = await provider.scale(workloads.again(spec, replicas=3, resources=bigger))
        assert up.state == "running", up.message
        assert [r.replica for r in up.replicas] == [0, 1, 2]
        assert up.replicas[0].name == down.replicas[0].name
        assert await self.limits(provider, spec.instance_id) == [bigger, bigger, bigger]

    async def test_provision_recreates_a_replica_removed_from_outside(
        self, provider: Provider, workloads: Workloads, cluster: Cluster
    ) -> None:
        """Differs: a ReplicaSet replaces a deleted pod by itself. The controller stand-in is paused
        while the pod goes, so status shows the gap before provision (and the controller) heal it."""
        spec = workloads.spec(replicas=2)
        first = await provider.provision(spec)
        cluster.paused = True
        await self.remove_replica(provider, spec.instance_id, 1)
        assert [r.replica for r in (await provider.status(spec.instance_id)).replicas] == [0]
        cluster.paused = False
        healed = await provider.provision(spec)
        assert healed.state == "running", healed.message
        assert [r.replica for r in healed.replicas] == [0, 1]
        assert healed.replicas[0].started_at == first.replicas[0].started_at

    async def test_exec_returns_the_exit_code_and_output(
        self, provider: Provider, workloads: Workloads, cluster: Cluster
    ) -> None:
        """Not testable here: kmock answers no websocket upgrade, so no command runs. What is
        checked: exec asks the first running pod's ``pods/exec`` for the command, and a failed
        upgrade is a ProviderError, not an unreachable API."""
        spec = workloads.spec()
        status = await provider.provision(spec)
        with pytest.raises(ProviderError, match="pods/exec") as refused:
            await provider.exec(spec.instance_id, ["echo", "hello", "world"])
        assert not isinstance(refused.value, ProviderUnavailable)
        (request,) = [r for r in cluster.emulator if str(r.url.path).endswith("/exec")]
        assert str(request.url.path).endswith(f"/pods/{status.replicas[0].name}/exec")
        assert request.url.query.getall("command") == ["echo", "hello", "world"]
        assert request.params["container"] == "app"

    async def test_exec_runs_in_the_generation_and_replica_named(
        self, provider: Provider, workloads: Workloads, cluster: Cluster
    ) -> None:
        """Not testable here as in the suite (no command runs: kmock answers no websocket upgrade).
        What is checked: each choice of generation and replica asks that pod's ``pods/exec``, and a
        choice no running pod matches is WorkloadNotFound before any request."""
        old = workloads.spec()
        new = workloads.again(old, generation=2, replicas=2)
        first = await provider.provision(old)
        second = await provider.provision(new)
        names = {(r.generation, r.replica): r.name for r in (*first.replicas, *second.replicas)}

        async def target(**which: int) -> str:
            before = len([r for r in cluster.emulator if str(r.url.path).endswith("/exec")])
            with pytest.raises(ProviderError, match="pods/exec"):
                await provider.exec(old.instance_id, ["env"], **which)
            requests = [r for r in cluster.emulator if str(r.url.path).endswith("/exec")]
            assert len(requests) == before + 1
            return str(requests[-1].url.path).rsplit("/", 2)[-2]

        assert await target() == names[(2, 0)]
        assert await target(generation=1) == names[(1, 0)]
        assert await target(generation=2, replica=1) == names[(2, 1)]
        with pytest.raises(WorkloadNotFound):
            await provider.exec(old.instance_id, ["true"], generation=1, replica=1)
        with pytest.raises(WorkloadNotFound):
            await provider.exec(old.instance_id, ["true"], generation=3)

    async def test_replica_usage_reports_each_running_replica_against_its_limit(
        self, provider: Provider, workloads: Workloads, cluster: Cluster
    ) -> None:
        """As in the suite, except that a stopped instance has no pods (its Deployment is at 0
        replicas), so it lists no replica rather than replicas without usage."""
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        replicas = await provider.replica_usage(spec.instance_id)
        assert [(r.generation, r.replica, r.state) for r in replicas] == [(1, 0, "running"), (1, 1, "running")]
        for replica in replicas:
            assert replica.usage is not None
            assert replica.usage.memory_limit_bytes == SMALL.memory_mb * 1024 * 1024
            assert replica.usage.memory_used_bytes > 0
        await provider.stop(spec.instance_id)
        assert await provider.replica_usage(spec.instance_id) == []
        with pytest.raises(WorkloadNotFound):
            await provider.replica_usage(workloads.spec().instance_id)


# -- Kubernetes only: the objects each call writes -------------------------------------------------

WEB = {
    "name": "web",
    "image": "ctrlplane-test/app:1",
    "resources": SMALL,
    "ports": (PortSpec(8080),),
    "env": {"GREETING": "hello"},
}


def web(**overrides: Any) -> WorkloadSpec:
    return WorkloadSpec(**{"instance_id": new_id("inst"), "tenant_id": new_id("ten"), **WEB, **overrides})


def again(spec: WorkloadSpec, **changes: Any) -> WorkloadSpec:
    return msgspec.structs.replace(spec, **changes)


@pytest.fixture
async def k8s(cluster: Cluster) -> AsyncIterator[KubernetesProvider]:
    provider = make_provider(cluster, ingress_class="nginx", cert_issuer="letsencrypt")
    yield provider
    await provider.close()


def names(objects: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects)


def of(cluster: Cluster, plural: str, namespace: str, group: str = "") -> dict[str, dict[str, Any]]:
    return {name: obj for (ns, name), obj in cluster.kinds(plural, group).items() if ns == namespace}


def dash(value: str) -> str:
    return value.replace("_", "-")


async def test_provision_writes_the_tenant_namespace_its_guards_and_the_instance_objects(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    spec = web(
        replicas=2,
        files=(SecretFile("/etc/app/token", b"t0ken"),),
        tenant_quota=TenantQuota(max_instances=3, max_cpu_millis=2000, max_memory_mb=1024),
        probes=(Probe(kind="http", path="/healthz"),),
        routes=(HttpRoute(host="shop.example.com"),),
    )
    status = await k8s.provision(spec)
    assert status.state == "running", status.message
    namespace = f"{TEST_CLUSTER}-{dash(spec.tenant_id)}"
    (ns,) = [o for (_, name), o in cluster.objects(NAMESPACES).items() if name == namespace]
    assert ns["metadata"]["labels"] == {
        "ctrlplane.managed": "true",
        "ctrlplane.cluster": TEST_CLUSTER,
        "ctrlplane.tenant": spec.tenant_id,
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
    }
    assert of(cluster, "resourcequotas", namespace)["ctrlplane-tenant-quota"]["spec"]["hard"]["limits.cpu"] == "4000m"
    assert of(cluster, "limitranges", namespace)["ctrlplane-tenant-limits"]["spec"]["limits"][0]["max"] == {
        "cpu": "2000m",
        "memory": "1024Mi",
    }
    assert list(of(cluster, "networkpolicies", namespace, "networking.k8s.io")) == ["ctrlplane-tenant-isolation"]
    instance = dash(spec.instance_id)
    assert list(of(cluster, "deployments", namespace, "apps")) == [f"{instance}-a"]
    assert list(of(cluster, "secrets", namespace)) == [f"{instance}-g1"]
    assert list(of(cluster, "services", namespace)) == [instance]
    (ingress,) = of(cluster, "ingresses", namespace, "networking.k8s.io").values()
    assert ingress["spec"]["tls"] == [{"hosts": ["shop.example.com"], "secretName": f"{instance}-tls"}]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    pods = cluster.pods(spec.instance_id)
    assert len(pods) == 2
    assert pods[0]["spec"]["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    # What the provider wrote, as the emulator holds it now, is valid Kubernetes.
    for plural, group in [
        ("namespaces", ""),
        ("resourcequotas", ""),
        ("limitranges", ""),
        ("secrets", ""),
        ("services", ""),
        ("deployments", "apps"),
        ("networkpolicies", "networking.k8s.io"),
        ("ingresses", "networking.k8s.io"),
    ]:
        for obj in cluster.kinds(plural, group).values():
            kubernetes_validate.validate(obj, "1.34.0", strict=True)


async def test_configure_applies_quota_probes_and_ingress_to_what_runs_and_keeps_it_stopped(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    spec = web(replicas=2)
    await k8s.provision(spec)
    namespace = f"{TEST_CLUSTER}-{dash(spec.tenant_id)}"
    before = sorted(p["metadata"]["name"] for p in cluster.pods(spec.instance_id))
    unchanged = await k8s.configure(spec)
    assert unchanged.state == "running"
    # the same template: nothing rolled
    assert sorted(p["metadata"]["name"] for p in cluster.pods(spec.instance_id)) == before
    assert of(cluster, "resourcequotas", namespace) == {}

    await k8s.stop(spec.instance_id)
    configured = again(
        spec,
        tenant_quota=TenantQuota(max_instances=2, max_cpu_millis=1000, max_memory_mb=512),
        probes=(Probe(kind="http", path="/ready", use="readiness"), Probe(kind="tcp", use="liveness")),
        routes=(HttpRoute(host="shop.example.com", path="/api"),),
    )
    status = await k8s.configure(configured)
    assert status.state == "stopped"
    (deployment,) = cluster.deployments(spec.instance_id)
    assert deployment["spec"]["replicas"] == 0
    assert deployment["metadata"]["annotations"]["ctrlplane.io/stopped"] == "true"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}
    assert container["livenessProbe"]["tcpSocket"] == {"port": 8080}
    assert of(cluster, "resourcequotas", namespace)["ctrlplane-tenant-quota"]["spec"]["hard"]["limits.cpu"] == "2000m"
    (ingress,) = of(cluster, "ingresses", namespace, "networking.k8s.io").values()
    assert [(r["host"], r["http"]["paths"][0]["path"]) for r in ingress["spec"]["rules"]] == [
        ("shop.example.com", "/api")
    ]
    started = await k8s.start(spec.instance_id)
    assert started.state == "running"
    assert len(cluster.pods(spec.instance_id)) == 2

    # routes gone: so is the Ingress; probes gone: back to the default readiness probe
    await k8s.configure(again(configured, routes=(), probes=()))
    assert of(cluster, "ingresses", namespace, "networking.k8s.io") == {}
    (container,) = cluster.deployments(spec.instance_id)[0]["spec"]["template"]["spec"]["containers"]
    assert "livenessProbe" not in container and container["readinessProbe"]["tcpSocket"] == {"port": 8080}
    for plural, group in [("deployments", "apps"), ("resourcequotas", ""), ("limitranges", "")]:
        for obj in of(cluster, plural, namespace, group).values():
            kubernetes_validate.validate(obj, "1.34.0", strict=True)


async def test_configure_without_a_deployment_creates_nothing(cluster: Cluster, k8s: KubernetesProvider) -> None:
    spec = web(tenant_quota=TenantQuota(max_instances=2, max_cpu_millis=1000, max_memory_mb=512))
    status = await k8s.configure(spec)
    assert status.state == "missing"
    assert cluster.objects(NAMESPACES) == {} and cluster.deployments() == []


@pytest.mark.parametrize(("strategy", "update"), [("rolling", "RollingUpdate"), ("recreate", "Recreate")])
async def test_rolling_and_recreate_deploys_patch_the_one_deployment_in_place(
    cluster: Cluster, k8s: KubernetesProvider, strategy: Strategy, update: str
) -> None:
    spec = web(replicas=2)
    await k8s.provision(spec)
    (deployment,) = cluster.deployments(spec.instance_id)
    name, namespace = deployment["metadata"]["name"], deployment["metadata"]["namespace"]
    deployed = await k8s.deploy(again(spec, generation=2, image="ctrlplane-test/app:2"), strategy)
    assert deployed.state == "running", deployed.message
    (after,) = cluster.deployments(spec.instance_id)
    assert after["metadata"]["name"] == name
    assert after["spec"]["strategy"]["type"] == update
    images = [
        v["spec"]["template"]["spec"]["containers"][0]["image"] for v in cluster.history(DEPLOYMENTS, namespace, name)
    ]
    assert images[0] == "ctrlplane-test/app:1" and images[-1] == "ctrlplane-test/app:2"
    assert {p["spec"]["containers"][0]["image"] for p in cluster.pods(spec.instance_id)} == {"ctrlplane-test/app:2"}
    assert list(of(cluster, "secrets", namespace)) == [f"{dash(spec.instance_id)}-g2"]


async def test_blue_green_runs_a_second_deployment_and_switches_the_service_selector(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    spec = web(replicas=2)
    await k8s.provision(spec)
    deployed = await k8s.deploy(again(spec, generation=2, image="ctrlplane-test/app:2"), "blue_green")
    assert [(r.generation, r.replica) for r in deployed.replicas] == [(2, 0), (2, 1)]
    (deployment,) = cluster.deployments(spec.instance_id)
    assert deployment["metadata"]["name"].endswith("-b")
    namespace = deployment["metadata"]["namespace"]
    service = dash(spec.instance_id)
    selectors = [v["spec"]["selector"].get("ctrlplane.slot") for v in cluster.history(SERVICES, namespace, service)]
    # Created selecting every slot, pinned to the old (blue) set, switched to green, unpinned.
    assert [s for i, s in enumerate(selectors) if i == 0 or s != selectors[i - 1]] == [None, "a", "b", None]
    assert cluster.emulator.objects[DEPLOYMENTS, namespace, f"{service}-a"].deleted


async def test_canary_starts_one_new_replica_beside_the_old_set_then_the_rest(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    spec = web(replicas=3)
    await k8s.provision(spec)
    await k8s.deploy(again(spec, generation=2, image="ctrlplane-test/app:2"), "canary")
    (deployment,) = cluster.deployments(spec.instance_id)
    name, namespace = deployment["metadata"]["name"], deployment["metadata"]["namespace"]
    replicas = [v["spec"]["replicas"] for v in cluster.history(DEPLOYMENTS, namespace, name) if "spec" in v]
    assert replicas[0] == 1 and replicas[-1] == 3
    # the canary step wants the one pod it runs, so its settle ends when that pod runs (it used to
    # want all 3 and waited out the rollout timeout on every canary deploy)
    wanted = [v["metadata"]["annotations"].get(naming.WANTED) for v in cluster.history(DEPLOYMENTS, namespace, name)]
    assert wanted[0] == "1" and wanted[-1] == "3"
    service = dash(spec.instance_id)
    assert all("ctrlplane.slot" not in v["spec"]["selector"] for v in cluster.history(SERVICES, namespace, service))


async def test_the_deploy_engines_rolling_steps_retire_the_named_old_replicas(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    """What ctrlplane's deploy engine does for ``rolling``: provision the new generation one replica
    more at a time, and retire old replica i after new replica i passed its gate."""
    spec = web(replicas=2)
    first = await k8s.provision(spec)
    new = again(spec, generation=2)
    await k8s.provision(again(new, replicas=1))
    await k8s.remove_generation(spec.instance_id, 1, (0,))
    status = await k8s.status(spec.instance_id)
    assert [(r.generation, r.replica, r.name) for r in status.replicas] == [
        (1, 1, first.replicas[1].name),
        (2, 0, status.replicas[1].name),
    ]
    old = next(d for d in cluster.deployments(spec.instance_id) if d["metadata"]["name"].endswith("-a"))
    assert old["spec"]["replicas"] == 1
    assert old["metadata"]["annotations"]["ctrlplane.io/retired"] == "0"
    await k8s.provision(new)
    await k8s.remove_generation(spec.instance_id, 1, (1,))
    status = await k8s.status(spec.instance_id)
    assert [(r.generation, r.replica) for r in status.replicas] == [(2, 0), (2, 1)]
    assert [d["metadata"]["name"][-1] for d in cluster.deployments(spec.instance_id)] == ["b"]
    # Going back (the engine re-provisions the old generation) brings every old replica back.
    await k8s.provision(spec)
    await k8s.remove_generation(spec.instance_id, 2)
    back = await k8s.status(spec.instance_id)
    assert [(r.generation, r.replica, r.state) for r in back.replicas] == [(1, 0, "running"), (1, 1, "running")]


# -- Kubernetes only: status from pod conditions ---------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "message", "last", "expected"),
    [
        ("CrashLoopBackOff", "back-off 40s", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "OOM-killed"),
        ("CrashLoopBackOff", "back-off 10s", {"terminated": {"exitCode": 3, "reason": "Error"}}, "CrashLoopBackOff"),
        ("ImagePullBackOff", 'Back-off pulling image "ctrlplane-test/app:1"', None, "ImagePullBackOff"),
        ("CreateContainerConfigError", "container has runAsNonRoot and image will run as root", None, "runAsNonRoot"),
    ],
)
async def test_pod_conditions_make_the_instance_failed_with_the_reason(
    cluster: Cluster, k8s: KubernetesProvider, waiting: str, message: str, last: dict[str, Any] | None, expected: str
) -> None:
    spec = web()
    status = await k8s.provision(spec)
    cluster.set_waiting(cluster.pod_of(spec.instance_id, status.replicas[0].name), waiting, message, last)
    failed = await k8s.status(spec.instance_id)
    assert failed.state == "failed"
    assert expected in failed.message
    (replica,) = failed.replicas
    assert replica.state in ("exited", "dead") and replica.endpoints == ()
    if last and last["terminated"]["reason"] == "OOMKilled":
        assert (replica.oom_killed, replica.exit_code) == (True, 137)


# -- Kubernetes only: API errors -------------------------------------------------------------------


async def test_a_retried_create_adopts_objects_an_earlier_attempt_left(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    """An attempt that died after creating the namespace, Secret and Deployment (409 on each create
    now) is finished by patching them, not by failing or duplicating."""
    spec = web()
    stale = again(spec, image="ctrlplane-test/app:0", env={"OLD": "1"})
    from ctrlplane_kubernetes import manifests

    namespace = f"{TEST_CLUSTER}-{dash(spec.tenant_id)}"
    cluster.emulator.objects[NAMESPACES, None, namespace] = manifests.namespace(TEST_CLUSTER, spec.tenant_id)
    secret = manifests.secret(TEST_CLUSTER, stale)
    cluster.emulator.objects[SECRETS, namespace, secret["metadata"]["name"]] = {
        **secret,
        "metadata": {**secret["metadata"], "namespace": namespace},
    }
    deployment = manifests.deployment(TEST_CLUSTER, stale, "a", k8s.kube, replicas=1)
    name = deployment["metadata"]["name"]
    cluster.emulator.objects[DEPLOYMENTS, namespace, name] = {
        **deployment,
        "metadata": {**deployment["metadata"], "namespace": namespace},
    }
    status = await k8s.provision(spec)
    assert status.state == "running", status.message
    (adopted,) = cluster.deployments(spec.instance_id)
    assert adopted["metadata"]["name"] == name
    assert adopted["spec"]["template"]["spec"]["containers"][0]["image"] == spec.image
    assert set(of(cluster, "secrets", namespace)[secret["metadata"]["name"]]["data"]) == {"env.GREETING"}
    conflicts = [r for r in cluster.emulator if r.method == "POST" and "/deployments" in str(r.url.path)]
    assert len(conflicts) == 1  # one create answered 409, then a patch


async def test_registry_credentials_become_a_dockerconfigjson_secret_named_in_image_pull_secrets(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    auth = RegistryAuth(registry="registry.example.com:5000", username="robot", password="pull-s3cret")
    spec = web(image="registry.example.com:5000/team/web:1", registry_auth=auth)
    await k8s.provision(spec)
    namespace = f"{TEST_CLUSTER}-{dash(spec.tenant_id)}"
    secrets = of(cluster, "secrets", namespace)
    pull_name = f"{dash(spec.instance_id)}-g1-pull"
    pull = secrets[pull_name]
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(pull["data"][".dockerconfigjson"]))
    login = base64.b64encode(b"robot:pull-s3cret").decode()
    assert config == {
        "auths": {"registry.example.com:5000": {"username": "robot", "password": "pull-s3cret", "auth": login}}
    }
    (deployment,) = cluster.deployments(spec.instance_id)
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": pull_name}]
    # the next generation without credentials pulls without them, and the old pull Secret goes with
    # its generation
    await k8s.deploy(again(spec, image="ctrlplane-test/app:2", registry_auth=None, generation=2), "recreate")
    (deployment,) = cluster.deployments(spec.instance_id)
    assert "imagePullSecrets" not in deployment["spec"]["template"]["spec"]
    assert pull_name not in of(cluster, "secrets", namespace)


async def test_removing_what_is_already_gone_is_not_an_error(cluster: Cluster, k8s: KubernetesProvider) -> None:
    await k8s.deprovision(new_id("inst"))
    await k8s.remove_generation(new_id("inst"), 1)
    spec = web()
    await k8s.provision(spec)
    namespace = cluster.deployments(spec.instance_id)[0]["metadata"]["namespace"]
    cluster.emulator.objects[SERVICES, namespace, dash(spec.instance_id)].delete()
    await k8s.remove_generation(spec.instance_id, 7)
    await k8s.deprovision(spec.instance_id)
    assert (await k8s.status(spec.instance_id)).state == "missing"
    assert cluster.deployments(spec.instance_id) == [] == cluster.pods(spec.instance_id)


async def test_forbidden_is_a_provider_error_that_names_rbac(cluster: Cluster, k8s: KubernetesProvider) -> None:
    cluster.emulator["get /apis/apps/v1/deployments"] << kmock.KubernetesError(
        status=403,
        reason="Forbidden",
        message='deployments.apps is forbidden: User "system:serviceaccount:ctrlplane:ctrlplane" cannot list',
    )
    with pytest.raises(ProviderError) as raised:
        await k8s.status(new_id("inst"))
    assert not isinstance(raised.value, ProviderUnavailable)
    assert "forbidden" in raised.value.message and "RBAC" in raised.value.message
    assert raised.value.details["status"] == 403
    assert (await k8s.ping()).available


async def test_an_api_server_answering_503_is_unavailable(cluster: Cluster, k8s: KubernetesProvider) -> None:
    cluster.emulator["get /apis/apps/v1/deployments"] << kmock.KubernetesError(status=503, reason="ServiceUnavailable")
    with pytest.raises(ProviderUnavailable, match="Kubernetes API unreachable"):
        await k8s.status(new_id("inst"))


async def test_an_api_server_that_went_away_is_unavailable(k8s: KubernetesProvider, cluster: Cluster) -> None:
    spec = web()
    await k8s.provision(spec)
    gone = KubernetesProvider(
        ProviderSettings(cluster_name=TEST_CLUSTER),
        configuration=configuration(f"http://127.0.0.1:{closed_port()}"),
        kube=KUBE,
    )
    health = await gone.ping()
    assert not health.available and "unreachable" in health.message
    for call in (gone.status, gone.stop, gone.deprovision):
        with pytest.raises(ProviderUnavailable):
            await call(spec.instance_id)
    await gone.close()


# -- Kubernetes only: usage, logs, inventory --------------------------------------------------------


async def test_usage_comes_from_metrics_k8s_io(cluster: Cluster, k8s: KubernetesProvider) -> None:
    spec = web(replicas=2)
    await k8s.provision(spec)
    usage = await k8s.usage(spec.instance_id)
    # Each emulated PodMetrics reports 5,000,000n CPU (5 millicores) and 12Mi.
    assert usage.cpu_percent == pytest.approx(1.0)
    assert (usage.memory_used_bytes, usage.memory_limit_bytes) == (2 * 12 * MIB, 2 * 64 * MIB)


async def test_logs_merge_every_pods_lines_in_time_order(cluster: Cluster, k8s: KubernetesProvider) -> None:
    spec = web(replicas=2)
    status = await k8s.provision(spec)
    first, second = (r.name for r in status.replicas)
    for pod, message in [(first, "a1"), (second, "b1"), (first, "a2"), (second, "b2")]:
        cluster.write_log(pod, message)
        await anyio.sleep(0.002)
    lines = [(line.replica, line.message) async for line in k8s.logs(spec.instance_id)]
    assert lines == [(0, "a1"), (1, "b1"), (0, "a2"), (1, "b2")]
    assert [line.message async for line in k8s.logs(spec.instance_id, tail=1)] == ["b2"]
    log_requests = [r for r in cluster.emulator if str(r.url.path).endswith("/log")]
    assert {r.params["container"] for r in log_requests} == {"app"}


async def test_inventory_selects_by_label_and_reports_only_this_clusters_objects(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    spec = web(replicas=2)
    await k8s.provision(spec)
    namespace = cluster.deployments(spec.instance_id)[0]["metadata"]["namespace"]
    labels = {"ctrlplane.managed": "true", "ctrlplane.cluster": "other", "ctrlplane.instance": spec.instance_id}
    cluster.emulator.objects[DEPLOYMENTS, namespace, "not-ours"] = {
        "metadata": {"name": "not-ours", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "x", "image": "x"}]}},
        },
    }
    items = await k8s.inventory()
    mine = sorted((i.kind, i.replica) for i in items if i.instance_id == spec.instance_id)
    assert mine == [("container", 0), ("container", 1), ("deployment", None), ("secret", None), ("service", None)]
    assert next(i for i in items if i.kind == "network" and i.tenant_id == spec.tenant_id).name == namespace
    assert "not-ours" not in {i.name for i in items}
    lists = [r for r in cluster.emulator if r.method == "GET" and "labelSelector" in r.params]
    assert lists and all(f"ctrlplane.cluster={TEST_CLUSTER}" in r.params["labelSelector"] for r in lists)


# -- the documented RBAC ---------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md"


def documented_rbac() -> list[dict[str, Any]]:
    text = DOCS.read_text()
    section = text[text.index("## RBAC") :]
    block = section[section.index("```yaml") + len("```yaml") : section.index("```", section.index("```yaml") + 7)]
    return [doc for doc in yaml.safe_load_all(block) if doc]


def verb(request: Any) -> str:
    method = str(request.method).upper().rsplit(".", 1)[-1]
    if method == "GET":
        if request.params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}[method]


async def test_the_documented_rbac_is_valid_and_allows_every_request_of_a_whole_lifecycle(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    documents = documented_rbac()
    assert [d["kind"] for d in documents] == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    for document in documents:
        kubernetes_validate.validate(document, "1.34.0", strict=True)
    (role,) = [d for d in documents if d["kind"] == "ClusterRole"]
    allowed = {
        (group, resource, action)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for action in rule["verbs"]
    }
    spec = web(
        replicas=2,
        tenant_quota=TenantQuota(max_instances=3, max_cpu_millis=2000, max_memory_mb=1024),
        routes=(HttpRoute(host="shop.example.com"),),
        files=(SecretFile("/etc/app/token", b"t0ken"),),
    )
    status = await k8s.provision(spec)
    cluster.write_log(status.replicas[0].name, "hello")
    assert [line.message async for line in k8s.logs(spec.instance_id)] == ["hello"]
    await k8s.usage(spec.instance_id)
    with pytest.raises(ProviderError):
        await k8s.exec(spec.instance_id, ["true"])
    await k8s.deploy(again(spec, generation=2), "blue_green")
    await k8s.deploy(again(spec, generation=3), "rolling")
    await k8s.stop(spec.instance_id)
    await k8s.start(spec.instance_id)
    await k8s.restart(spec.instance_id)
    await k8s.restart(spec.instance_id, (1,))
    await k8s.scale(again(spec, generation=3, replicas=1))
    await k8s.configure(again(spec, generation=3, replicas=1, routes=(), probes=(Probe(kind="tcp"),)))
    await k8s.provision(again(spec, generation=4, replicas=1))
    await k8s.remove_generation(spec.instance_id, 3, (0,))
    await k8s.inventory()
    run = RunSpec(run_id="run_rbac", workload=again(spec, generation=4, replicas=1), command=("true",))
    await k8s.start_run(run)
    await k8s.run_status(spec.instance_id, run.run_id)
    assert [line async for line in k8s.run_logs(spec.instance_id, run.run_id)] == []
    await k8s.remove_run(spec.instance_id, run.run_id)
    await k8s.deprovision(spec.instance_id)
    seen = set()
    for request in cluster.emulator:
        if request.resource is None or request.resource.plural is None:
            continue  # discovery and /version: allowed to every authenticated user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        seen.add((request.resource.group, resource, verb(request)))
    assert seen - allowed == set()
    assert ("", "pods/log", "get") in seen and ("metrics.k8s.io", "pods", "list") in seen
    assert ("", "pods/exec", "get") in seen and ("apps", "deployments", "patch") in seen


# -- loading: the entry point and KUBECONFIG -------------------------------------------------------


async def test_the_entry_point_loads_the_provider_configured_from_kubeconfig(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": cluster.url.rstrip("/")}}],
                "users": [{"name": "ctrlplane", "user": {"token": "not-checked-by-the-emulator"}}],
                "contexts": [{"name": "test", "context": {"cluster": "emulator", "user": "ctrlplane"}}],
                "current-context": "test",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    registry = ProviderRegistry.from_entry_points(Settings(providers=("kubernetes",), cluster_name=TEST_CLUSTER))
    provider = registry.get("kubernetes")
    assert isinstance(provider, KubernetesProvider)
    health = await provider.ping()
    assert health.available, health.message
    assert "v1.34.0-kmock" in health.message
    (request,) = [r for r in cluster.emulator if str(r.url.path).startswith("/version")]
    assert request.headers["Authorization"] == "Bearer not-checked-by-the-emulator"
    await registry.close()


async def test_without_any_configuration_the_provider_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    provider = KubernetesProvider(ProviderSettings(cluster_name=TEST_CLUSTER), kube=KUBE)
    health = await provider.ping()
    assert not health.available and "no Kubernetes configuration" in health.message
    with pytest.raises(ProviderUnavailable):
        await provider.status(new_id("inst"))


async def test_a_blue_green_deploy_whose_image_cannot_be_pulled_leaves_the_old_set_serving(
    cluster: Cluster, k8s: KubernetesProvider
) -> None:
    cluster.missing_images.add("ctrlplane-test/app:404")
    spec = web(replicas=2)
    first = await k8s.provision(spec)
    with pytest.raises(ImageNotFound, match="app:404"):
        await k8s.deploy(again(spec, generation=2, image="ctrlplane-test/app:404"), "blue_green")
    (deployment,) = cluster.deployments(spec.instance_id)
    assert deployment["metadata"]["name"].endswith("-a")
    namespace = deployment["metadata"]["namespace"]
    (service,) = of(cluster, "services", namespace).values()
    assert "ctrlplane.slot" not in service["spec"]["selector"]
    status = await k8s.status(spec.instance_id)
    assert [r.name for r in status.replicas] == [r.name for r in first.replicas]
    assert status.state == "running"
