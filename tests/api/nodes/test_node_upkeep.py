"""What the control plane keeps of its nodes beyond the desired state (docs/nodes.md): each
replica's latest usage from the nodes' metric batches, the capacity a deploy's retained replicas
hold, and the pruning of node events no replay needs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest
from ctrlplane_nodes.provider import NodesProvider
from litestar import Litestar
from sqlalchemy import select, update

from ctrlplane.db import Database
from ctrlplane.instances.models import Instance
from ctrlplane.nodes.models import NodeEvent
from ctrlplane.nodes.monitor import NodeMonitor
from ctrlplane.provisioning.contract import ProviderSettings, RetainedReplicas, Usage
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from ctrlplane.telemetry.sampler import MetricsSampler
from ctrlplane.timeutil import utc_now
from tests.api.nodes.test_nodes import Enrolled, enrolled, gzipped, services_of, spec
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, providers=("fake", "nodes"))


@pytest.fixture
def providers(fake: FakeProvider) -> ProviderRegistry:
    return ProviderRegistry([fake, NodesProvider(ProviderSettings(cluster_name="test"))])


def moment(seconds_ago: float = 0.0) -> str:
    return (utc_now() - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def replica_record(instance_id: str, at: str, generation: int, replica: int, cpu: float) -> dict[str, Any]:
    data = {"generation": generation, "cpu_percent": cpu, "memory_used": 1000 + replica, "memory_total": 4096}
    return {"timestamp": at, "group": "replica", "instance_id": instance_id, "replica": replica, "data": data}


async def ship(api: Api, node: Enrolled, records: list[dict[str, Any]]) -> dict[str, Any]:
    response = await api.client.post(
        f"/v1/nodes/{node.node_id}/metrics",
        content=gzipped(records),
        headers={**node.headers, "Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


async def report(api: Api, node: Enrolled, instance_id: str, version: int, *replicas: tuple[int, int, str]) -> None:
    status = {
        "instance_id": instance_id,
        "state": "running",
        "replicas": [
            {"replica": r, "generation": g, "name": f"cp-{instance_id}-g{g}-r{r}", "state": state}
            for g, r, state in replicas
        ],
    }
    entry = {"key": f"instance/{instance_id}", "payload": status, "version": version, "updated_at": moment()}
    response = await api.client.post(
        f"/v1/nodes/{node.node_id}/report", json={"entries": [entry]}, headers=node.headers
    )
    assert response.status_code == 200, response.text


@pytest.mark.dialects("a batch replaces an instance's rows after comparing timestamps in SQL")
async def test_each_replicas_usage_is_the_latest_its_node_shipped(api: Api, app: Litestar) -> None:
    tenant = await api.create_tenant("acme", plan="pro")
    created = await api.client.post(
        "/v1/instances",
        json={"name": "web", "image": "ctrlplane-test/busybox:1"},
        headers=bearer(api.tokens.tenant(tenant["id"])),
    )
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    node = await enrolled(api, "one")
    services = services_of(app)
    await services.nodes.assign(node.node_id, spec(instance_id, tenant["id"], replicas=2))
    provider = NodesProvider(ProviderSettings(cluster_name="test"))
    provider.bind_node_assignments(services.nodes)
    await report(api, node, instance_id, 1, (1, 0, "running"), (1, 1, "running"), (2, 0, "running"))
    taken = moment()
    answer = await ship(
        api,
        node,
        [
            {"timestamp": taken, "group": "instance", "instance_id": instance_id, "data": {"cpu_percent": 6.0}},
            replica_record(instance_id, taken, 1, 0, 1.5),
            replica_record(instance_id, taken, 1, 1, 2.5),
            replica_record(instance_id, taken, 2, 0, 2.0),
            replica_record("inst_elsewhere", taken, 1, 0, 9.0),
        ],
    )
    assert answer == {"accepted": 4, "rejected": 1}
    found = await provider.replica_usage(instance_id)
    assert [(r.generation, r.replica, r.name, r.usage.cpu_percent if r.usage else None) for r in found] == [
        (1, 0, f"cp-{instance_id}-g1-r0", 1.5),
        (1, 1, f"cp-{instance_id}-g1-r1", 2.5),
        (2, 0, f"cp-{instance_id}-g2-r0", 2.0),
    ]
    assert found[1].usage == Usage(
        cpu_percent=2.5,
        memory_used_bytes=1001,
        memory_limit_bytes=4096,
        network_rx_bytes=0,
        network_tx_bytes=0,
        restarts=0,
    )
    total = await provider.usage(instance_id)
    assert (total.cpu_percent, total.memory_used_bytes, total.memory_limit_bytes) == (6.0, 3001, 3 * 4096)

    # a late batch (older than what is stored) changes nothing; a newer one replaces it all: the
    # replica that stopped has no usage, the one gone from the node has none either
    await ship(api, node, [replica_record(instance_id, moment(30), 1, 0, 50.0)])
    assert (await provider.replica_usage(instance_id))[0].usage.cpu_percent == 1.5  # type: ignore[union-attr]
    await report(api, node, instance_id, 2, (1, 0, "exited"), (2, 0, "running"))
    await ship(api, node, [replica_record(instance_id, moment(), 2, 0, 3.0)])
    found = await provider.replica_usage(instance_id)
    assert [(r.generation, r.replica, r.state, r.usage.cpu_percent if r.usage else None) for r in found] == [
        (1, 0, "exited", None),
        (2, 0, "running", 3.0),
    ]

    # off its node, its usage goes with it
    await services.nodes.remove(node.node_id, instance_id)
    assert await services.nodes.replica_usage(instance_id) == {}


async def test_the_sampler_takes_no_sample_of_an_instance_on_a_node(api: Api, app: Litestar, db: Database) -> None:
    """The node's ``instance`` records are its samples already: one more from the sampler, although
    the provider's ``usage`` answers, would count each twice."""
    tenant = await api.create_tenant("acme", plan="pro")
    created = await api.client.post(
        "/v1/instances",
        json={"name": "web", "image": "ctrlplane-test/busybox:1", "provider_name": "nodes"},
        headers=bearer(api.tokens.tenant(tenant["id"])),
    )
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    async with db.write() as session, session.begin():
        await session.execute(update(Instance).where(Instance.id == instance_id).values(state="running"))
    node = await enrolled(api, "one")
    services = services_of(app)
    await services.nodes.assign(node.node_id, spec(instance_id, tenant["id"]))
    await report(api, node, instance_id, 1, (1, 0, "running"))
    await ship(api, node, [replica_record(instance_id, moment(), 1, 0, 4.0)])
    assert (await services.providers.get("nodes").usage(instance_id)).cpu_percent == 4.0
    assert await MetricsSampler(services).run_once() == 0


async def test_replicas_a_deploy_retains_hold_their_room_on_the_node(api: Api, app: Litestar) -> None:
    tenant = await api.create_tenant("acme")
    node = await enrolled(api, "one", pool="edge")  # 4000m CPU, 8192 MB
    nodes = services_of(app).nodes

    async def free() -> tuple[int, int]:
        (view,) = await nodes.candidates("edge", tenant["id"])
        return view.free_cpu_millis, view.free_memory_mb

    await nodes.assign(node.node_id, spec("inst_a", tenant["id"], replicas=2, generation=1))  # 250m, 128 MB each
    assert await free() == (3500, 7936)
    # a rolling deploy's first step: one replica of generation 2 beside both of generation 1
    retained = [RetainedReplicas(generation=1, replicas=[0, 1])]
    await nodes.update(node.node_id, spec("inst_a", tenant["id"], replicas=1, generation=2), retained)
    assert await free() == (3250, 7808)
    # the router withdrew one old replica: it no longer counts
    await nodes.reshape("inst_a", retained=[RetainedReplicas(generation=1, replicas=[1])], replicas=2)
    assert await free() == (3250, 7808)
    await nodes.reshape("inst_a", retained=[])
    assert await free() == (3500, 7936)
    listed = (await api.client.get("/v1/admin/nodes", headers=api.admin_headers)).json()
    assert listed["items"][0]["capacity"]["used_cpu_millis"] == 500


@pytest.mark.dialects("the pruning is one DELETE with a correlated subquery")
async def test_node_events_no_replay_needs_are_pruned(api: Api, app: Litestar, db: Database) -> None:
    tenant = await api.create_tenant("acme")
    node = await enrolled(api, "one")
    gone = await enrolled(api, "two")
    services = services_of(app)
    nodes = services.nodes
    for replicas in (1, 2, 3):
        await nodes.assign(node.node_id, spec("inst_a", tenant["id"], replicas=replicas))
        await nodes.assign(gone.node_id, spec(f"inst_b{replicas}", tenant["id"]))

    async def age_all() -> None:
        async with db.write() as session, session.begin():
            old = utc_now() - timedelta(seconds=services.settings.node_event_retention_seconds + 60)
            await session.execute(update(NodeEvent).values(issued_at=old))

    async def kept(node_id: str) -> list[int]:
        async with db.read() as session:
            rows = await session.execute(
                select(NodeEvent.seq).where(NodeEvent.node_id == node_id).order_by(NodeEvent.seq)
            )
            return list(rows.scalars())

    await age_all()
    await NodeMonitor(services).run_once()
    # old, but neither node has pulled its state since: either may still replay them
    assert await kept(node.node_id) == [1, 2, 3]
    assert await kept(gone.node_id) == [1, 2, 3]

    state = (await api.client.get(f"/v1/nodes/{node.node_id}/state", headers=node.headers)).json()
    assert state["last_event_id"] == 3
    await nodes.assign(node.node_id, spec("inst_a", tenant["id"], replicas=4))  # event 4, after the pull
    assert (await api.client.post(f"/v1/nodes/{gone.node_id}/deregister", headers=gone.headers)).status_code == 200
    await age_all()
    await NodeMonitor(services).run_once()
    # the node resumes after its state's last_event_id: what it has not seen stays, however old
    assert await kept(node.node_id) == [4]
    assert await kept(gone.node_id) == []
    replay = await api.client.get(
        f"/v1/nodes/{node.node_id}/events", headers={**node.headers, "Last-Event-ID": str(state["last_event_id"])}
    )
    assert [item["event_id"] for item in replay.json()["items"]] == [4]

    # once pulled past, the old event 4 goes; the recent event 5 stays although pulled past too
    await nodes.assign(node.node_id, spec("inst_a", tenant["id"], replicas=5))
    await api.client.get(f"/v1/nodes/{node.node_id}/state", headers=node.headers)
    await NodeMonitor(services).run_once()
    assert await kept(node.node_id) == [5]
