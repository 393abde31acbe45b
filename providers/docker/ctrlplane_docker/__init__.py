"""ctrlplane's Docker provider: runs instances as containers on a Docker engine."""

from ctrlplane_docker.provider import DockerProvider

__all__ = ["DockerProvider"]
