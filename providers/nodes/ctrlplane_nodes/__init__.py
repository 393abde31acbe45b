"""ctrlplane's ``nodes`` provider plugin (``CTRLPLANE_PROVIDERS=docker,nodes``)."""

from ctrlplane_nodes.provider import NodesProvider

__all__ = ["NodesProvider"]
