"""Names and labels of what the provider creates; every name is a DNS-1123 label derived from
ctrlplane IDs, so a retried call finds (and adopts) what an earlier one made."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from ctrlplane.provisioning.contract import (
    LABEL_CLUSTER,
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_RELEASE,
    LABEL_RUN,
    LABEL_TENANT,
    WorkloadSpec,
)

LABEL_SLOT = "ctrlplane.slot"
LABEL_RUN_INSTANCE = "ctrlplane.run-instance"
"""On a one-shot run's Job, Secret and pod: the instance it belongs to. Not ``ctrlplane.instance``,
so the instance's own observation (its Deployments' pods) never counts a run's pod as a replica."""
SLOTS = ("a", "b")
"""Each instance has at most two Deployments, one per slot: two generations run side by side only
during a deploy (blue/green, canary, or the deploy engine's replica-by-replica rolling)."""

ANNOTATION_PREFIX = "ctrlplane.io/"
WANTED = ANNOTATION_PREFIX + "replicas"
STOPPED = ANNOTATION_PREFIX + "stopped"
RETIRED = ANNOTATION_PREFIX + "retired"
RESTARTED_AT = ANNOTATION_PREFIX + "restarted-at"
TEMPLATE_HASH = ANNOTATION_PREFIX + "template-hash"
PINNED_SLOT = ANNOTATION_PREFIX + "serving-slot"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
CONTAINER = "app"
MAX_LABEL = 63


def dns_label(*parts: str) -> str:
    """``parts`` joined by ``-``, lowercased, anything but ``[a-z0-9-]`` made ``-``; longer than 63
    characters it keeps a prefix and a hash of the whole, so it stays unique."""
    raw = "-".join(parts).lower()
    name = re.sub(r"[^a-z0-9-]", "-", raw).strip("-")
    if len(name) > MAX_LABEL:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
        name = f"{name[: MAX_LABEL - 11].rstrip('-')}-{digest}"
    return name or "x"


def namespace_name(cluster: str, tenant_id: str) -> str:
    return dns_label(cluster, tenant_id)


def deployment_name(instance_id: str, slot: str) -> str:
    return dns_label(instance_id, slot)


def secret_name(instance_id: str, generation: int) -> str:
    return dns_label(instance_id, f"g{generation}")


def pull_secret_name(instance_id: str, generation: int) -> str:
    return dns_label(instance_id, f"g{generation}", "pull")


def run_pull_secret_name(run_id: str) -> str:
    return dns_label(run_id, "pull")


def run_name(run_id: str) -> str:
    return dns_label(run_id)


def run_labels(cluster: str, tenant_id: str, instance_id: str, run_id: str) -> dict[str, str]:
    return {
        **tenant_labels(cluster, tenant_id),
        LABEL_RUN_INSTANCE: label_value(instance_id),
        LABEL_RUN: label_value(run_id),
    }


def service_name(instance_id: str) -> str:
    return dns_label(instance_id)


def ingress_name(instance_id: str) -> str:
    return dns_label(instance_id)


def tls_secret_name(instance_id: str) -> str:
    return dns_label(instance_id, "tls")


def label_value(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:MAX_LABEL]
    return cleaned.strip("-_.")


def tenant_labels(cluster: str, tenant_id: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_CLUSTER: cluster, LABEL_TENANT: label_value(tenant_id)}


def instance_labels(cluster: str, spec: WorkloadSpec) -> dict[str, str]:
    return {
        **tenant_labels(cluster, spec.tenant_id),
        LABEL_INSTANCE: label_value(spec.instance_id),
    }


def own_labels(spec: WorkloadSpec) -> dict[str, str]:
    """The spec's own labels that Kubernetes accepts, never one with the reserved ``ctrlplane.`` prefix."""
    return {
        key: label_value(value)
        for key, value in spec.labels.items()
        if not key.startswith("ctrlplane.") and re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", key)
    }


def generation_labels(cluster: str, spec: WorkloadSpec, slot: str) -> dict[str, str]:
    """The spec's own labels under ctrlplane's."""
    return {
        **own_labels(spec),
        **instance_labels(cluster, spec),
        LABEL_RELEASE: label_value(spec.release_id or ""),
        LABEL_GENERATION: str(spec.generation),
        LABEL_SLOT: slot,
    }


def selector(cluster: str, instance_id: str, slot: str | None = None) -> dict[str, str]:
    labels = {LABEL_CLUSTER: cluster, LABEL_INSTANCE: label_value(instance_id)}
    if slot is not None:
        labels[LABEL_SLOT] = slot
    return labels


def selector_string(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def matches(labels: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    """The selector check again on the client side: a list is trusted only as far as its labels."""
    have = labels or {}
    return all(have.get(key) == value for key, value in wanted.items())
