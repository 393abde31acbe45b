"""One-shot runs on Kubernetes (a ``Job`` per run) against the API emulator: the Job and its Secret
carry the release's image, env and files and the run's command; the pod's exit code and log come
back; a run is adopted, never started twice; removing it removes its Job, pod and Secret; and an
instance's own status never counts a run's pod."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import kubernetes_validate
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.manifests import run_job

from ctrlplane.provisioning.contract import Resources, RunProvider, RunSpec, SecretFile, WorkloadSpec
from tests.providers.kube_emulator import JOBS, SECRETS, Cluster, start_cluster
from tests.providers.test_kubernetes import KUBE, TEST_CLUSTER, make_provider
from tests.waiting import eventually


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with start_cluster() as running:
        yield running


def run_spec(instance_id: str, run_id: str, command: tuple[str, ...] = ("sh", "-c", "migrate")) -> RunSpec:
    workload = WorkloadSpec(
        instance_id=instance_id,
        tenant_id="ten_runs",
        name="web",
        image="ctrlplane-test/busybox:1",
        resources=Resources(cpu_millis=100, memory_mb=64),
        env={"DATABASE_URL": "postgres://db/app"},
        files=(SecretFile(path="/etc/app/key", content=b"k3y"),),
        release_id="rel_1",
        generation=3,
    )
    return RunSpec(run_id=run_id, workload=workload, command=command)


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    await eventually(predicate, "the cluster's run pods", timeout=timeout)


def test_the_run_job_manifest_is_valid_for_kubernetes() -> None:
    spec = run_spec("inst_1", "run_01abc")
    kubernetes_validate.validate(run_job(TEST_CLUSTER, spec, KUBE), "1.31.0", strict=True)


async def test_a_run_is_a_job_whose_exit_code_and_output_come_back(cluster: Cluster) -> None:
    provider = make_provider(cluster)
    assert isinstance(provider, RunProvider)
    instance_id, run_id = f"inst_{uuid.uuid4().hex[:8]}", f"run_{uuid.uuid4().hex[:8]}"
    spec = run_spec(instance_id, run_id)
    first = await provider.start_run(spec)
    assert first.state in ("created", "running")
    again = await provider.start_run(spec)  # a resumed worker adopts it
    assert again.run_id == run_id
    [job] = cluster.objects(JOBS).values()
    assert job["spec"]["backoffLimit"] == 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c", "migrate"] and container["image"] == "ctrlplane-test/busybox:1"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert [e["name"] for e in container["env"]] == ["DATABASE_URL"]
    assert any(s["metadata"]["name"] == job["metadata"]["name"] for s in cluster.objects(SECRETS).values())
    await until(lambda: len(cluster.job_pods()) == 1 and "containerStatuses" in cluster.job_pods()[0]["status"])
    assert (await provider.run_status(instance_id, run_id)).state == "running"
    pod = cluster.job_pods()[0]
    cluster.write_log(pod["metadata"]["name"], "applying 0042")
    cluster.crash(pod, 3)
    status = await provider.run_status(instance_id, run_id)
    assert status.state == "exited" and status.exit_code == 3
    assert [line.message async for line in provider.run_logs(instance_id, run_id)] == ["applying 0042"]
    await provider.remove_run(instance_id, run_id)
    assert cluster.objects(JOBS) == {}
    await until(lambda: cluster.job_pods() == [])
    assert not [s for s in cluster.objects(SECRETS).values() if s["metadata"]["name"] == job["metadata"]["name"]]
    assert (await provider.run_status(instance_id, run_id)).state == "missing"
    await provider.close()


async def test_an_instances_status_never_counts_a_runs_pod_and_deprovision_removes_it(cluster: Cluster) -> None:
    provider: KubernetesProvider = make_provider(cluster)
    instance_id, run_id = f"inst_{uuid.uuid4().hex[:8]}", f"run_{uuid.uuid4().hex[:8]}"
    spec = run_spec(instance_id, run_id, ("sleep", "600"))
    await provider.provision(spec.workload)
    await provider.start_run(spec)
    await until(lambda: len(cluster.job_pods()) == 1)
    status = await provider.status(instance_id)
    assert len(status.replicas) == 1 and status.replicas[0].generation == 3
    await provider.deprovision(instance_id)
    assert cluster.objects(JOBS) == {}
    await until(lambda: cluster.job_pods() == [])
    await provider.close()
