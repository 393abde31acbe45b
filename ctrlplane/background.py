"""The background's composition root, beside ``app.py`` (the app's): ``Background`` builds and runs
the operation workers, the reconciler, provider health checks, the health-check scheduler, the
metrics sampler and every other loop, started with the app's lifespan and stopped with it.

Every replica runs operation workers (the queue's row locks and leases share the work out). Loops
that must run once per cluster run only on the elected leader (``cluster.LeaderElection``: a
PostgreSQL advisory lock; on SQLite the single process leads). A new singleton loop is wrapped
with one line in ``start``::

    group.start_soon(self.leader_only(self.metrics_loop))

``leader_only(loop)`` starts ``loop`` when this replica becomes the leader and cancels it when it
stops being one (it died, or lost its database connection), so the loop must be safe to cancel at
any await and to resume from the database on another replica. The reconciler, its provider
watches (``watch_loop``: a targeted reconcile per change a provider reports), the metrics
sampler and the environments' lifetime keeper are such loops.

Not leader-only: ``health_loop`` keeps this process's cache of provider health fresh (each
replica has its own connection to each runtime, and requests answer 503 from that cache), so every
replica runs it; the health-check scheduler claims due checks with ``FOR UPDATE SKIP LOCKED``, like
the operation workers, so every replica runs it too and the probes are shared out. So do the
webhook dispatchers (``webhooks/delivery.py``: endpoints and deliveries claimed with SKIP LOCKED
and leases).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import aclosing, suppress
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from ctrlplane.audit import checkpoints
from ctrlplane.cluster import LeaderElection, NotifyRelay, asyncpg_dsn
from ctrlplane.drains.shipper import LogShipper
from ctrlplane.environments.lifetimes import LifetimeKeeper
from ctrlplane.health.scheduler import HealthScheduler
from ctrlplane.network.access import AccessSink, RequestBook
from ctrlplane.network.certificates import CertificateIssuer
from ctrlplane.network.router import config_loads_reset_connections
from ctrlplane.network.sleep import enforce_idle
from ctrlplane.network.wake import WakeServer
from ctrlplane.nodes.monitor import NodeMonitor
from ctrlplane.operations import queue
from ctrlplane.operations.reconciler import Reconciler
from ctrlplane.operations.worker import OperationWorker
from ctrlplane.provisioning.contract import Provider, WatchingProvider
from ctrlplane.runs.executor import RunExecutor, run_once
from ctrlplane.runs.models import Run
from ctrlplane.runs.scheduler import JobScheduler
from ctrlplane.signals import Signal
from ctrlplane.telemetry.sampler import MetricsSampler
from ctrlplane.web.context import AppServices
from ctrlplane.webhooks.delivery import WebhookDispatcher

log = structlog.get_logger("ctrlplane.background")

IDLE_POLL_SECONDS = 1.0
SPARE_WORKER_POLL_FACTOR = 10
"""Idle operation workers other than the poller poll this many times less often (``worker_loop``)."""
ROUTER_POLL_SECONDS = 1.0
CERTIFICATE_POLL_SECONDS = 2.0
WATCH_RETRY_SECONDS = 1.0
RUN_POLL_SECONDS = 1.0
RUN_READS = frozenset({Run.__tablename__})


class IdlePoller:
    """How a pool of idle loops looks for work: **one** loop at a time (the poller) waits for a
    commit that wrote its interest, and polls every ``seconds`` for what no commit announces (a
    retry whose time came, a lease that ran out); the others (spares) wait to be handed the work
    on, polling ``SPARE_WORKER_POLL_FACTOR`` times less often in case a hand-over is lost. A loop
    that claims work wakes one spare, which looks too (and, finding work, wakes the next), so a
    backlog is still taken by all of them in turn; the first to find nothing becomes the poller.

    A commit that queues one operation therefore sends one loop to claim it and one more to look,
    instead of every loop of the pool: on SQLite each look is a read and each claim a write
    transaction, and a stampede of them slowed the winner's own claim (a create's way to its
    container, docs/benchmarks.md). An idle replica costs one read per ``seconds``."""

    def __init__(self, signal: Signal, interest: frozenset[str], seconds: float) -> None:
        self.signal, self.interest, self.seconds = signal, interest, seconds
        self._poller: int | None = None
        self._spares: dict[int, asyncio.Event] = {}

    def found(self, number: int) -> None:
        """Loop ``number`` found work (call it as soon as it has claimed it): it is busy now, so
        one spare looks at once, and polls from then on if it finds nothing."""
        if self._poller == number:
            self._poller = None
        if self._spares:
            _, handed = self._spares.popitem()
            handed.set()

    async def wait(self, number: int, armed: asyncio.Event) -> bool:
        """Loop ``number`` found nothing: the poller waits for a wake-up (``armed``, taken before it
        looked) or its time to poll; a spare, to be handed work or its longer time. True when a
        commit announced work to the poller: its next claim goes straight to the write transaction
        (the look-first read is there to spare an idle look that transaction; this look is not idle,
        and the read cost a create 5-10 ms on its way to the container, docs/benchmarks.md)."""
        if self._poller is None:
            self._poller = number
        if self._poller == number:
            await self.signal.wait(self.seconds, armed)
            return armed.is_set()
        handed = self._spares[number] = asyncio.Event()
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(handed.wait(), self.seconds * SPARE_WORKER_POLL_FACTOR)
        finally:
            if self._spares.get(number) is handed:
                del self._spares[number]
        return False


def _dsn(services: AppServices) -> str | None:
    return asyncpg_dsn(services.settings.resolved_database_url) if services.db.dialect == "postgresql" else None


def start_relay(services: AppServices, group: TaskGroup) -> NotifyRelay | None:
    """On PostgreSQL, carry the ``events`` and ``work`` wake-ups to and from the other replicas, and
    the row cache's invalidations to this one."""
    dsn = _dsn(services)
    if dsn is None:
        return None
    relay = NotifyRelay(
        dsn, {"events": services.events, "work": services.work}, replica=services.replica, rows=services.db.rows
    )
    group.start_soon(relay.run)
    return relay


class Background:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.operations = IdlePoller(services.work, queue.READS, IDLE_POLL_SECONDS)
        self.runs = IdlePoller(services.work, RUN_READS, RUN_POLL_SECONDS)
        self.leader = LeaderElection(
            _dsn(services), lease_seconds=services.settings.leader_lease_seconds, replica=services.replica
        )

    def leader_only(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], Coroutine[Any, Any, None]]:
        """``loop``, run only while this replica is the leader."""

        async def run() -> None:
            while True:
                await self.leader.wait_until(True)
                async with anyio.create_task_group() as group:
                    group.start_soon(loop)
                    await self.leader.wait_until(False)
                    group.cancel_scope.cancel()

        return run

    async def worker_loop(self, number: int) -> None:
        """Operations, one at a time. A committed operation wakes the workers (``work``); what no
        commit announces is found by the one that polls (``IdlePoller``)."""
        worker = OperationWorker(self.services)
        poller = self.operations

        armed, ran = self.services.work.armed(queue.READS), False

        def claimed() -> None:
            nonlocal ran
            ran = True
            poller.found(number)

        def recording() -> None:
            # a commit during the operation is not news once the record looks at the queue itself
            nonlocal armed
            armed = self.services.work.armed(queue.READS)

        announced = False
        while True:
            armed, ran = self.services.work.armed(queue.READS), False
            try:
                if await worker.run_once(claimed=claimed, recording=recording, look_first=not announced):
                    announced = False
                    continue
            except Exception as exc:
                log.error("worker_error", exc_info=exc)
            if ran and armed.is_set():
                # the record found nothing to claim, but a commit since it began announced work it
                # may not have seen (on PostgreSQL, an enqueue that did not lock the instance's row
                # can commit between the record's look and its own commit): look once more now,
                # poller or not
                announced = False
                continue
            announced = await poller.wait(number, armed)

    async def reconcile_loop(self) -> None:
        reconciler = Reconciler(self.services)
        while True:
            try:
                await reconciler.run_once()
                self.services.telemetry.reconciled()
            except Exception as exc:
                log.error("reconcile_error", exc_info=exc)
            await anyio.sleep(self.services.settings.reconcile_interval_seconds)

    async def watch_loop(self) -> None:
        """Reconcile an instance as soon as a provider reports a change to it (between passes)."""
        reconciler = Reconciler(self.services)
        async with anyio.create_task_group() as group:
            for provider in self.services.providers:
                if isinstance(provider, WatchingProvider):
                    group.start_soon(self._watch, reconciler, provider)

    async def _watch(self, reconciler: Reconciler, provider: WatchingProvider) -> None:
        assert isinstance(provider, Provider)
        while True:
            try:
                async with aclosing(provider.changes()) as changes:
                    async for instance_id in changes:
                        await reconciler.reconcile(provider, instance_id)
            except Exception as exc:
                log.warning("provider_watch_error", provider=provider.name, exc_info=exc)
            await anyio.sleep(WATCH_RETRY_SECONDS)

    async def metrics_loop(self) -> None:
        sampler = MetricsSampler(self.services)
        while True:
            try:
                await sampler.run_once()
            except Exception as exc:
                log.error("metrics_sample_error", exc_info=exc)
            await anyio.sleep(self.services.settings.metrics_sample_seconds)

    async def audit_checkpoint_loop(self) -> None:
        """A signed checkpoint of the audit chains' heads, when one moved (``audit/checkpoints.py``)."""
        while True:
            await anyio.sleep(self.services.settings.audit_checkpoint_seconds)
            try:
                async with self.services.db.write() as session, session.begin():
                    await checkpoints.take(session, self.services.checkpoint_keys, only_if_moved=True)
            except Exception as exc:
                log.error("audit_checkpoint_error", exc_info=exc)

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

    async def router_edge(self) -> None:
        """The router's listeners in this process (the access-log sink and the wake listener, on the
        ports they took), then the push loop; what the sink holds is flushed when it stops."""
        services = self.services
        settings, router = services.settings, services.router
        sink: AccessSink | None = None
        wake: WakeServer | None = None
        if reason := config_loads_reset_connections(settings.router_admin_address):
            log.warning("router_config_loads_may_reset_connections", reason=reason)
        try:
            if settings.router_access_log_listen != "none":
                book = RequestBook(router.hosts)
                book.listeners.append(services.telemetry.router_request)
                sink = AccessSink(
                    settings.router_access_log_listen, book, services.db, settings.router_report_flush_seconds
                )
                try:
                    await sink.start()
                except OSError as exc:
                    # the router still serves; only this server's reporting is off
                    log.error("access_log_sink_unavailable", listen=settings.router_access_log_listen, error=str(exc))
                    sink = None
            if settings.router_wake_listen != "none":
                wake = WakeServer(
                    settings,
                    services.db,
                    work=services.work,
                    events=services.events,
                    started=services.started,
                    secret=router.wake_secret,
                    handlers=services.idle_handlers,
                )
                try:
                    await wake.start()
                except OSError as exc:
                    log.error("wake_listener_unavailable", listen=settings.router_wake_listen, error=str(exc))
                    wake = None
            router.listening(
                access_log_address=sink.address if sink else None, wake_address=wake.address if wake else None
            )
            async with anyio.create_task_group() as group:
                if sink is not None:
                    group.start_soon(sink.run_flushes)
                group.start_soon(self.router_loop)
        finally:
            with anyio.CancelScope(shield=True):
                if sink is not None:
                    try:
                        await sink.flush()
                    except Exception as exc:  # noqa: BLE001 - shutting down: say so, lose the batch
                        log.warning("access_flush_failed", error=str(exc))
                    await sink.close()
                if wake is not None:
                    await wake.close()

    async def idle_loop(self) -> None:
        services = self.services
        while True:
            try:
                await enforce_idle(services.db, services.idle_handlers)
            except Exception as exc:
                log.error("idle_check_error", exc_info=exc)
            await anyio.sleep(services.settings.idle_check_seconds)

    async def certificate_loop(self) -> None:
        services = self.services
        issuer = CertificateIssuer(services.settings, services.db, services.router)
        while True:
            try:
                if await issuer.run_once():
                    continue
            except Exception as exc:
                log.error("certificate_error", exc_info=exc)
            await services.work.wait(CERTIFICATE_POLL_SECONDS, interest=CertificateIssuer.READS)

    async def lifetimes_loop(self) -> None:
        keeper = LifetimeKeeper(self.services)
        while True:
            try:
                if await keeper.run_once():
                    continue
            except Exception as exc:
                log.error("environment_lifetimes_error", exc_info=exc)
            await self.services.work.wait(
                self.services.settings.reconcile_interval_seconds, interest=LifetimeKeeper.READS
            )

    async def run_loop(self, number: int) -> None:
        """One-off runs and job firings (``ctrlplane/runs``): claimed with a lease, like operations,
        and woken the same way: by a commit that wrote ``runs`` (not by every commit: waking every
        run worker on each one slowed the operation workers measurably on PostgreSQL), or by the
        one that polls (``IdlePoller``)."""
        executor = RunExecutor(self.services)
        owner = f"{self.services.replica}/run-{number}"
        poller = self.runs
        while True:
            armed = self.services.work.armed(RUN_READS)
            try:
                if await run_once(self.services, executor, owner, claimed=lambda: poller.found(number)):
                    continue
            except Exception as exc:
                log.error("run_worker_error", exc_info=exc)
            await poller.wait(number, armed)

    def start(self, group: TaskGroup) -> None:
        group.start_soon(self.leader.run)
        for number in range(self.services.settings.workers):
            group.start_soon(self.worker_loop, number)
        group.start_soon(self.health_loop)
        for number in range(self.services.settings.run_workers):
            group.start_soon(self.run_loop, number)
        group.start_soon(JobScheduler(self.services).run_forever)
        group.start_soon(self.leader_only(self.reconcile_loop))
        group.start_soon(self.leader_only(self.watch_loop))
        group.start_soon(HealthScheduler(self.services).run_forever)
        group.start_soon(self.leader_only(self.metrics_loop))
        group.start_soon(self.leader_only(self.audit_checkpoint_loop))
        if self.services.router.enabled:
            group.start_soon(self.router_edge)
        group.start_soon(self.leader_only(self.idle_loop))
        group.start_soon(self.leader_only(self.certificate_loop))
        group.start_soon(self.leader_only(self.lifetimes_loop))
        for _ in range(self.services.settings.webhook_workers):
            group.start_soon(WebhookDispatcher(self.services).run_forever)
        group.start_soon(self.leader_only(LogShipper(self.services).run))
        group.start_soon(self.leader_only(NodeMonitor(self.services).run_forever))
