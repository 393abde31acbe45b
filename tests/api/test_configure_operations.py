"""Which changes queue a ``configure`` operation (see ``instances.service.reconfigure``): only
instances on a runtime that serves quotas, probes and routes itself get one. The Kubernetes side
is ``test_instances_kubernetes_config.py``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ctrlplane.db import Database
from ctrlplane.errors import InvalidInput
from ctrlplane.operations.models import Operation
from ctrlplane.provisioning.contract import ConfigurableProvider, WorkloadSpec, WorkloadStatus
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.conftest import Api
from tests.fakes import FakeProvider
from tests.waiting import eventually

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


async def test_a_configure_that_fails_for_good_leaves_the_instance_running(live: Api, fake: FakeProvider) -> None:
    """On a runtime with ``configure`` (here the fake, given one that refuses), a configure that
    fails permanently says so on the instance and in an event, and does not mark a workload that
    it never touched ``failed``."""

    async def refuse(spec: WorkloadSpec) -> WorkloadStatus:
        raise InvalidInput("the runtime refused the ingress")

    _, token = await tenant_token(live)
    created = await create(live, token, ports=[{"container_port": 8080}])
    instance = await wait_for(live, created["id"], token, state("running"))
    fake.configure = refuse  # type: ignore[attr-defined]
    assert isinstance(fake, ConfigurableProvider)
    route = await live.client.post(
        f"/v1/instances/{instance['id']}/routes", json={"path": "/api", "port": 8080}, headers=token
    )
    assert route.status_code == 201, route.text

    events = f"/v1/instances/{instance['id']}/events"

    async def configure_failed() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        items = (await live.client.get(events, headers=token)).json()["items"]
        failed = [e for e in items if e["type"] == "instance.configure_failed"]
        return (failed, items) if failed else None

    failed, items = await eventually(configure_failed, "an instance.configure_failed event")
    assert "the runtime refused the ingress" in failed[0]["data"]["error"]
    after = (await live.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()
    assert after["state"] == "running"
    assert not any(e["type"] == "instance.state_changed" and e["data"]["to"] == "failed" for e in items)
