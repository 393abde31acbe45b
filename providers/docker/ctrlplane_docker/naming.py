"""Deterministic names and the ``ctrlplane.*`` labels of every object the Docker provider creates.

A name is derived from ctrlplane IDs only, so a retried call finds (and adopts) what an earlier
attempt created instead of creating a twin.
"""

from __future__ import annotations

from ctrlplane.provisioning.contract import (
    LABEL_CLUSTER,
    LABEL_GENERATION,
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_RELEASE,
    LABEL_REPLICA,
    LABEL_TENANT,
    WorkloadSpec,
)

LABEL_PURPOSE = "ctrlplane.purpose"
"""What a labelled object is for: ``replica``, ``files``, ``files-loader``, ``stopped`` or ``run`` (a
one-shot container, with ``run-files`` and ``run-files-loader`` for its files)."""

RESERVED_PREFIX = "ctrlplane."
FILES_DIR = "/run/ctrlplane/files"
"""Where the read-only files volume is mounted whole in every replica (see ``files``)."""


def container_name(instance_id: str, generation: int, replica: int) -> str:
    return f"cp-{instance_id}-g{generation}-r{replica}"


def run_container_name(instance_id: str, run_id: str) -> str:
    return f"cp-{instance_id}-{run_id}"


def run_files_volume_name(instance_id: str, run_id: str) -> str:
    return f"cp-{instance_id}-{run_id}-files"


def network_name(tenant_id: str) -> str:
    return f"cp-tenant-{tenant_id}"


def files_volume_name(instance_id: str, generation: int) -> str:
    return f"cp-{instance_id}-g{generation}-files"


def files_loader_name(instance_id: str, generation: int) -> str:
    return f"cp-{instance_id}-g{generation}-files-loader"


def stopped_marker_name(instance_id: str) -> str:
    return f"cp-{instance_id}-stopped"


def managed_filter(**labels: str) -> dict[str, list[str]]:
    """A Docker ``filters`` argument matching ctrlplane's objects with all the given labels."""
    return {"label": [f"{LABEL_MANAGED}=true", *(f"{key}={value}" for key, value in labels.items())]}


def cluster_filter(cluster: str) -> dict[str, list[str]]:
    """This installation's objects (instance and tenant IDs are unique across installations)."""
    return managed_filter(**{LABEL_CLUSTER: cluster})


def instance_filter(instance_id: str) -> dict[str, list[str]]:
    return managed_filter(**{LABEL_INSTANCE: instance_id})


def tenant_filter(tenant_id: str) -> dict[str, list[str]]:
    return managed_filter(**{LABEL_TENANT: tenant_id})


def object_labels(
    *, cluster: str, purpose: str, tenant_id: str, instance_id: str | None = None, installation: str = ""
) -> dict[str, str]:
    """``installation`` (``ctrlplane.installation``) is on replicas, runs, networks and stopped
    markers, so another installation using the same cluster name shows (``other_installations``)."""
    labels = {LABEL_MANAGED: "true", LABEL_CLUSTER: cluster, LABEL_TENANT: tenant_id, LABEL_PURPOSE: purpose}
    if instance_id is not None:
        labels[LABEL_INSTANCE] = instance_id
    if installation:
        labels[LABEL_INSTALLATION] = installation
    return labels


def generation_labels(
    spec: WorkloadSpec, generation: int, *, cluster: str, purpose: str, installation: str = ""
) -> dict[str, str]:
    labels = object_labels(
        cluster=cluster,
        purpose=purpose,
        tenant_id=spec.tenant_id,
        instance_id=spec.instance_id,
        installation=installation,
    )
    labels[LABEL_RELEASE] = spec.release_id or ""
    labels[LABEL_GENERATION] = str(generation)
    return labels


def replica_labels(
    spec: WorkloadSpec, generation: int, replica: int, *, cluster: str, installation: str = ""
) -> dict[str, str]:
    """The user's labels, then ctrlplane's: a user label can never pose as (or hide) a ctrlplane one."""
    labels = {key: value for key, value in spec.labels.items() if not key.startswith(RESERVED_PREFIX)}
    labels.update(generation_labels(spec, generation, cluster=cluster, purpose="replica", installation=installation))
    labels[LABEL_REPLICA] = str(replica)
    return labels
