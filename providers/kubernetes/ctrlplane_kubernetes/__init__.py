"""ctrlplane's Kubernetes provider: runs instances as Deployments in one namespace per tenant."""

from ctrlplane_kubernetes.provider import KubernetesProvider

__all__ = ["KubernetesProvider"]
