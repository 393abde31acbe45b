"""Translation of the ``kubernetes`` client's exceptions into ``ctrlplane.provisioning.errors``.

* The API server cannot be reached (connection refused or reset, a timeout, TLS failure, or a
  502/503/504 from it or a proxy in front of it) → ``ProviderUnavailable`` (503 to API callers).
* 403 → ``ProviderError`` saying which RBAC permission the control plane lacks (docs/kubernetes.md
  has the Role it needs).
* Anything else refused → ``ProviderError`` with the API server's own message.

404 and 409 are not errors at this boundary: callers check ``status_of`` and adopt or skip.
Provisioning errors raised inside the block pass through untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException, OpenApiException

from ctrlplane.provisioning.errors import ProviderError, ProviderUnavailable

GATEWAY_STATUSES = frozenset({502, 503, 504})


class UsageUnavailable(ProviderError):
    """The cluster does not serve ``metrics.k8s.io`` (no metrics-server), so there is no usage to
    report; never reported as zeros."""

    status, code = 503, "usage_unavailable"


class ClusterQuotaExceeded(ProviderError):
    """The tenant namespace's ResourceQuota (admission, at the API server) refused an object: the
    tenant's cluster quota is used up. Details name the quota and the resources it refused."""

    status, code = 403, "quota_exceeded"


QUOTA_REFUSAL = re.compile(r"exceeded quota: ([^,]+), requested: (.*?), used: (.*?), limited: (.*)$")


def quota_exceeded(message: str, action: str) -> ClusterQuotaExceeded | None:
    """The error for an API server message that is a ResourceQuota refusal (``exceeded quota: NAME,
    requested: ..., used: ..., limited: ...``), else ``None``."""
    match = QUOTA_REFUSAL.search(message)
    if match is None:
        return None
    quota, requested, used, limited = (part.strip() for part in match.groups())
    return ClusterQuotaExceeded(
        f"the tenant's Kubernetes quota {quota} refused to {action}: requested {requested}, used {used}, "
        f"limit {limited}",
        details={"provider": "kubernetes", "quota": quota, "requested": requested, "used": used, "limit": limited},
    )


def api_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if message:
            return str(message)
    return str(exc.reason or exc.status)


def unreachable(exc: BaseException) -> ProviderUnavailable:
    return ProviderUnavailable(f"Kubernetes API unreachable: {exc}", details={"provider": "kubernetes"})


@contextmanager
def api_errors(action: str) -> Iterator[None]:
    """Run a block of client calls, re-raising what escapes as a ctrlplane provisioning error."""
    try:
        yield
    except ApiException as exc:
        if not exc.status or exc.status in GATEWAY_STATUSES:
            raise unreachable(exc) from exc
        if exc.status == 403:
            refused = quota_exceeded(api_message(exc), action)
            if refused is not None:
                raise refused from exc
            raise ProviderError(
                f"Kubernetes refused to {action}: forbidden ({api_message(exc)}); the control plane's "
                "service account needs the RBAC in docs/kubernetes.md",
                details={"provider": "kubernetes", "status": 403},
            ) from exc
        if exc.status == 401:
            raise ProviderError(
                f"Kubernetes refused to {action}: unauthorized ({api_message(exc)}); check the kubeconfig "
                "or the service account token",
                details={"provider": "kubernetes", "status": 401},
            ) from exc
        raise ProviderError(
            f"Kubernetes refused to {action}: {api_message(exc)}",
            details={"provider": "kubernetes", "status": exc.status},
        ) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise unreachable(exc) from exc
    except OpenApiException as exc:
        raise ProviderError(f"Kubernetes client failed to {action}: {exc}", details={"provider": "kubernetes"}) from exc


def status_of(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, ApiException) else None
