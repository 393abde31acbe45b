"""Every manifest the Kubernetes provider builds is valid for the Kubernetes API, checked offline
with kubernetes-validate's bundled schemas (strict: no unknown field passes), and says what the
provider promises: labels, limits, secret references, probes, security, ingress TLS."""

from __future__ import annotations

import base64
import re
from typing import Any

import kubernetes_validate
import pytest
from ctrlplane_kubernetes import manifests, naming
from ctrlplane_kubernetes.settings import KubernetesSettings

from ctrlplane.provisioning.contract import (
    HttpRoute,
    PortSpec,
    Probe,
    RegistryAuth,
    Resources,
    RunSpec,
    SecretFile,
    TenantQuota,
    WorkloadSpec,
)

VERSIONS = ("1.34.0", kubernetes_validate.utils.latest_version())
"""A current release and the newest schemas the package ships."""
CLUSTER = "prod-eu"
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
QUOTA = TenantQuota(max_instances=5, max_cpu_millis=4000, max_memory_mb=8192)
DEFAULT = KubernetesSettings()


def spec(**overrides: Any) -> WorkloadSpec:
    values: dict[str, Any] = {
        "instance_id": "inst_01jz8x3k4m5n6p7q8r9s0t1v2w",
        "tenant_id": "ten_01jz8x3k4m5n6p7q8r9s0t1v2x",
        "name": "web",
        "image": "registry.example/web:1.2",
        "resources": Resources(cpu_millis=250, memory_mb=128),
        "replicas": 2,
        "ports": (PortSpec(8080), PortSpec(5353, "udp")),
        "env": {"DATABASE_URL": "postgres://db/app", "MODE": "prod"},
        "labels": {"team": "payments", "ctrlplane.instance": "forged"},
        "files": (SecretFile("/etc/app/token", b"t0ken"), SecretFile("/etc/app/tls.key", b"\x00key")),
        "release_id": "rel_01jz8x3k4m5n6p7q8r9s0t1v2y",
        "generation": 3,
        "tenant_quota": QUOTA,
        "probes": (Probe(kind="http", path="/healthz", use="readiness"), Probe(kind="tcp", use="liveness")),
        "routes": (
            HttpRoute(host="shop.example.com"),
            HttpRoute(host="shop.example.com", path="/api", container_port=8080),
            HttpRoute(host="internal.example.com", tls=False),
        ),
        "registry_auth": RegistryAuth(registry="registry.example", username="robot", password="pull-s3cret"),
    }
    values.update(overrides)
    return WorkloadSpec(**values)


def every_manifest(workload: WorkloadSpec, settings: KubernetesSettings = DEFAULT) -> list[dict[str, Any]]:
    built = [
        manifests.namespace(CLUSTER, workload.tenant_id),
        manifests.network_policy(CLUSTER, workload.tenant_id, settings),
        manifests.secret(CLUSTER, workload),
        *([pull] if (pull := manifests.pull_secret(CLUSTER, workload)) is not None else []),
        manifests.service(CLUSTER, workload),
        manifests.service(CLUSTER, workload, pinned_slot="b"),
    ]
    if workload.tenant_quota:
        built += [
            manifests.resource_quota(CLUSTER, workload.tenant_id, workload.tenant_quota),
            manifests.limit_range(CLUSTER, workload.tenant_id, workload.tenant_quota),
        ]
    for strategy in ("rolling", "recreate", "blue_green", "canary"):
        built.append(
            manifests.deployment(CLUSTER, workload, "a", settings, replicas=workload.replicas, strategy=strategy)  # type: ignore[arg-type]
        )
    ingress = manifests.ingress(CLUSTER, workload, settings)
    if ingress is not None:
        built.append(ingress)
    return built


SETTINGS_VARIANTS = {
    "defaults": DEFAULT,
    "cert-manager": KubernetesSettings(ingress_class="nginx", cert_issuer="letsencrypt"),
    "tls-secret": KubernetesSettings(ingress_class="traefik", tls_secret="wildcard-tls", run_as_non_root=False),
    "no-ingress-namespace": KubernetesSettings(ingress_namespace=""),
}
SPEC_VARIANTS = {
    "full": spec(),
    "bare": spec(
        ports=(),
        env={},
        files=(),
        labels={},
        probes=(),
        routes=(),
        registry_auth=None,
        tenant_quota=None,
        release_id=None,
        command=None,
        replicas=1,
    ),
    "command-probe": spec(probes=(Probe(kind="command", command=("/bin/check", "--quick")),), command=("serve", "-v")),
    "long-ids": spec(instance_id="inst_" + "x" * 80, tenant_id="ten_" + "Y" * 80),
    "read-only-root": spec(read_only_root_fs=True),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("settings_name", sorted(SETTINGS_VARIANTS))
@pytest.mark.parametrize("spec_name", sorted(SPEC_VARIANTS))
def test_every_manifest_validates_against_the_kubernetes_schemas(
    version: str, settings_name: str, spec_name: str
) -> None:
    for manifest in every_manifest(SPEC_VARIANTS[spec_name], SETTINGS_VARIANTS[settings_name]):
        kubernetes_validate.validate(manifest, version, strict=True)
        assert DNS_LABEL.fullmatch(manifest["metadata"]["name"]), manifest["metadata"]["name"]


def test_a_manifest_with_a_wrong_field_fails_validation() -> None:
    """The check above can fail: a field Kubernetes does not know is refused."""
    deployment = manifests.deployment(CLUSTER, spec(), "a", DEFAULT, replicas=1)
    deployment["spec"]["template"]["spec"]["containers"][0]["memoryLimit"] = "1Gi"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_the_deployment_carries_labels_limits_secret_refs_probes_and_a_restrictive_security_context() -> None:
    workload = spec()
    deployment = manifests.deployment(CLUSTER, workload, "b", DEFAULT, replicas=2)
    labels = deployment["metadata"]["labels"]
    assert labels == deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["ctrlplane.managed"] == "true"
    assert labels["ctrlplane.cluster"] == CLUSTER
    assert labels["ctrlplane.instance"] == workload.instance_id
    assert labels["ctrlplane.tenant"] == workload.tenant_id
    assert labels["ctrlplane.release"] == workload.release_id
    assert (labels["ctrlplane.generation"], labels["ctrlplane.slot"], labels["team"]) == ("3", "b", "payments")
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "ctrlplane.cluster": CLUSTER,
        "ctrlplane.instance": workload.instance_id,
        "ctrlplane.slot": "b",
    }
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "128Mi"},
        "limits": {"cpu": "250m", "memory": "128Mi"},
    }
    secret = naming.secret_name(workload.instance_id, 3)
    assert container["env"] == [
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": secret, "key": "env.DATABASE_URL"}}},
        {"name": "MODE", "valueFrom": {"secretKeyRef": {"name": secret, "key": "env.MODE"}}},
    ]
    assert container["volumeMounts"] == [
        {"name": "files", "mountPath": "/etc/app/token", "subPath": "file.0", "readOnly": True},
        {"name": "files", "mountPath": "/etc/app/tls.key", "subPath": "file.1", "readOnly": True},
    ]
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == secret and volume["secret"]["defaultMode"] == 0o400
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert container["livenessProbe"]["tcpSocket"] == {"port": 8080}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    recreate = manifests.deployment(CLUSTER, workload, "a", DEFAULT, replicas=2, strategy="recreate")
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}


def test_a_read_only_root_filesystem_keeps_the_whole_security_context_and_a_memory_tmp() -> None:
    workload = spec(read_only_root_fs=True)
    deployment = manifests.deployment(CLUSTER, workload, "a", DEFAULT, replicas=1)
    run = manifests.run_job(
        CLUSTER, RunSpec(run_id="run_01jz8x3k4m5n6p7q8r9s0t1v2z", workload=workload, command=("true",)), DEFAULT
    )
    for pod in (deployment["spec"]["template"]["spec"], run["spec"]["template"]["spec"]):
        (container,) = pod["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}} in pod["volumes"]
    writable = manifests.deployment(CLUSTER, spec(), "a", DEFAULT, replicas=1)
    (container,) = writable["spec"]["template"]["spec"]["containers"]
    assert "readOnlyRootFilesystem" not in container["securityContext"]
    assert all(v["name"] != "tmp" for v in writable["spec"]["template"]["spec"]["volumes"])


def test_a_run_job_and_its_pod_carry_the_instance_labels_under_ctrlplanes() -> None:
    workload = spec(labels={"team": "payments", "ctrlplane.run": "forged", "bad key!": "x"})
    run = manifests.run_job(
        CLUSTER, RunSpec(run_id="run_01jz8x3k4m5n6p7q8r9s0t1v2z", workload=workload, command=("true",)), DEFAULT
    )
    labels = run["metadata"]["labels"]
    assert labels == run["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "payments"
    assert labels["ctrlplane.run"] == "run_01jz8x3k4m5n6p7q8r9s0t1v2z"
    assert labels["ctrlplane.run-instance"] == workload.instance_id
    assert "bad key!" not in labels and "ctrlplane.instance" not in labels


def test_without_health_checks_readiness_is_a_tcp_connect_and_there_is_no_liveness_probe() -> None:
    container = manifests.deployment(CLUSTER, spec(probes=()), "a", DEFAULT, replicas=1)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["readinessProbe"]["tcpSocket"] == {"port": 8080}
    assert "livenessProbe" not in container
    command = manifests.probes(spec(probes=(Probe(kind="command", command=("check",), use="both"),)))
    assert command["readinessProbe"]["exec"] == command["livenessProbe"]["exec"] == {"command": ["check"]}


def test_a_tcp_health_check_without_any_port_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a port"):
        manifests.probes(spec(ports=(), probes=(Probe(kind="tcp"),)))


def test_run_as_non_root_can_be_turned_off_for_images_that_need_root() -> None:
    settings = KubernetesSettings(run_as_non_root=False)
    context = manifests.container_security(settings)
    assert "runAsNonRoot" not in context
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}


def test_tenant_namespaces_enforce_the_restricted_pod_security_standard() -> None:
    labels = manifests.namespace(CLUSTER, "ten_a", DEFAULT)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert labels["ctrlplane.tenant"] == "ten_a"
    rooted = manifests.namespace(CLUSTER, "ten_a", KubernetesSettings(run_as_non_root=False))["metadata"]["labels"]
    assert rooted["pod-security.kubernetes.io/enforce"] == "baseline"
    assert rooted["pod-security.kubernetes.io/warn"] == "restricted"


def test_the_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = manifests.deployment(CLUSTER, spec(), "b", DEFAULT, replicas=1)["spec"]["template"]["spec"]
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(field)
    assert all("hostPath" not in volume for volume in pod["volumes"])
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert context["runAsNonRoot"] is True
        assert not any("hostPort" in port for port in container["ports"])


def test_the_secret_holds_every_env_value_and_file_base64_encoded() -> None:
    secret = manifests.secret(CLUSTER, spec())
    decoded = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert decoded == {
        "env.DATABASE_URL": b"postgres://db/app",
        "env.MODE": b"prod",
        "file.0": b"t0ken",
        "file.1": b"\x00key",
    }
    assert secret["metadata"]["labels"]["ctrlplane.generation"] == "3"


def test_the_tenant_quota_maps_to_a_resource_quota_with_deploy_headroom_and_a_limit_range() -> None:
    quota = manifests.resource_quota(CLUSTER, "ten_a", QUOTA)["spec"]["hard"]
    assert quota == {
        "requests.cpu": "8000m",
        "limits.cpu": "8000m",
        "requests.memory": "16384Mi",
        "limits.memory": "16384Mi",
        "count/deployments.apps": "10",
        "count/services": "5",
    }
    (limits,) = manifests.limit_range(CLUSTER, "ten_a", QUOTA)["spec"]["limits"]
    assert limits["max"] == {"cpu": "4000m", "memory": "8192Mi"}


def test_the_network_policy_lets_in_the_namespace_and_the_ingress_controller_only() -> None:
    policy = manifests.network_policy(CLUSTER, "ten_a", DEFAULT)["spec"]
    assert policy["podSelector"] == {} and policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [
        {
            "from": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
            ]
        }
    ]


def test_the_service_selects_every_slot_unless_pinned() -> None:
    workload = spec()
    assert "ctrlplane.slot" not in manifests.service(CLUSTER, workload)["spec"]["selector"]
    pinned = manifests.service(CLUSTER, workload, pinned_slot="a")
    assert pinned["spec"]["selector"]["ctrlplane.slot"] == "a"
    assert [(p["port"], p["protocol"]) for p in pinned["spec"]["ports"]] == [(8080, "TCP"), (5353, "UDP")]


@pytest.mark.parametrize(
    ("settings", "tls", "annotations"),
    [
        (
            KubernetesSettings(ingress_class="nginx", cert_issuer="letsencrypt"),
            [{"hosts": ["shop.example.com"], "secretName": "inst-01jz8x3k4m5n6p7q8r9s0t1v2w-tls"}],
            {"cert-manager.io/cluster-issuer": "letsencrypt"},
        ),
        (
            KubernetesSettings(ingress_class="nginx", tls_secret="wildcard-tls"),
            [{"hosts": ["shop.example.com"], "secretName": "wildcard-tls"}],
            {},
        ),
        (KubernetesSettings(ingress_class="nginx"), None, {}),
    ],
)
def test_the_ingress_routes_hosts_and_gets_tls_from_cert_manager_or_a_tls_secret(
    settings: KubernetesSettings, tls: Any, annotations: dict[str, str]
) -> None:
    ingress = manifests.ingress(CLUSTER, spec(), settings)
    assert ingress is not None
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"].get("tls") == tls
    assert ingress["metadata"]["annotations"] == annotations
    rules = {rule["host"]: rule["http"]["paths"] for rule in ingress["spec"]["rules"]}
    assert [(p["path"], p["backend"]["service"]["port"]["number"]) for p in rules["shop.example.com"]] == [
        ("/", 8080),
        ("/api", 8080),
    ]
    assert set(rules) == {"shop.example.com", "internal.example.com"}


def test_no_routes_or_no_tcp_port_means_no_ingress() -> None:
    assert manifests.ingress(CLUSTER, spec(routes=()), DEFAULT) is None
    assert (
        manifests.ingress(CLUSTER, spec(ports=(PortSpec(53, "udp"),), routes=(HttpRoute(host="a.example"),)), DEFAULT)
        is None
    )


def test_names_are_dns_labels_and_long_ids_stay_unique() -> None:
    first = naming.namespace_name("c", "ten_" + "a" * 80)
    second = naming.namespace_name("c", "ten_" + "a" * 79 + "b")
    assert DNS_LABEL.fullmatch(first) and DNS_LABEL.fullmatch(second)
    assert len(first) <= 63 and first != second
    assert naming.deployment_name("inst_ABC", "a") == "inst-abc-a"


def test_settings_come_from_ctrlplane_k8s_variables() -> None:
    settings = KubernetesSettings.from_env(
        {
            "CTRLPLANE_K8S_INGRESS_CLASS": "nginx",
            "CTRLPLANE_K8S_CERT_ISSUER": "letsencrypt",
            "CTRLPLANE_K8S_RUN_AS_NON_ROOT": "false",
            "CTRLPLANE_K8S_ROLLOUT_TIMEOUT_SECONDS": "30",
        }
    )
    assert (settings.ingress_class, settings.cert_issuer, settings.run_as_non_root) == ("nginx", "letsencrypt", False)
    assert settings.rollout_timeout_seconds == 30.0
    from ctrlplane.provisioning.registry import ProviderLoadError

    with pytest.raises(ProviderLoadError, match="CTRLPLANE_K8S_"):
        KubernetesSettings.from_env({"CTRLPLANE_K8S_REQUEST_TIMEOUT_SECONDS": "soon"})
