"""``make bench``, Kubernetes section: the provider on the real control plane of
``tests/providers/kube_cluster.py`` (kwok's node runs the pods).

1. **create -> Deployment available**: ``provision`` of one single-replica instance until it
   reports running (namespace, guards, Secret, Deployment, Service; the real Deployment and
   ReplicaSet controllers, scheduler and kwok), ``CTRLPLANE_BENCH_KUBE_CREATES`` (10) times in a row.
2. **reconciler pass, provider side**: what one reconciler pass asks a provider for, with
   ``CTRLPLANE_BENCH_KUBE_INSTANCES`` (1,000) instances running on the API server: one ``inventory()``
   and one ``status(id)`` per instance, in order, as ``operations/reconciler.py`` does. The database
   half of a pass is ``bench_reconcile`` (with the in-memory provider).

Needs the built binaries (``make kube``). Not a test: nothing asserts a time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings

from ctrlplane.provisioning.contract import PortSpec, Resources, WorkloadSpec
from ctrlplane.settings import Settings
from tests.providers.kube_cluster import ControlPlane, binaries_dir

CREATES = int(os.environ.get("CTRLPLANE_BENCH_KUBE_CREATES", "10"))
INSTANCES = int(os.environ.get("CTRLPLANE_BENCH_KUBE_INSTANCES", "1000"))
CONCURRENCY = 16


def _spec(tenant_id: str) -> WorkloadSpec:
    return WorkloadSpec(
        instance_id=f"inst_b{uuid.uuid4().hex[:16]}",
        tenant_id=tenant_id,
        name="bench",
        image="ctrlplane-bench/app:1",
        resources=Resources(cpu_millis=10, memory_mb=16),
        ports=(PortSpec(8080),),
    )


async def _measure(plane: ControlPlane) -> dict[str, Any]:
    provider = KubernetesProvider(
        Settings(cluster_name=f"bench-{uuid.uuid4().hex[:6]}"),
        configuration=plane.configuration(),
        kube=KubernetesSettings(rollout_timeout_seconds=120, request_timeout_seconds=30),
    )
    try:
        creates = []
        for _ in range(CREATES):
            started = time.perf_counter()
            status = await provider.provision(_spec("ten_bench_create"))
            creates.append(time.perf_counter() - started)
            if status.state != "running":
                raise RuntimeError(f"bench kube: an instance did not run: {status.message}")
        tenants = [f"ten_bench_{n}" for n in range(10)]
        specs = [_spec(tenants[n % len(tenants)]) for n in range(INSTANCES)]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def provision(spec: WorkloadSpec) -> None:
            async with gate:
                await provider.provision(spec)

        started = time.perf_counter()
        await asyncio.gather(*(provision(spec) for spec in specs))
        filled = time.perf_counter() - started
        started = time.perf_counter()
        inventory = await provider.inventory()
        listed = time.perf_counter() - started
        for spec in specs:
            await provider.status(spec.instance_id)
        passed = time.perf_counter() - started
        return {
            "kubernetes": "v1.37.2 (kwok node)",
            "create_to_available_s": {
                "n": CREATES,
                "p50": statistics.median(creates),
                "max": max(creates),
            },
            "instances": INSTANCES,
            "fill_s": filled,
            "inventory_items": len(inventory),
            "inventory_s": listed,
            "pass_s": passed,
            "per_instance_ms": (passed - listed) / INSTANCES * 1000,
        }
    finally:
        await provider.close()


def run() -> dict[str, Any]:
    binaries = binaries_dir()
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        if not (binaries / name).exists():
            raise SystemExit(f"bench kube: {binaries / name} is missing; build it with make kube")
    directory = Path(tempfile.mkdtemp(prefix="ctrlplane-kube-bench-"))
    plane = ControlPlane(directory, binaries)
    try:
        plane.boot()
        return asyncio.run(_measure(plane))
    finally:
        plane.stop_all()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    print(run())
