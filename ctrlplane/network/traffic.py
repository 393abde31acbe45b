"""Which replicas the router sends an instance's traffic to (``router_upstreams``).

Outside a deploy, ``follow_status`` keeps the rotation equal to the replicas the provider reports
running (called wherever an observation is recorded). During a deploy the deploy engine owns it
through ``Traffic``: a new replica joins only after its gate passed (``admit``), an old one leaves
*before* its container is removed (``withdraw``, which then waits until Caddy counts no request in
flight to it, at most ``CTRLPLANE_ROUTER_DRAIN_SECONDS``: ``Router.hold`` and ``drained``),
``canary`` gives the canary ``CTRLPLANE_CANARY_TRAFFIC_PERCENT`` of the requests, and ``switch``
leaves one generation alone in rotation. Every change is committed and then pushed to the router at
once, so the next provider call happens only after Caddy has it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.instances.models import Instance
from ctrlplane.network.models import Upstream
from ctrlplane.network.router import Router
from ctrlplane.provisioning.contract import Provider, WorkloadStatus
from ctrlplane.settings import Settings

Key = tuple[int, int, int]
"""(generation, replica, container port)"""


def _serving(
    status: WorkloadStatus, generation: int | None = None, replicas: set[int] | None = None
) -> dict[Key, tuple[str, int]]:
    found: dict[Key, tuple[str, int]] = {}
    for replica in status.replicas:
        if replica.state != "running":
            continue
        if generation is not None and replica.generation != generation:
            continue
        if replicas is not None and replica.replica not in replicas:
            continue
        for endpoint in replica.endpoints:
            if endpoint.protocol == "tcp":
                found[(replica.generation, replica.replica, endpoint.container_port)] = (
                    endpoint.host,
                    endpoint.host_port,
                )
    return found


async def _rows(session: AsyncSession, instance_id: str) -> list[Upstream]:
    statement = select(Upstream).where(Upstream.instance_id == instance_id)
    return list((await session.execute(statement)).scalars())


async def follow_status(session: AsyncSession, instance: Instance, status: WorkloadStatus) -> None:
    """Make the instance's rotation the replicas ``status`` reports running (in the caller's
    transaction)."""
    wanted = _serving(status) if instance.state not in ("destroying", "destroyed") else {}
    rows = await _rows(session, instance.id)
    current = {(r.generation, r.replica, r.container_port): (r.host, r.host_port) for r in rows}
    if current == wanted and all(r.weight == 1 for r in rows):
        return
    await session.execute(delete(Upstream).where(Upstream.instance_id == instance.id))
    await session.flush()
    for (generation, replica, port), (host, host_port) in sorted(wanted.items()):
        session.add(
            Upstream(
                instance_id=instance.id,
                generation=generation,
                replica=replica,
                container_port=port,
                host=host,
                host_port=host_port,
                weight=1,
            )
        )


class Traffic:
    """The deploy engine's hands on the rotation of one provider's instances."""

    def __init__(self, settings: Settings, router: Router, provider: Provider) -> None:
        self.settings = settings
        self.router = router
        self.db = router.db
        self.provider = provider

    async def _push(self) -> None:
        await self.router.sync_quietly()

    async def admit(self, instance_id: str, generation: int, replicas: Iterable[int], *, weight: int = 1) -> None:
        """Put running replicas of ``generation`` into rotation."""
        status = await self.provider.status(instance_id)
        serving = _serving(status, generation, set(replicas))
        async with self.db.write() as session, session.begin():
            for (gen, replica, port), (host, host_port) in serving.items():
                await session.merge(_upstream(instance_id, gen, replica, port, host, host_port, weight))
        await self._push()

    async def withdraw(self, instance_id: str, generation: int, replicas: Iterable[int] | None = None) -> None:
        """Take replicas of ``generation`` (all, or those named) out of rotation, then let requests in
        flight finish before the caller removes their containers."""
        named = None if replicas is None else set(replicas)
        async with self.db.write() as session, session.begin():
            leaving = [
                row
                for row in await _rows(session, instance_id)
                if row.generation == generation and (named is None or row.replica in named)
            ]
            dials = {_dial(row) for row in leaving}
            self.router.hold(dials)
            for row in leaving:
                await session.delete(row)
        if leaving:
            await self._push()
            await self.router.drained(dials)

    async def canary(self, instance_id: str, generation: int, canary_replica: int, percent: int) -> None:
        """Send ``percent`` of the requests to the canary and the rest to the other replicas."""
        status = await self.provider.status(instance_id)
        serving = _serving(status, generation, {canary_replica})
        async with self.db.write() as session, session.begin():
            others = [r for r in await _rows(session, instance_id) if r.generation != generation]
            replicas = {(r.generation, r.replica) for r in others}
            n = max(1, len(replicas))
            for row in others:
                row.weight = 100 - percent
            for (gen, replica, port), (host, host_port) in serving.items():
                await session.merge(_upstream(instance_id, gen, replica, port, host, host_port, percent * n))
        await self._push()

    async def switch(self, instance_id: str, generation: int) -> None:
        """Leave only ``generation``'s running replicas in rotation (equal shares), then drain the rest."""
        status = await self.provider.status(instance_id)
        wanted = _serving(status, generation)
        async with self.db.write() as session, session.begin():
            rows = await _rows(session, instance_id)
            kept = {f"{host}:{host_port}" for host, host_port in wanted.values()}
            dials = {_dial(r) for r in rows if (r.generation, r.replica, r.container_port) not in wanted} - kept
            self.router.hold(dials)
            await session.execute(delete(Upstream).where(Upstream.instance_id == instance_id))
            await session.flush()
            for (gen, replica, port), (host, host_port) in sorted(wanted.items()):
                session.add(_upstream(instance_id, gen, replica, port, host, host_port, 1))
        await self._push()
        await self.router.drained(dials)


def _dial(row: Upstream) -> str:
    return f"{row.host}:{row.host_port}"


def _upstream(
    instance_id: str, generation: int, replica: int, port: int, host: str, host_port: int, weight: int
) -> Upstream:
    return Upstream(
        instance_id=instance_id,
        generation=generation,
        replica=replica,
        container_port=port,
        host=host,
        host_port=host_port,
        weight=weight,
    )
