"""A hard terminate of an instance on a node (docs/nodes.md, "Restart, exec and kill"): the nodes
provider's ``kill`` is a ``ctrlplane.instance.kill`` execution, and the agent's runtime SIGKILLs
with the Docker provider's own ``kill``, then starts the killed revision no more until its
removal. The real agent and engine: tests/nodes/test_node_terminate.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ctrlplane_nodes.provider import KILL_ACTION, NodesProvider

from ctrlplane.agent.runtime import Runtime
from ctrlplane.nodes.contract import ActionRequest, NodeWorkload, SecretRef
from ctrlplane.provisioning.contract import KillableProvider, ProviderSettings, Resources, WorkloadSpec


@dataclass(frozen=True)
class Placed:
    node_state: str = "ready"
    node_id: str = "node_1"
    last_heartbeat_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: str = ""
    result: dict[str, object] = field(default_factory=dict)


class Door:
    def __init__(self, placed: Placed | None, outcome: Outcome) -> None:
        self.placed, self.outcome = placed, outcome
        self.sent: list[tuple[str, str, dict[str, object]]] = []

    async def placement(self, instance_id: str) -> Placed | None:
        return self.placed

    async def execute(self, node_id: str, action: str, parameters: dict[str, object], *, timeout: float) -> Outcome:
        self.sent.append((node_id, action, parameters))
        return self.outcome


def provider(door: Door) -> NodesProvider:
    nodes = NodesProvider(ProviderSettings(cluster_name="test"))
    nodes.bind_node_assignments(door)  # type: ignore[arg-type]
    return nodes


async def test_the_provider_kills_through_an_execution_on_the_instances_node() -> None:
    nodes = provider(door := Door(Placed(), Outcome("success", result={"exit_code": 0})))
    assert isinstance(nodes, KillableProvider)
    await nodes.kill("inst_1")
    assert door.sent == [("node_1", KILL_ACTION, {"instance_id": "inst_1"})]


async def test_a_kill_that_cannot_reach_its_node_leaves_the_removal_to_end_it() -> None:
    for placed in (None, Placed("unreachable"), Placed("deregistered")):
        door = Door(placed, Outcome("success"))
        await provider(door).kill("inst_1")
        assert door.sent == []
    for outcome in (Outcome("no_answer", "node_1 did not answer"), Outcome("rejected", "not placed here")):
        door = Door(Placed(), outcome)
        await provider(door).kill("inst_1")  # no error: the deprovision that follows goes on
        assert len(door.sent) == 1


class Engine:
    """The Docker provider as far as a kill goes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def kill(self, instance_id: str) -> None:
        self.calls.append(("kill", instance_id))

    async def deprovision(self, instance_id: str) -> None:
        self.calls.append(("deprovision", instance_id))

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the runtime called {name} on a killed instance")


def workload(revision: int) -> NodeWorkload:
    spec = WorkloadSpec(
        instance_id="inst_1", tenant_id="ten_1", name="web", image="app:1", resources=Resources(100, 64)
    )
    return NodeWorkload(
        instance_id="inst_1",
        revision=revision,
        spec=spec,
        secret=SecretRef(key=f"inst_1.r{revision}", version=revision),
    )


async def test_the_agent_kills_with_the_docker_provider_and_starts_the_killed_revision_no_more() -> None:
    engine = Engine()
    runtime = Runtime(engine)  # type: ignore[arg-type]
    runtime.hold("inst_1", 7)
    request = ActionRequest(execution_id="exec_1", action=KILL_ACTION, parameters={"instance_id": "inst_1"})
    result = await runtime.run_action(request)
    assert (result.status, result.exit_code) == ("success", 0)
    assert engine.calls == [("kill", "inst_1")]

    async def no_spec(_: NodeWorkload) -> WorkloadSpec:
        raise AssertionError("nothing is converged for a killed revision")

    corrections, statuses = await runtime.converge({"inst_1": workload(7)}, no_spec, remove_unknown=False)
    assert (corrections, statuses) == ([], {})
    await runtime.remove("inst_1")
    assert engine.calls[-1] == ("deprovision", "inst_1")
