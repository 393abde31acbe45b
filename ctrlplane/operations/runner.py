"""The background: operation workers, the reconciler and provider health checks, started with the
app and stopped with it."""

from __future__ import annotations

import anyio
import structlog
from anyio.abc import TaskGroup

from ctrlplane.context import AppServices
from ctrlplane.network.certificates import CertificateIssuer
from ctrlplane.operations.reconciler import Reconciler
from ctrlplane.operations.worker import OperationWorker

log = structlog.get_logger("ctrlplane.background")

IDLE_POLL_SECONDS = 1.0
ROUTER_POLL_SECONDS = 1.0
CERTIFICATE_POLL_SECONDS = 2.0


class Background:
    def __init__(self, services: AppServices) -> None:
        self.services = services

    async def _idle(self) -> None:
        await self.services.work.wait(IDLE_POLL_SECONDS)

    async def worker_loop(self) -> None:
        worker = OperationWorker(self.services)
        while True:
            try:
                if await worker.run_once():
                    continue
            except Exception as exc:
                log.error("worker_error", exc_info=exc)
            await self._idle()

    async def reconcile_loop(self) -> None:
        reconciler = Reconciler(self.services)
        while True:
            try:
                await reconciler.run_once()
            except Exception as exc:
                log.error("reconcile_error", exc_info=exc)
            await anyio.sleep(self.services.settings.reconcile_interval_seconds)

    async def health_loop(self) -> None:
        registry = self.services.providers
        while True:
            try:
                await registry.refresh()
            except Exception as exc:
                log.error("provider_health_error", exc_info=exc)
            await anyio.sleep(registry.HEALTH_TTL_SECONDS / 2)

    async def router_loop(self) -> None:
        router = self.services.router
        while True:
            await router.sync_quietly()
            await self.services.work.wait(ROUTER_POLL_SECONDS)

    async def certificate_loop(self) -> None:
        services = self.services
        issuer = CertificateIssuer(services.settings, services.db, services.router)
        while True:
            try:
                if await issuer.run_once():
                    continue
            except Exception as exc:
                log.error("certificate_error", exc_info=exc)
            await services.work.wait(CERTIFICATE_POLL_SECONDS)

    def start(self, group: TaskGroup) -> None:
        for _ in range(self.services.settings.workers):
            group.start_soon(self.worker_loop)
        group.start_soon(self.reconcile_loop)
        group.start_soon(self.health_loop)
        if self.services.router.enabled:
            group.start_soon(self.router_loop)
        group.start_soon(self.certificate_loop)
