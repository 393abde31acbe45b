"""Translation of the ``docker`` SDK's exceptions into ``ctrlplane.provisioning.errors``.

* The engine cannot be reached (no socket, connection refused or reset, a timeout, a proxy in front
  of it answering 502/503/504) → ``ProviderUnavailable("Docker engine unreachable: ...")``.
* An image that is not there → ``ImageNotFound``.
* Anything else the engine refused → ``ProviderError`` carrying the engine's own explanation.

ctrlplane errors raised inside the block pass through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests  # type: ignore[import-untyped, unused-ignore]
from docker.errors import APIError, DockerException  # type: ignore[import-untyped, unused-ignore]
from docker.errors import ImageNotFound as DockerImageNotFound  # type: ignore[import-untyped, unused-ignore]

from ctrlplane.provisioning.errors import ImageNotFound, ProviderError, ProviderUnavailable

GATEWAY_STATUSES = frozenset({502, 503, 504})


def explanation(exc: APIError) -> str:
    """The engine's own words for a refusal, without the SDK's URL noise."""
    text = exc.explanation
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text or exc).strip()


def unreachable(exc: BaseException) -> ProviderUnavailable:
    return ProviderUnavailable(f"Docker engine unreachable: {exc}", details={"provider": "docker"})


def is_not_found(exc: APIError) -> bool:
    return bool(exc.status_code == 404)


def is_conflict(exc: APIError) -> bool:
    return bool(exc.status_code == 409)


@contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Run a block of SDK calls, re-raising what escapes as a ctrlplane provisioning error."""
    try:
        yield
    except DockerImageNotFound as exc:
        raise ImageNotFound(f"image not found while trying to {action}", details={"reason": "not_found"}) from exc
    except APIError as exc:
        if exc.status_code in GATEWAY_STATUSES:
            raise unreachable(exc) from exc
        raise ProviderError(
            f"Docker engine refused to {action}: {explanation(exc)}",
            details={"provider": "docker", "status": exc.status_code},
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise unreachable(exc) from exc
    except DockerException as exc:
        raise ProviderError(f"Docker SDK failed to {action}: {exc}", details={"provider": "docker"}) from exc
    except OSError as exc:
        raise unreachable(exc) from exc
