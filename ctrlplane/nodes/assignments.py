"""The desired state of instances on nodes: the door the ``nodes`` provider plugin uses.

``NodeAssignments`` lives on ``AppServices.nodes`` (built in ``build_services``). Every method opens
its own short transaction, so call it from a worker *outside* any transaction, as the provider
contract expects of provider calls. Writes record the desired state and the node's durable event
(``workload_assigned``/``workload_updated``/``workload_removed``) in one transaction, then wake the
node's event stream; retried calls with the same spec change nothing and emit nothing, so a worker
resuming after a crash never duplicates an event. A change of the secrets alone (env or files; the
secret-free spec unchanged) is a ``workload_updated`` (the new revision names the new secret)
followed by ``node_secrets_updated`` naming that secret.

A workload's ``revision`` is the number of the event that announced it, so it only grows on a
node, across a removal and a new assignment too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio
import msgspec
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database
from ctrlplane.errors import Conflict, NotFound
from ctrlplane.ids import new_id
from ctrlplane.nodes.contract import (
    INSTANCE_REPORT_PREFIX,
    ActionRequest,
    EventType,
    NodeSecretsUpdated,
    NodeWorkload,
    SecretRef,
    WorkloadAssigned,
    WorkloadRemoved,
    WorkloadSecrets,
)
from ctrlplane.nodes.events import append_event, reserve_seq
from ctrlplane.nodes.models import (
    Node,
    NodeAssignment,
    NodeExecution,
    NodeLogLine,
    NodeReplicaUsage,
    NodeReport,
)
from ctrlplane.provisioning.contract import (
    LogLine,
    Resources,
    RetainedReplicas,
    Usage,
    WorkloadSpec,
    WorkloadStatus,
)
from ctrlplane.secrets.crypto import Vault
from ctrlplane.signals import Signal
from ctrlplane.timeutil import utc_now


def secret_key(instance_id: str, revision: int) -> str:
    """The name of a workload's secret in ``GET /v1/nodes/{id}/secrets/{key}``."""
    return f"{instance_id}.r{revision}"


def secrets_aad(instance_id: str, revision: int) -> bytes:
    return f"node-workload|{instance_id}|{revision}".encode()


def charged(resources: Resources, replicas: int, retained: Sequence[RetainedReplicas]) -> tuple[int, int]:
    """What an instance holds of its node's capacity (CPU millis, MB): its desired replicas and the
    replicas of other generations the node keeps running beside them during a deploy, each at the
    desired spec's limits (a retained replica's own limits are not kept; a deploy rarely changes them)."""
    count = replicas + sum(len(r.replicas) for r in retained)
    return resources.cpu_millis * count, resources.memory_mb * count


def workload_of(row: NodeAssignment) -> NodeWorkload:
    return NodeWorkload(
        instance_id=row.instance_id,
        revision=row.revision,
        spec=msgspec.convert(row.spec, WorkloadSpec),
        secret=SecretRef(key=secret_key(row.instance_id, row.revision), version=row.revision),
        retained=msgspec.convert(row.retained or [], list[RetainedReplicas]),
    )


@dataclass(frozen=True)
class Desired:
    """What an instance's node is told to run: ``replicas`` of ``generation``, plus ``retained``."""

    node_id: str
    generation: int
    replicas: int
    retained: tuple[RetainedReplicas, ...]
    spec: WorkloadSpec
    """The spec without its secrets (env and files empty)."""


@dataclass(frozen=True)
class Placement:
    """Where an instance runs and whether its node can be reached (for the provider's status)."""

    node_id: str
    node_state: str
    """``ready``, ``unreachable``, ``cordoned``, ``draining`` or ``deregistered``."""
    last_heartbeat_at: datetime | None


def node_state(node: Node) -> str:
    if node.status != "active":
        return "deregistered"
    if node.unreachable:
        return "unreachable"
    if node.draining:
        return "draining"
    if node.cordoned:
        return "cordoned"
    return "ready"


class NodeAssignments:
    """Places instances on nodes and reads back what the nodes report about them."""

    def __init__(self, db: Database, vault: Vault, node_events: Signal) -> None:
        self.db = db
        self.vault = vault
        self.node_events = node_events

    async def assign(self, node_id: str, spec: WorkloadSpec, retained: Sequence[RetainedReplicas] = ()) -> int:
        """Place ``spec``'s instance on ``node_id`` (or update it there); returns its revision.
        ``NotFound`` for an unknown or deregistered node; ``Conflict`` when the instance is
        already placed on another node (``remove`` it there first)."""
        return await self._write(node_id, spec, retained, must_exist=False)

    async def update(self, node_id: str, spec: WorkloadSpec, retained: Sequence[RetainedReplicas] = ()) -> int:
        """A new spec (a deploy, a scale, new secrets) for an instance already on ``node_id``;
        ``NotFound`` when it is not placed there. ``retained``: replicas of other generations the
        node keeps running beside it (``NodeWorkload.retained``)."""
        return await self._write(node_id, spec, retained, must_exist=True)

    async def desired(self, instance_id: str) -> Desired | None:
        async with self.db.read() as session:
            row = await session.get(NodeAssignment, instance_id)
            if row is None:
                return None
            workload = workload_of(row)
            return Desired(
                node_id=row.node_id,
                generation=workload.spec.generation,
                replicas=workload.spec.replicas,
                retained=tuple(workload.retained),
                spec=workload.spec,
            )

    async def reshape(
        self, instance_id: str, *, retained: Sequence[RetainedReplicas], replicas: int | None = None
    ) -> int | None:
        """Change what the instance's node keeps of other generations (and, with ``replicas``, the
        replica count of its own generation) without a new spec: a new revision whose secret is the
        same plaintext sealed for it. Returns the revision; None when the instance is on no node."""
        wanted = [msgspec.to_builtins(r) for r in retained]
        async with self.db.write() as session, session.begin():
            row = await session.get(NodeAssignment, instance_id, with_for_update=True)
            if row is None:
                return None
            spec = dict(row.spec)
            if replicas is not None:
                spec["replicas"] = replicas
            if (row.retained or []) == wanted and spec == row.spec:
                return row.revision
            resources = msgspec.convert(spec["resources"], Resources)
            row.cpu_millis, row.memory_mb = charged(resources, int(spec["replicas"]), retained)
            plaintext = await self.vault.open(
                session, row.tenant_id, row.secrets_sealed, aad=secrets_aad(row.instance_id, row.revision)
            )
            revision = await reserve_seq(session, row.node_id)
            row.secrets_sealed = await self.vault.seal(
                session, row.tenant_id, plaintext, aad=secrets_aad(instance_id, revision)
            )
            row.revision = revision
            row.spec = spec
            row.retained = wanted
            row.updated_at = utc_now()
            await session.flush()
            node_id = row.node_id
            await append_event(
                session, node_id, "workload_updated", WorkloadAssigned(workload=workload_of(row)), seq=revision
            )
        await self.node_events.notify()
        return revision

    async def remove(self, node_id: str, instance_id: str) -> None:
        """Take the instance off the node (the node stops and removes its containers). Removing
        what is not there is a no-op."""
        async with self.db.write() as session, session.begin():
            row = await session.get(NodeAssignment, instance_id, with_for_update=True)
            if row is None or row.node_id != node_id:
                return
            await session.execute(delete(NodeAssignment).where(NodeAssignment.instance_id == instance_id))
            await session.execute(
                delete(NodeReport).where(
                    NodeReport.node_id == node_id, NodeReport.key == INSTANCE_REPORT_PREFIX + instance_id
                )
            )
            await session.execute(delete(NodeReplicaUsage).where(NodeReplicaUsage.instance_id == instance_id))
            revision = await reserve_seq(session, node_id)
            removed = WorkloadRemoved(instance_id=instance_id, revision=revision)
            await append_event(session, node_id, "workload_removed", removed, seq=revision)
        await self.node_events.notify()

    async def placement(self, instance_id: str) -> Placement | None:
        async with self.db.read() as session:
            row = await session.get(NodeAssignment, instance_id)
            if row is None:
                return None
            node = await session.get(Node, row.node_id)
            if node is None:
                return None
            return Placement(node_id=node.id, node_state=node_state(node), last_heartbeat_at=node.last_heartbeat_at)

    async def reported_status(self, instance_id: str) -> WorkloadStatus | None:
        """The status the instance's node last reported for it (report key ``instance/{id}``), or
        None when it is not placed or its node has not reported it yet. Check ``placement`` for
        whether the node is reachable: a report from an unreachable node is stale."""
        async with self.db.read() as session:
            row = await session.get(NodeAssignment, instance_id)
            if row is None:
                return None
            report = await session.get(NodeReport, (row.node_id, INSTANCE_REPORT_PREFIX + instance_id))
            if report is None:
                return None
            try:
                return msgspec.convert(report.payload, WorkloadStatus)
            except msgspec.ValidationError:
                return None

    async def replica_usage(self, instance_id: str) -> dict[tuple[int, int], Usage]:
        """Each replica's latest usage its node shipped (metric records of group ``replica``), by
        ``(generation, replica)``, if it is at most ``REPLICA_USAGE_FRESH`` old (an older one is of
        a replica that stopped running, or of a node that stopped shipping)."""
        cutoff = utc_now() - REPLICA_USAGE_FRESH
        async with self.db.read() as session:
            placed = await session.get(NodeAssignment, instance_id)
            if placed is None:
                return {}
            rows: Sequence[NodeReplicaUsage] = (
                (
                    await session.execute(
                        select(NodeReplicaUsage).where(
                            NodeReplicaUsage.instance_id == instance_id,
                            NodeReplicaUsage.node_id == placed.node_id,
                            NodeReplicaUsage.at >= cutoff,
                        )
                    )
                )
                .scalars()
                .all()
            )
        return {
            (row.generation, row.replica): Usage(
                cpu_percent=row.cpu_percent,
                memory_used_bytes=row.memory_used_bytes,
                memory_limit_bytes=row.memory_limit_bytes,
                network_rx_bytes=row.network_rx_bytes,
                network_tx_bytes=row.network_tx_bytes,
                restarts=row.restarts,
            )
            for row in rows
        }

    async def logs(self, instance_id: str, *, tail: int | None = None, since: datetime | None = None) -> list[LogLine]:
        """The instance's log lines its node shipped (oldest first)."""
        statement = select(NodeLogLine).where(NodeLogLine.instance_id == instance_id)
        if since is not None:
            statement = statement.where(NodeLogLine.at >= since)
        statement = statement.order_by(NodeLogLine.at.desc(), NodeLogLine.id.desc())
        if tail is not None:
            statement = statement.limit(tail)
        async with self.db.read() as session:
            rows: Sequence[NodeLogLine] = (await session.execute(statement)).scalars().all()
        return [
            LogLine(timestamp=row.at, replica=row.replica, stream=row.stream, message=row.message)  # type: ignore[arg-type]
            for row in reversed(rows)
        ]

    async def execute(
        self, node_id: str, action: str, parameters: dict[str, object], *, timeout: float
    ) -> ExecutionOutcome:
        """Send the node an ``action_request`` (seed 002) and wait up to ``timeout`` seconds for its
        result (``POST .../executions/{id}/result``). The outcome's ``status`` is the result's, or
        ``rejected`` (the node refused it), or ``no_answer`` (nothing in time: the node is
        unreachable, or slow). ``NotFound`` for an unknown or deregistered node."""
        execution_id = new_id("exec")
        async with self.db.write() as session, session.begin():
            node = await session.get(Node, node_id)
            if node is None or node.status != "active":
                raise NotFound(f"node {node_id} not found")
            now = utc_now()
            session.add(
                NodeExecution(
                    id=execution_id,
                    node_id=node_id,
                    action=action,
                    parameters=dict(parameters),
                    status="requested",
                    reason="",
                    result=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            await session.flush()
            request = ActionRequest(
                execution_id=execution_id,
                action=action,
                parameters=dict(parameters),
                timeout=f"{max(1, int(timeout))}s",
                callback_url=f"/v1/nodes/{node_id}/executions/{execution_id}/result",
            )
            await append_event(session, node_id, "action_request", request)
        await self.node_events.notify()
        with anyio.move_on_after(timeout):
            while True:
                async with self.db.read() as session:
                    row = await session.get(NodeExecution, execution_id)
                    if row is not None and row.status not in ("requested", "accepted"):
                        return ExecutionOutcome(status=row.status, reason=row.reason, result=row.result or {})
                await anyio.sleep(EXECUTION_POLL_SECONDS)
        async with self.db.write() as session, session.begin():
            row = await session.get(NodeExecution, execution_id, with_for_update=True)
            if row is not None and row.status in ("requested", "accepted"):
                # a late answer finds it settled and changes nothing
                row.status, row.reason, row.updated_at = "cancelled", "no answer in time", utc_now()
            elif row is not None:
                return ExecutionOutcome(status=row.status, reason=row.reason, result=row.result or {})
        return ExecutionOutcome(status="no_answer", reason=f"node {node_id} did not answer within {timeout:g}s")

    async def candidates(self, pool: str, tenant_id: str) -> list[NodeCapacityView]:
        """Nodes of ``pool`` that can take new instances of ``tenant_id`` (ready: not cordoned,
        draining or unreachable; pool-wide or the tenant's own), with their free capacity, the
        freest first. Placement picks from these; ctrlplane does no cross-node scheduling."""
        async with self.db.read() as session:
            nodes = (
                (
                    await session.execute(
                        select(Node).where(
                            Node.pool == pool,
                            Node.status == "active",
                            Node.cordoned.is_(False),
                            Node.draining.is_(False),
                            Node.unreachable.is_(False),
                        )
                    )
                )
                .scalars()
                .all()
            )
            views = []
            for node in nodes:
                if node.tenant_id is not None and node.tenant_id != tenant_id:
                    continue
                used_cpu, used_memory = await _used(session, node.id)
                views.append(
                    NodeCapacityView(
                        node_id=node.id,
                        hostname=node.hostname,
                        labels=dict(node.node_metadata),
                        free_cpu_millis=node.cpu_millis - used_cpu,
                        free_memory_mb=node.memory_mb - used_memory,
                    )
                )
        return sorted(views, key=lambda view: (-view.free_memory_mb, -view.free_cpu_millis, view.node_id))

    async def _write(
        self, node_id: str, spec: WorkloadSpec, retained: Sequence[RetainedReplicas], *, must_exist: bool
    ) -> int:
        # through JSON, so it compares equal to what the JSON column gives back (lists, not tuples)
        stripped: dict[str, object] = msgspec.json.decode(
            msgspec.json.encode(msgspec.structs.replace(spec, env={}, files=()))
        )
        secrets = msgspec.json.encode(WorkloadSecrets(env=dict(spec.env), files=list(spec.files)))
        async with self.db.write() as session, session.begin():
            node = await session.get(Node, node_id)
            if node is None or node.status != "active":
                raise NotFound(f"node {node_id} not found")
            row = await session.get(NodeAssignment, spec.instance_id, with_for_update=True)
            if row is not None and row.node_id != node_id:
                raise Conflict(f"instance {spec.instance_id} is placed on node {row.node_id}")
            if row is None and must_exist:
                raise NotFound(f"instance {spec.instance_id} is not placed on node {node_id}")
            kept = [msgspec.to_builtins(r) for r in retained]
            if row is not None and row.spec == stripped and (row.retained or []) == kept:
                current = await self.vault.open(
                    session, row.tenant_id, row.secrets_sealed, aad=secrets_aad(row.instance_id, row.revision)
                )
                if current == secrets:
                    return row.revision
            if node.tenant_id is not None and node.tenant_id != spec.tenant_id:
                raise Conflict(f"node {node_id} runs only tenant {node.tenant_id}'s instances")
            if row is None and node.cordoned:
                raise Conflict(f"node {node_id} is cordoned: no new placements")
            kind: EventType = "workload_assigned" if row is None else "workload_updated"
            secrets_only = row is not None and row.spec == stripped and (row.retained or []) == kept
            now = utc_now()
            revision = await reserve_seq(session, node_id)  # the announcing event's number: only grows
            aad = secrets_aad(spec.instance_id, revision)
            sealed = await self.vault.seal(session, spec.tenant_id, secrets, aad=aad)
            if row is None:
                row = NodeAssignment(instance_id=spec.instance_id, node_id=node_id, assigned_at=now)
                session.add(row)
            row.tenant_id = spec.tenant_id
            row.revision = revision
            row.spec = stripped
            row.retained = kept
            row.secrets_sealed = sealed
            row.cpu_millis, row.memory_mb = charged(spec.resources, spec.replicas, retained)
            row.updated_at = now
            await session.flush()
            workload = workload_of(row)
            await append_event(session, node_id, kind, WorkloadAssigned(workload=workload), seq=revision)
            if secrets_only:
                await append_event(
                    session, node_id, "node_secrets_updated", NodeSecretsUpdated(secrets=[workload.secret])
                )
        await self.node_events.notify()
        return revision


EXECUTION_POLL_SECONDS = 0.1

REPLICA_USAGE_FRESH = timedelta(minutes=2)
"""How old a replica's shipped usage may be and still be shown (the agent ships every 10 s by default)."""

INSTANCE_ACTIONS = ("ctrlplane.instance.restart", "ctrlplane.instance.exec", "ctrlplane.instance.kill")
"""The actions the nodes provider sends (``NodeAssignments.execute``); not for the admin API."""


@dataclass(frozen=True)
class ExecutionOutcome:
    status: str
    """``success``, ``failure``, ``timeout``, ``cancelled``, ``rejected`` or ``no_answer``."""
    reason: str = ""
    result: dict[str, object] = field(default_factory=dict)
    """The node's ``ExecutionResult`` (``exit_code``, ``stdout``, ``stderr``, ...)."""


@dataclass(frozen=True)
class NodeCapacityView:
    node_id: str
    hostname: str
    labels: dict[str, str]
    free_cpu_millis: int
    free_memory_mb: int


async def _used(session: AsyncSession, node_id: str) -> tuple[int, int]:
    from sqlalchemy import func

    statement = select(
        func.coalesce(func.sum(NodeAssignment.cpu_millis), 0), func.coalesce(func.sum(NodeAssignment.memory_mb), 0)
    ).where(NodeAssignment.node_id == node_id)
    cpu, memory = (await session.execute(statement)).one()
    return int(cpu), int(memory)
