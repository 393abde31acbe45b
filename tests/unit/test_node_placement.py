"""Placement of an instance on a node (providers/nodes/ctrlplane_nodes/placement.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ctrlplane_nodes.placement import choose, pool_of

from ctrlplane.provisioning.contract import Resources, WorkloadSpec


@dataclass(frozen=True)
class Offer:
    node_id: str
    free_cpu_millis: int
    free_memory_mb: int
    labels: dict[str, str] = field(default_factory=dict)


def spec(replicas: int = 1, **labels: str) -> WorkloadSpec:
    return WorkloadSpec(
        instance_id="inst_1",
        tenant_id="ten_1",
        name="web",
        image="nginx",
        resources=Resources(cpu_millis=500, memory_mb=256),
        replicas=replicas,
        labels=labels,
    )


def test_the_first_node_with_room_for_every_replica_is_chosen() -> None:
    small, big = Offer("node_small", 600, 300), Offer("node_big", 4000, 4096)
    assert choose(spec(replicas=1), [small, big]) is small
    assert choose(spec(replicas=2), [small, big]) is big
    assert choose(spec(replicas=20), [small, big]) is None


def test_the_selector_must_match_the_node_metadata() -> None:
    eu, us = Offer("node_eu", 4000, 4096, {"region": "eu"}), Offer("node_us", 4000, 4096, {"region": "us"})
    assert choose(spec(**{"node-selector/region": "us"}), [eu, us]) is us
    assert choose(spec(**{"node-selector/region": "ap"}), [eu, us]) is None


def test_the_pool_comes_from_the_label_or_the_default() -> None:
    assert pool_of(spec()) == "default"
    assert pool_of(spec(), "edge") == "edge"
    assert pool_of(spec(**{"node-pool": "gpu"})) == "gpu"
