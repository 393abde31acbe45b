"""Which node an instance goes to: a ready node of its pool, matching its selector, with room.

An instance chooses with two labels (``docs/nodes.md``, "Placement"): ``node-pool`` (default
``default``, the enrolment tokens' default pool) and any number of ``node-selector/KEY: VALUE``,
each of which the node's registration metadata must carry. Of the candidates the control plane offers
(ready: neither cordoned, draining nor unreachable; the pool's, or the tenant's own), the first
with room for ``cpu_millis * replicas`` and ``memory_mb * replicas`` wins; the candidates come
freest first, so instances spread. That is all: ctrlplane places an instance and keeps it there
until its node is drained (then it is placed again the same way); rebalancing and bin-packing a
fleet are the Kubernetes provider's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ctrlplane.provisioning.contract import WorkloadSpec

POOL_LABEL = "node-pool"
SELECTOR_PREFIX = "node-selector/"
DEFAULT_POOL = "default"


class Candidate(Protocol):
    @property
    def node_id(self) -> str: ...
    @property
    def labels(self) -> dict[str, str]: ...
    @property
    def free_cpu_millis(self) -> int: ...
    @property
    def free_memory_mb(self) -> int: ...


def pool_of(spec: WorkloadSpec, default: str = DEFAULT_POOL) -> str:
    return spec.labels.get(POOL_LABEL) or default


def selector_of(spec: WorkloadSpec) -> dict[str, str]:
    return {
        key.removeprefix(SELECTOR_PREFIX): value
        for key, value in spec.labels.items()
        if key.startswith(SELECTOR_PREFIX)
    }


def choose(spec: WorkloadSpec, candidates: Sequence[Candidate]) -> Candidate | None:
    """The node for ``spec`` among ``candidates`` (in their order), or None when none fits."""
    selector = selector_of(spec)
    cpu = spec.resources.cpu_millis * spec.replicas
    memory = spec.resources.memory_mb * spec.replicas
    for candidate in candidates:
        if any(candidate.labels.get(key) != value for key, value in selector.items()):
            continue
        if candidate.free_cpu_millis >= cpu and candidate.free_memory_mb >= memory:
            return candidate
    return None
