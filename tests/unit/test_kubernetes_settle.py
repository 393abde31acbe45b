"""The Kubernetes provider's settle condition: a Deployment with more live pods than it wants is
still scaling one down (as after an API server restart), so a deploy does not report it yet."""

from __future__ import annotations

from typing import Any

from ctrlplane_kubernetes import naming, observe


def _deployment(replicas: int, retired: str = "") -> dict[str, Any]:
    annotations = {naming.WANTED: str(replicas), naming.RETIRED: retired}
    labels = {naming.LABEL_GENERATION: "2", naming.LABEL_SLOT: "b"}
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": {"replicas": replicas}}


def _pod(name: str, *, deleting: bool = False, generation: str = "2") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {naming.LABEL_GENERATION: generation, naming.LABEL_SLOT: "b"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {"metadata": meta}


def test_a_third_live_pod_of_a_two_replica_deployment_is_surplus() -> None:
    assert observe.surplus([_deployment(2)], [_pod("a"), _pod("b"), _pod("c")])


def test_the_wanted_count_pods_being_deleted_and_other_generations_are_not_surplus() -> None:
    assert not observe.surplus([_deployment(2)], [_pod("a"), _pod("b")])
    assert not observe.surplus([_deployment(2)], [_pod("a"), _pod("b"), _pod("c", deleting=True)])
    assert not observe.surplus([_deployment(2)], [_pod("a"), _pod("b"), _pod("old", generation="1")])


def test_retired_replicas_lower_what_a_deployment_may_keep() -> None:
    assert observe.surplus([_deployment(2, retired="0")], [_pod("a"), _pod("b")])
    assert not observe.surplus([_deployment(2, retired="0")], [_pod("a")])
