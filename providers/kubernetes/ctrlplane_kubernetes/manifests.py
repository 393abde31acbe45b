"""The manifests the provider applies, as plain dicts built from provider-neutral inputs only (a
``WorkloadSpec`` and the provider's settings), so each one can be checked against the Kubernetes
schemas without a cluster (``tests/providers/test_kubernetes_manifests.py``)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from ctrlplane.provisioning.contract import (
    LABEL_GENERATION,
    HttpRoute,
    Probe,
    RegistryAuth,
    RunSpec,
    Strategy,
    TenantQuota,
    WorkloadSpec,
)
from ctrlplane_kubernetes import naming
from ctrlplane_kubernetes.settings import KubernetesSettings

Manifest = dict[str, Any]

QUOTA_HEADROOM = 2
"""The ResourceQuota allows twice the tenant's quota: during a blue/green or canary deploy both
sets run. ctrlplane's own quota check keeps the steady state within the tenant's quota."""


def cpu(millis: int) -> str:
    return f"{millis}m"


def memory(megabytes: int) -> str:
    return f"{megabytes}Mi"


def pod_security_labels(settings: KubernetesSettings) -> dict[str, str]:
    """Pod Security admission on a tenant namespace: the "restricted" standard is enforced (the API
    server refuses a pod that asks for privileges, host namespaces, host paths, added capabilities
    or root), warned and audited. With ``run_as_non_root`` off (images that need root) "baseline" is
    enforced instead, since "restricted" requires non-root, and "restricted" is still warned and
    audited."""
    enforced = "restricted" if settings.run_as_non_root else "baseline"
    return {
        "pod-security.kubernetes.io/enforce": enforced,
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted",
    }


def namespace_labels(cluster: str, tenant_id: str, settings: KubernetesSettings) -> dict[str, str]:
    return {**naming.tenant_labels(cluster, tenant_id), **pod_security_labels(settings)}


def namespace(cluster: str, tenant_id: str, settings: KubernetesSettings | None = None) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": naming.namespace_name(cluster, tenant_id),
            "labels": namespace_labels(cluster, tenant_id, settings or KubernetesSettings()),
        },
    }


def resource_quota(cluster: str, tenant_id: str, quota: TenantQuota) -> Manifest:
    cpu_total, memory_total = cpu(quota.max_cpu_millis * QUOTA_HEADROOM), memory(quota.max_memory_mb * QUOTA_HEADROOM)
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "ctrlplane-tenant-quota", "labels": naming.tenant_labels(cluster, tenant_id)},
        "spec": {
            "hard": {
                "requests.cpu": cpu_total,
                "limits.cpu": cpu_total,
                "requests.memory": memory_total,
                "limits.memory": memory_total,
                "count/deployments.apps": str(quota.max_instances * len(naming.SLOTS)),
                "count/services": str(quota.max_instances),
            }
        },
    }


def limit_range(cluster: str, tenant_id: str, quota: TenantQuota) -> Manifest:
    """No single container may ask for more than the whole tenant may use; containers without
    resources (none of ctrlplane's) get small defaults."""
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "ctrlplane-tenant-limits", "labels": naming.tenant_labels(cluster, tenant_id)},
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "max": {"cpu": cpu(quota.max_cpu_millis), "memory": memory(quota.max_memory_mb)},
                    "default": {"cpu": "100m", "memory": "128Mi"},
                    "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                }
            ]
        },
    }


def network_policy(cluster: str, tenant_id: str, settings: KubernetesSettings) -> Manifest:
    """Pods of the tenant accept traffic from pods of their own namespace and from the ingress
    controller's namespace only, so other tenants' pods cannot reach them. Egress stays open."""
    sources: list[dict[str, Any]] = [{"podSelector": {}}]
    if settings.ingress_namespace:
        sources.append(
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.ingress_namespace}}}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "ctrlplane-tenant-isolation", "labels": naming.tenant_labels(cluster, tenant_id)},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": sources}]},
    }


def env_key(name: str) -> str:
    return "env." + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def file_key(index: int) -> str:
    return f"file.{index}"


def secret(cluster: str, spec: WorkloadSpec) -> Manifest:
    """The instance's environment and files of one generation (every env value is here: ctrlplane's
    spec does not tell secrets from plain values, so all are treated as secret)."""
    data = {env_key(name): _b64(value.encode()) for name, value in spec.env.items()}
    data.update({file_key(index): _b64(file.content) for index, file in enumerate(spec.files)})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.secret_name(spec.instance_id, spec.generation),
            "labels": {**naming.instance_labels(cluster, spec), LABEL_GENERATION: str(spec.generation)},
        },
        "data": data,
    }


DOCKER_HUB_ADDRESS = "https://index.docker.io/v1/"


def docker_config(auth: RegistryAuth) -> bytes:
    """``.dockerconfigjson``: the credential under its registry (Docker Hub's under its index URL)."""
    server = DOCKER_HUB_ADDRESS if auth.registry == "docker.io" else auth.registry
    login = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
    entry = {"username": auth.username, "password": auth.password, "auth": login}
    return json.dumps({"auths": {server: entry}}, sort_keys=True).encode()


def pull_secret(cluster: str, spec: WorkloadSpec, name: str | None = None) -> Manifest | None:
    """The ``kubernetes.io/dockerconfigjson`` Secret the kubelet pulls ``spec.image`` with (named in
    the pods' ``imagePullSecrets``); none without registry credentials."""
    if spec.registry_auth is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": name or naming.pull_secret_name(spec.instance_id, spec.generation),
            "labels": {**naming.instance_labels(cluster, spec), LABEL_GENERATION: str(spec.generation)},
        },
        "data": {".dockerconfigjson": _b64(docker_config(spec.registry_auth))},
    }


def run_pull_secret(cluster: str, run: RunSpec) -> Manifest | None:
    manifest = pull_secret(cluster, run.workload, naming.run_pull_secret_name(run.run_id))
    if manifest is not None:
        workload = run.workload
        manifest["metadata"]["labels"] = naming.run_labels(
            cluster, workload.tenant_id, workload.instance_id, run.run_id
        )
    return manifest


def run_secret(cluster: str, run: RunSpec) -> Manifest:
    """The run's env and files, in a Secret of its own (named like its Job)."""
    manifest = secret(cluster, run.workload)
    workload = run.workload
    manifest["metadata"] = {
        "name": naming.run_name(run.run_id),
        "labels": naming.run_labels(cluster, workload.tenant_id, workload.instance_id, run.run_id),
    }
    return manifest


def run_job(cluster: str, run: RunSpec, settings: KubernetesSettings) -> Manifest:
    """A Job of one pod that never restarts or retries (``backoffLimit: 0``): ctrlplane, not the Job
    controller, decides what a failure means. No probes, no ports: a run serves nothing. The Job and
    its pod carry the instance's own labels under ctrlplane's, as its replicas' pods do (and as a
    run's container does on Docker)."""
    workload = run.workload
    name = naming.run_name(run.run_id)
    labels = {
        **naming.own_labels(workload),
        **naming.run_labels(cluster, workload.tenant_id, workload.instance_id, run.run_id),
    }
    resources = {"cpu": cpu(workload.resources.cpu_millis), "memory": memory(workload.resources.memory_mb)}
    container: Manifest = {
        "name": naming.CONTAINER,
        "image": workload.image,
        "imagePullPolicy": workload.pull_policy,
        "command": list(run.command),
        "env": [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": env_key(key)}}}
            for key in sorted(workload.env)
        ],
        "resources": {"requests": resources, "limits": dict(resources)},
        "securityContext": container_security(settings, read_only_root_fs=workload.read_only_root_fs),
        "volumeMounts": [
            {"name": "files", "mountPath": file.path, "subPath": file_key(index), "readOnly": True}
            for index, file in enumerate(workload.files)
        ],
    }
    volumes = (
        [
            {
                "name": "files",
                "secret": {
                    "secretName": name,
                    "defaultMode": 0o400,
                    "items": [{"key": file_key(i), "path": file_key(i)} for i in range(len(workload.files))],
                },
            }
        ]
        if workload.files
        else []
    )
    if workload.read_only_root_fs:
        tmp, tmp_mount = tmp_volume()
        volumes.append(tmp)
        container["volumeMounts"].append(tmp_mount)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "volumes": volumes,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "restartPolicy": "Never",
                    **(
                        {"imagePullSecrets": [{"name": naming.run_pull_secret_name(run.run_id)}]}
                        if workload.registry_auth is not None
                        else {}
                    ),
                },
            },
        },
    }


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def probe(check: Probe, default_port: int | None) -> Manifest:
    timing = {
        "initialDelaySeconds": check.initial_delay_seconds,
        "periodSeconds": check.period_seconds,
        "timeoutSeconds": check.timeout_seconds,
        "failureThreshold": check.failure_threshold,
    }
    port = check.port or default_port
    if check.kind == "command":
        return {"exec": {"command": list(check.command)}, **timing}
    if port is None:
        raise ValueError(f"a {check.kind} health check needs a port")
    if check.kind == "http":
        return {"httpGet": {"path": check.path or "/", "port": port}, **timing}
    return {"tcpSocket": {"port": port}, **timing}


def probes(spec: WorkloadSpec) -> Manifest:
    """Readiness and liveness from the spec's health checks. Without any, readiness is a TCP connect
    to the first TCP port, the same test ctrlplane's deploy gate makes; there is no liveness probe."""
    tcp_ports = [port.container_port for port in spec.ports if port.protocol == "tcp"]
    first = tcp_ports[0] if tcp_ports else None
    result: Manifest = {}
    for check in spec.probes:
        rendered = probe(check, first)
        if check.use in ("readiness", "both"):
            result.setdefault("readinessProbe", rendered)
        if check.use in ("liveness", "both"):
            result.setdefault("livenessProbe", rendered)
    if not spec.probes and first is not None:
        result["readinessProbe"] = {"tcpSocket": {"port": first}, "periodSeconds": 2, "failureThreshold": 3}
    return result


TMP_VOLUME = "tmp"
TMP_SIZE = "64Mi"
"""The writable ``/tmp`` of a read-only root filesystem: memory-backed, as Docker's tmpfs."""


def container_security(settings: KubernetesSettings, *, read_only_root_fs: bool = False) -> Manifest:
    context: Manifest = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if settings.run_as_non_root:
        context["runAsNonRoot"] = True
    if read_only_root_fs:
        context["readOnlyRootFilesystem"] = True
    return context


def tmp_volume() -> tuple[Manifest, Manifest]:
    """The volume and mount of a writable ``/tmp`` for a read-only root filesystem."""
    return (
        {"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": TMP_SIZE}},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    )


def deployment(
    cluster: str,
    spec: WorkloadSpec,
    slot: str,
    settings: KubernetesSettings,
    *,
    replicas: int,
    strategy: Strategy = "rolling",
    restarted_at: str | None = None,
) -> Manifest:
    labels = naming.generation_labels(cluster, spec, slot)
    secret = naming.secret_name(spec.instance_id, spec.generation)
    env = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": env_key(name)}}}
        for name in sorted(spec.env)
    ]
    mounts = [
        {"name": "files", "mountPath": file.path, "subPath": file_key(index), "readOnly": True}
        for index, file in enumerate(spec.files)
    ]
    resources = {"cpu": cpu(spec.resources.cpu_millis), "memory": memory(spec.resources.memory_mb)}
    container: Manifest = {
        "name": naming.CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.pull_policy,
        "env": env,
        "ports": [{"containerPort": port.container_port, "protocol": port.protocol.upper()} for port in spec.ports],
        "resources": {"requests": resources, "limits": dict(resources)},
        "securityContext": container_security(settings, read_only_root_fs=spec.read_only_root_fs),
        "volumeMounts": mounts,
        **probes(spec),
    }
    if spec.command is not None:
        container["command"] = list(spec.command)
    update: Manifest = (
        {"type": "Recreate"}
        if strategy == "recreate"
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    )
    volumes = (
        [
            {
                "name": "files",
                "secret": {
                    "secretName": secret,
                    "defaultMode": 0o400,
                    "items": [{"key": file_key(index), "path": file_key(index)} for index in range(len(spec.files))],
                },
            }
        ]
        if spec.files
        else []
    )
    if spec.read_only_root_fs:
        tmp, tmp_mount = tmp_volume()
        volumes.append(tmp)
        mounts.append(tmp_mount)
    pod_annotations = {naming.RESTARTED_AT: restarted_at} if restarted_at else {}
    pod_spec: Manifest = {
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Always",
    }
    if spec.registry_auth is not None:
        pod_spec["imagePullSecrets"] = [{"name": naming.pull_secret_name(spec.instance_id, spec.generation)}]
    pod_annotations[naming.TEMPLATE_HASH] = template_hash(labels, pod_spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": naming.deployment_name(spec.instance_id, slot),
            "labels": labels,
            "annotations": {naming.WANTED: str(spec.replicas)},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": naming.selector(cluster, spec.instance_id, slot)},
            "strategy": update,
            "revisionHistoryLimit": 2,
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def template_hash(labels: dict[str, str], pod_spec: Manifest) -> str:
    """A digest of the pod template as rendered (annotations aside, so a restart stamp does not
    count): every pod carries it, so a rollout is done when all pods carry the Deployment's."""
    rendered = json.dumps({"labels": labels, "spec": pod_spec}, sort_keys=True)
    return hashlib.sha256(rendered.encode()).hexdigest()[:16]


def service(cluster: str, spec: WorkloadSpec, pinned_slot: str | None = None) -> Manifest:
    """One ClusterIP Service for the instance's ports; it selects every slot (traffic weighted by
    replica counts) unless a blue/green deploy pins it to one."""
    annotations = {naming.PINNED_SLOT: pinned_slot} if pinned_slot else {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.service_name(spec.instance_id),
            "labels": naming.instance_labels(cluster, spec),
            "annotations": annotations,
        },
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector(cluster, spec.instance_id, pinned_slot),
            "ports": [
                {
                    "name": f"{port.protocol}-{port.container_port}",
                    "port": port.container_port,
                    "targetPort": port.container_port,
                    "protocol": port.protocol.upper(),
                }
                for port in spec.ports
            ],
        },
    }


def ingress(cluster: str, spec: WorkloadSpec, settings: KubernetesSettings) -> Manifest | None:
    """An Ingress for the spec's routes (hosts already verified by ctrlplane), or None without any."""
    tcp_ports = [port.container_port for port in spec.ports if port.protocol == "tcp"]
    routes = [route for route in spec.routes if route.container_port or tcp_ports]
    if not routes:
        return None
    hosts: dict[str, list[HttpRoute]] = {}
    for route in routes:
        hosts.setdefault(route.host, []).append(route)
    rules = [
        {
            "host": host,
            "http": {
                "paths": [
                    {
                        "path": route.path or "/",
                        "pathType": "Prefix",
                        "backend": {
                            "service": {
                                "name": naming.service_name(spec.instance_id),
                                "port": {"number": route.container_port or tcp_ports[0]},
                            }
                        },
                    }
                    for route in host_routes
                ]
            },
        }
        for host, host_routes in sorted(hosts.items())
    ]
    annotations: dict[str, str] = {}
    body: Manifest = {"rules": rules}
    if settings.ingress_class:
        body["ingressClassName"] = settings.ingress_class
    tls_hosts = sorted({route.host for route in routes if route.tls})
    secret_name = ""
    if tls_hosts and settings.cert_issuer:
        annotations["cert-manager.io/cluster-issuer"] = settings.cert_issuer
        secret_name = naming.tls_secret_name(spec.instance_id)
    elif tls_hosts and settings.tls_secret:
        secret_name = settings.tls_secret
    if secret_name:
        body["tls"] = [{"hosts": tls_hosts, "secretName": secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": naming.ingress_name(spec.instance_id),
            "labels": naming.instance_labels(cluster, spec),
            "annotations": annotations,
        },
        "spec": body,
    }
