"""Errors a provider raises; providers translate their SDK's exceptions into these at the boundary.

They are domain errors, so an API call that reaches a provider directly maps them to HTTP in the
one place (``ProviderUnavailable`` → 503); workers record them on the operation and the instance.
"""

from __future__ import annotations

from ctrlplane.errors import CtrlplaneError, InvalidInput, NotFound
from ctrlplane.errors import ProviderUnavailable as ProviderUnavailable


class ProviderError(CtrlplaneError):
    """The runtime refused or failed a request (not a connectivity problem)."""

    status, code = 502, "provider_error"


class ImageNotFound(InvalidInput):
    code = "image_not_found"


class WorkloadNotFound(NotFound):
    code = "workload_not_found"


__all__ = ["ImageNotFound", "ProviderError", "ProviderUnavailable", "WorkloadNotFound"]
