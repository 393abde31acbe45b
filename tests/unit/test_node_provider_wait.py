"""The nodes provider's wait for a node's answer (providers/nodes/ctrlplane_nodes/provider.py):
a replica that started and exited at once is an answer (Docker's ``provision`` returns then too,
and the deploy's gate judges it), but an exit the node reported before the spec was sent is not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ctrlplane_nodes.provider import NodesProvider

from ctrlplane.provisioning.contract import (
    ProviderSettings,
    ReplicaStatus,
    Resources,
    WorkloadSpec,
    WorkloadStatus,
)
from ctrlplane.provisioning.errors import ProviderUnavailable

BEFORE = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Placed:
    node_id: str = "node_1"
    node_state: str = "ready"
    last_heartbeat_at: datetime | None = None


class Door:
    """A node that reports ``after`` once the spec was sent (``before`` until then)."""

    def __init__(self, before: WorkloadStatus | None, after: WorkloadStatus) -> None:
        self.report, self.after = before, after

    async def placement(self, instance_id: str) -> Placed:
        return Placed()

    async def desired(self, instance_id: str) -> None:
        return None

    async def update(self, node_id: str, spec: WorkloadSpec, retained: Any = ()) -> int:
        self.report = self.after
        return 1

    async def reported_status(self, instance_id: str) -> WorkloadStatus | None:
        return self.report


def spec(generation: int) -> WorkloadSpec:
    return WorkloadSpec(
        instance_id="inst_1",
        tenant_id="ten_1",
        name="web",
        image="app:2",
        resources=Resources(cpu_millis=100, memory_mb=64),
        replicas=1,
        generation=generation,
    )


def replica(generation: int, state: Any, started_at: datetime) -> ReplicaStatus:
    exited = state == "exited"
    return ReplicaStatus(
        replica=0,
        generation=generation,
        name=f"cp-inst_1-g{generation}-r0",
        state=state,
        exit_code=3 if exited else None,
        started_at=started_at,
        finished_at=started_at if exited else None,
    )


def status(*replicas: ReplicaStatus) -> WorkloadStatus:
    running = any(r.state == "running" for r in replicas)
    return WorkloadStatus(instance_id="inst_1", state="running" if running else "failed", replicas=replicas)


def provider(door: Door) -> NodesProvider:
    nodes = NodesProvider(ProviderSettings(cluster_name="unit"), wait_seconds=0.5)
    nodes.bind_node_assignments(door)  # type: ignore[arg-type]
    return nodes


async def test_a_new_generation_whose_replica_exited_at_once_is_answered_without_waiting() -> None:
    old = replica(1, "running", BEFORE)
    exited = replica(2, "exited", BEFORE + timedelta(seconds=5))
    door = Door(status(old), status(old, exited))
    answer = await provider(door).provision(spec(2))
    assert [r.state for r in answer.replicas if r.generation == 2] == ["exited"]


async def test_an_exit_reported_before_the_spec_was_sent_is_not_the_nodes_answer() -> None:
    stale = status(replica(2, "exited", BEFORE))
    door = Door(stale, stale)  # the node has not acted on the spec yet
    with pytest.raises(ProviderUnavailable, match="has not reported instance inst_1 running yet"):
        await provider(door).provision(spec(2))


async def test_a_replica_restarted_since_is_the_nodes_answer_even_when_it_exited_again() -> None:
    door = Door(status(replica(2, "exited", BEFORE)), status(replica(2, "exited", BEFORE + timedelta(seconds=2))))
    answer = await provider(door).provision(spec(2))
    assert answer.replicas[0].started_at == BEFORE + timedelta(seconds=2)
