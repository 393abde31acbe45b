"""The Kubernetes provider's own settings, ``CTRLPLANE_K8S_*``, read by its factory (never at import
time) from ``ProviderSettings.environ``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ctrlplane.provisioning.errors import ProviderLoadError


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class KubernetesSettings:
    """``CTRLPLANE_K8S_*`` settings; see docs/kubernetes.md.

    * ``ingress_class``: the IngressClass of every Ingress (empty: the cluster's default class).
    * ``cert_issuer``: a cert-manager ClusterIssuer; when set, TLS hosts get
      ``cert-manager.io/cluster-issuer`` and a per-instance certificate Secret.
    * ``tls_secret``: a TLS Secret (in each tenant namespace) to serve TLS hosts with when no
      issuer is set, e.g. one the certificate flow writes.
    * ``ingress_namespace``: the ingress controller's namespace, the one other namespace whose pods
      the tenant NetworkPolicy lets in.
    * ``run_as_non_root``: ``runAsNonRoot`` on every container (kubelet refuses an image whose user is
      root; the instance then fails with that reason).
    * ``rollout_timeout_seconds``: how long a call that starts replicas waits for them to run.
    * ``request_timeout_seconds``: the timeout of one API request.
    """

    ingress_class: str = ""
    cert_issuer: str = ""
    tls_secret: str = ""
    ingress_namespace: str = "ingress-nginx"
    run_as_non_root: bool = True
    rollout_timeout_seconds: float = 60.0
    request_timeout_seconds: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KubernetesSettings:
        env = os.environ if environ is None else environ
        prefix = "CTRLPLANE_K8S_"
        try:
            return cls(
                ingress_class=env.get(prefix + "INGRESS_CLASS", ""),
                cert_issuer=env.get(prefix + "CERT_ISSUER", ""),
                tls_secret=env.get(prefix + "TLS_SECRET", ""),
                ingress_namespace=env.get(prefix + "INGRESS_NAMESPACE", "ingress-nginx"),
                run_as_non_root=_flag(env.get(prefix + "RUN_AS_NON_ROOT", "true")),
                rollout_timeout_seconds=float(env.get(prefix + "ROLLOUT_TIMEOUT_SECONDS", "60")),
                request_timeout_seconds=float(env.get(prefix + "REQUEST_TIMEOUT_SECONDS", "10")),
            )
        except ValueError as exc:
            raise ProviderLoadError(f"invalid CTRLPLANE_K8S_* setting: {exc}") from exc
