"""The Kubernetes provider against kmock's Kubernetes API emulator, with the real ``kubernetes``
client over loopback HTTP: the conformance suite, then what only Kubernetes shows (the objects
written for each call and strategy, pod conditions, API errors).

The emulator runs no controllers and no containers; ``kube_emulator.Cluster`` plays the Deployment
controller and the kubelet by patching the emulated objects. Where a conformance test assumes what
only a container runtime does, the test is overridden below and says which assumption differs.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings

from ctrlplane.provisioning.contract import Provider, Resources
from ctrlplane.provisioning.errors import ProviderError
from ctrlplane.settings import Settings
from tests.providers.conformance import SMALL, AppImage, ProviderConformance, Workloads, containers_of, new_id
from tests.providers.kube_emulator import Cluster, closed_port, configuration, start_cluster

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
        Settings(cluster_name=TEST_CLUSTER), configuration=configuration(cluster.url), kube=settings
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
            Settings(cluster_name=TEST_CLUSTER),
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
        with pytest.raises(ProviderError, match="pods/exec"):
            await provider.exec(spec.instance_id, ["echo", "hello", "world"])
        (request,) = [r for r in cluster.emulator if str(r.url.path).endswith("/exec")]
        assert str(request.url.path).endswith(f"/pods/{status.replicas[0].name}/exec")
        assert request.url.query.getall("command") == ["echo", "hello", "world"]
        assert request.params["container"] == "app"
