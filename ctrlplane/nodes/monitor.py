"""``NodeMonitor``: the leader's loop that marks silent nodes ``unreachable`` and prunes node logs
and the node events no replay needs (``prune_events``).

A node whose last heartbeat is older than ``CTRLPLANE_NODE_HEARTBEAT_TIMEOUT`` becomes
``unreachable`` (the nodes provider then reports its instances ``unknown``, with the reason); its
next heartbeat clears the mark and answers ``{"reconcile": true}``, so it converges at once.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
import structlog

from ctrlplane.nodes.service import mark_unreachable, prune_events, prune_logs
from ctrlplane.web.context import AppServices

log = structlog.get_logger(__name__)


class NodeMonitor:
    def __init__(self, services: AppServices) -> None:
        self.services = services

    async def run_once(self) -> list[str]:
        """One pass; the IDs of the nodes it marked unreachable."""
        settings = self.services.settings
        async with self.services.db.write() as session, session.begin():
            marked = await mark_unreachable(session, timedelta(seconds=settings.node_heartbeat_timeout_seconds))
            await prune_logs(session, timedelta(seconds=settings.node_log_retention_seconds))
            await prune_events(session, timedelta(seconds=settings.node_event_retention_seconds))
        for node_id in marked:
            log.warning("node_unreachable", node_id=node_id)
        if marked:
            await self.services.work.notify()
        return marked

    async def run_forever(self) -> None:
        interval = max(0.2, min(10.0, self.services.settings.node_heartbeat_timeout_seconds / 4))
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                log.error("node_monitor_error", exc_info=exc)
            await anyio.sleep(interval)  # not the work signal: that fires on every commit
