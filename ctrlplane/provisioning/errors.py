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


PULL_FAILURES = {
    "not_found": "the registry has no such image, or denied access to it",
    "unreachable": "the registry could not be reached",
    "refused": "the registry refused the pull",
}
"""The only words a tenant sees about a failed pull. The engine's own text differs with what
answers at the registry's address (refused, timed out, not TLS, not a registry): shown to a tenant,
it would make image pulls a port scanner. Providers log it for the operator instead."""
_NOT_FOUND = ("not found", "manifest unknown", "unauthorized", "denied", "no such image", "does not exist")
_UNREACHABLE = (
    "connection refused", "no such host", "timeout", "timed out", "i/o", "eof", "tls", "certificate",
    "http response to https", "unreachable", "no route", "dial tcp", "connection reset", "lookup",
)  # fmt: skip


def pull_failed(image: str, engine_text: str) -> ImageNotFound:
    """The classified ``ImageNotFound`` for a pull that failed with ``engine_text``."""
    text = engine_text.lower()
    kind = (
        "not_found"
        if any(m in text for m in _NOT_FOUND)
        else "unreachable"
        if any(m in text for m in _UNREACHABLE)
        else "refused"
    )
    return ImageNotFound(
        f"image {image[:256]!r} could not be pulled: {PULL_FAILURES[kind]}",
        details={"image": image[:256], "reason": kind},
    )


class WorkloadNotFound(NotFound):
    code = "workload_not_found"


__all__ = ["PULL_FAILURES", "ImageNotFound", "ProviderError", "ProviderUnavailable", "WorkloadNotFound", "pull_failed"]
