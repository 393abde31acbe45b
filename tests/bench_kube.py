"""``make bench``, Kubernetes section: the provider on the real control plane of
``tests/providers/kube_cluster.py`` (kwok's node runs the pods).

1. **create -> Deployment available**: ``provision`` of one single-replica instance until it
   reports running (namespace, guards, Secret, Deployment, Service; the real Deployment and
   ReplicaSet controllers, scheduler and kwok), ``CTRLPLANE_BENCH_KUBE_CREATES`` (10) times in a row.
2. **reconciler pass**: ``CTRLPLANE_BENCH_KUBE_INSTANCES`` (1,000) instances in a fresh PostgreSQL
   bench database (copies of one made through the API, as ``bench_reconcile`` does) and each
   running on the API server (provisioned from its row); then ``Reconciler.run_once`` as the
   background runs it: ``observe()`` (one list per kind) and the database half. The first pass
   records every instance's endpoints; the second is the steady state (nothing changed). The
   provider's ``observe()`` alone is timed too.

Needs the built binaries (``make kube``) and PostgreSQL. Not a test: nothing asserts a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings
from sqlalchemy import select, text

from ctrlplane.app import create_app
from ctrlplane.auth.tokens import issue_token
from ctrlplane.db import connect
from ctrlplane.instances.models import Instance
from ctrlplane.logs import configure_logging
from ctrlplane.operations.reconciler import Reconciler
from ctrlplane.operations.spec import spec_for
from ctrlplane.provisioning.contract import PortSpec, ProviderSettings, Resources, WorkloadSpec
from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.bench_api import JWT_SECRET, WEB, _clone, _pad, bench_database
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


async def _creates(plane: ControlPlane) -> list[float]:
    """Create -> available, on an installation of its own (the reconciler's would remove them as orphans)."""
    provider = KubernetesProvider(
        ProviderSettings(cluster_name=f"bench-{uuid.uuid4().hex[:6]}"),
        configuration=plane.configuration(),
        kube=KubernetesSettings(rollout_timeout_seconds=120, request_timeout_seconds=30),
    )
    creates = []
    try:
        for _ in range(CREATES):
            started = time.perf_counter()
            status = await provider.provision(_spec("ten_bench_create"))
            creates.append(time.perf_counter() - started)
            if status.state != "running":
                raise RuntimeError(f"bench kube: an instance did not run: {status.message}")
    finally:
        await provider.close()
    return creates


async def _reconcile(plane: ControlPlane, database_url: str, data_dir: str) -> dict[str, Any]:
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        jwt_secret=JWT_SECRET,
        cluster_name=f"bench-{uuid.uuid4().hex[:6]}",
        providers=("kubernetes",),
        background=False,
        log_level="warning",
    )
    configure_logging(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    provider = KubernetesProvider(
        provider_settings(settings),
        configuration=plane.configuration(),
        kube=KubernetesSettings(rollout_timeout_seconds=120, request_timeout_seconds=30),
    )
    db = connect(database_url)
    app = create_app(settings, providers=ProviderRegistry([provider]), db=db)
    try:
        creates = await _creates(plane)
        admin = issue_token(settings, subject="bench", tenant_id=None, roles=["admin"], ttl=timedelta(hours=1))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            tenant = await http.post(
                "/v1/admin/tenants",
                json={"name": "Kube", "slug": "kube", "plan": "enterprise"},
                headers={"Authorization": f"Bearer {admin}"},
            )
            tenant.raise_for_status()
            token = issue_token(
                settings, subject="bench", tenant_id=tenant.json()["id"], roles=["admin"], ttl=timedelta(hours=1)
            )
            created = await http.post(
                "/v1/instances",
                json={**WEB, "name": "template", "provider_name": "kubernetes"},
                headers={"Authorization": f"Bearer {token}"},
            )
            created.raise_for_status()
        async with db.engine.begin() as conn:
            await _clone(
                conn, "instances", "id", created.json()["id"], INSTANCES - 1,
                {"id": _pad("inst_0k", "g"), "name": "'k' || g"},
            )  # fmt: skip
            await conn.execute(text("UPDATE instances SET state = 'running', desired_state = 'running'"))
            await conn.execute(text("UPDATE operations SET state = 'succeeded'"))
            await conn.execute(text("ANALYZE"))
        async with db.read() as session:
            specs = [spec_for(i, settings=settings) for i in (await session.execute(select(Instance))).scalars()]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def provision(spec: WorkloadSpec) -> None:
            async with gate:
                status = await provider.provision(spec)
                if status.state != "running":
                    raise RuntimeError(f"bench kube: {spec.instance_id} did not run: {status.message}")

        started = time.perf_counter()
        await asyncio.gather(*(provision(spec) for spec in specs))
        filled = time.perf_counter() - started
        started = time.perf_counter()
        observation = await provider.observe()
        observed = time.perf_counter() - started
        reconciler = Reconciler(app.state.services)
        started = time.perf_counter()
        await reconciler.run_once()
        first = time.perf_counter() - started
        started = time.perf_counter()
        await reconciler.run_once()
        unchanged = time.perf_counter() - started
        async with db.read() as session:
            queued = (
                await session.execute(text("SELECT count(*) FROM operations WHERE state = 'pending'"))
            ).scalar_one()
        return {
            "kubernetes": "v1.37.2 (kwok node)",
            "create_to_available_s": {"n": CREATES, "p50": statistics.median(creates), "max": max(creates)},
            "instances": INSTANCES,
            "database": "postgresql",
            "fill_s": filled,
            "inventory_items": len(observation.items),
            "observe_s": observed,
            "first_pass_s": first,
            "pass_s": unchanged,
            "per_instance_ms": unchanged / INSTANCES * 1000,
            "operations_queued": queued,
        }
    finally:
        await provider.close()
        await db.dispose()


def run() -> dict[str, Any]:
    binaries = binaries_dir()
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        if not (binaries / name).exists():
            raise SystemExit(f"bench kube: {binaries / name} is missing; build it with make kube")
    directory = Path(tempfile.mkdtemp(prefix="ctrlplane-kube-bench-"))
    plane = ControlPlane(directory, binaries)
    try:
        plane.boot()
        with bench_database() as database_url, tempfile.TemporaryDirectory() as data_dir:
            return asyncio.run(_reconcile(plane, database_url, data_dir))
    finally:
        plane.stop_all()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    print(run())
