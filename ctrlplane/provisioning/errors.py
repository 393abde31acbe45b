"""Errors a provider raises; providers translate their SDK's exceptions into these at the boundary.

    ProviderError           502 provider_error        the runtime refused or failed a request
      ProviderUnavailable   503 provider_unavailable  the runtime cannot be reached
      ImageNotFound         400 image_not_found       no such image, or it may not be pulled
      WorkloadNotFound      404 workload_not_found    the instance has no objects where some are needed

``ProviderError`` is their root: a provider catches what it raised itself with
``except ProviderError``, never with the core's ``CtrlplaneError``. They are domain errors too
(``ProviderUnavailable`` is an ``Unavailable``, ``ImageNotFound`` an ``InvalidInput``,
``WorkloadNotFound`` a ``NotFound``), so an API call that reaches a provider directly maps them to
HTTP in the one place; workers record them on the operation and the instance.

``ProviderLoadError`` is not a domain error: a provider's factory raises it for settings it cannot
use, and ``ctrlplane serve`` stops (exit 2) with its message.
"""

from __future__ import annotations

from ctrlplane.errors import InvalidInput, NotFound
from ctrlplane.errors import ProviderError as ProviderError
from ctrlplane.errors import ProviderUnavailable as ProviderUnavailable


class ProviderLoadError(RuntimeError):
    """A provider cannot be loaded: not installed, or its settings are unusable (the message names
    the variable)."""


class ImageNotFound(InvalidInput, ProviderError):
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


class WorkloadNotFound(NotFound, ProviderError):
    code = "workload_not_found"


__all__ = [
    "PULL_FAILURES",
    "ImageNotFound",
    "ProviderError",
    "ProviderLoadError",
    "ProviderUnavailable",
    "WorkloadNotFound",
    "pull_failed",
]
