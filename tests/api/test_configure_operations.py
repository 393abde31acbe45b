"""Which changes queue a ``configure`` operation (see ``instances.service.reconfigure``): only
instances on a runtime that serves quotas, probes and routes itself get one. The Kubernetes side
is ``test_instances_kubernetes_config.py``."""

from __future__ import annotations

from sqlalchemy import select

from ctrlplane.db import Database
from ctrlplane.operations.models import Operation
from tests.api.test_instances import create, tenant_token
from tests.conftest import Api

QUOTA = {
    "max_instances": 7,
    "max_cpu_millis": 3000,
    "max_memory_mb": 4096,
    "max_domains": 5,
    "max_routes": 5,
    "max_secrets": 9,
}


async def test_changes_on_a_runtime_without_configure_queue_no_operation(api: Api, db: Database) -> None:
    """The test provider, like Docker, has no ``configure``: a new check, route or quota queues
    nothing for its instances (Caddy and the health scheduler read the database themselves)."""
    tenant_id, token = await tenant_token(api)
    instance = await create(api, token, ports=[{"container_port": 8080}])
    check = await api.client.post(
        f"/v1/instances/{instance['id']}/health/checks",
        json={"name": "ready", "type": "tcp", "target": "localhost:8080"},
        headers=token,
    )
    assert check.status_code == 201, check.text
    route = await api.client.post(
        f"/v1/instances/{instance['id']}/routes", json={"path": "/api", "port": 8080}, headers=token
    )
    assert route.status_code == 201, route.text
    quota = await api.client.put(f"/v1/admin/tenants/{tenant_id}/quota", json=QUOTA, headers=api.admin_headers)
    assert quota.status_code == 200, quota.text
    async with db.read() as session:
        kinds = (await session.execute(select(Operation.kind).where(Operation.instance_id == instance["id"]))).scalars()
        assert "configure" not in set(kinds)
