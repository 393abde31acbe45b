"""The Docker provider, on the ``docker`` SDK. The engine comes from ``DOCKER_HOST`` or the default
socket. The SDK blocks, so every call runs in a worker thread, never on the event loop."""

from __future__ import annotations

from typing import Any

import anyio
import docker
from docker.errors import DockerException

from ctrlplane.provisioning.contract import ProviderHealth
from ctrlplane.settings import Settings


class DockerProvider:
    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            self._client = docker.from_env(timeout=10)
        return self._client

    async def ping(self) -> ProviderHealth:
        def ping_engine() -> ProviderHealth:
            try:
                client = self._connect()
                client.ping()
                version = client.version().get("Version", "unknown")
            except (DockerException, OSError) as exc:
                self._client = None
                return ProviderHealth(False, f"Docker engine unreachable: {exc}")
            return ProviderHealth(True, f"Docker engine {version}")

        return await anyio.to_thread.run_sync(ping_engine)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await anyio.to_thread.run_sync(client.close)
