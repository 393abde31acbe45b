"""The rules of nodes: enrolment, node identity, the node API of seed 002, and the admins' controls.

``AdminNodes`` serves system admins through the ordinary request boundary (``RequestContext``).
``NodeCalls`` serves one authenticated node (``authenticate_node``) in the transaction of
``ctrlplane.nodes.api.node_transaction``; ``register`` serves a node holding only a bootstrap token.

Rules:

* A bootstrap token is used at most once: ``register`` marks it used with one conditional UPDATE
  (unused, unrevoked, unexpired) in the registration's own transaction, so two concurrent
  registrations with one token cannot both succeed, and a registration refused for its hostname
  (409) leaves the token unused.
* A node credential (``cpx_node_...``) is stored as its SHA-256 only, expires after
  ``CTRLPLANE_NODE_CREDENTIAL_TTL`` and is replaced by ``POST /v1/keys/rotate``. It is accepted on
  node routes only, and only for its own node: another node's ID is 404.
* A node reads only what is placed on it: its state, its events, the secrets of its assignments
  (another instance's secret is 403), its executions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.audit.service import AuditRecord as AuditEntryRecord
from ctrlplane.audit.service import append as append_audit
from ctrlplane.errors import Conflict, Forbidden, InvalidInput, NotFound, PayloadTooLarge, Unauthenticated
from ctrlplane.ids import new_id
from ctrlplane.nodes import contract, keys, schemas
from ctrlplane.nodes.assignments import node_state, secrets_aad, workload_of
from ctrlplane.nodes.contract import (
    ENROLL_TOKEN_PREFIX,
    INSTANCE_REPORT_PREFIX,
    NODE_CREDENTIAL_PREFIX,
    ContractError,
)
from ctrlplane.nodes.events import append_event
from ctrlplane.nodes.models import (
    EnrollmentToken,
    Node,
    NodeAssignment,
    NodeEvent,
    NodeExecution,
    NodeLogLine,
    NodeReplicaUsage,
    NodeReport,
    NodeSigningKey,
)
from ctrlplane.provisioning.contract import Usage
from ctrlplane.redaction import Redactor
from ctrlplane.secrets.service import WITHHELD, redactor_now
from ctrlplane.telemetry.repository import MetricsRepository
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import parse_duration_input, utc_now
from ctrlplane.web.context import AppServices, RequestContext
from ctrlplane.web.pagination import Page


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _new_secret(prefix: str) -> str:
    return prefix + random.token_urlsafe(32)


def _scope_hostname(pool: str, tenant_id: str | None, hostname: str) -> str:
    return f"{pool}|{tenant_id or ''}|{hostname.lower()}"


def _token_state(row: EnrollmentToken, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.used_at is not None:
        return "used"
    if row.expires_at <= now:
        return "expired"
    return "unused"


def token_view(row: EnrollmentToken) -> schemas.EnrollmentToken:
    return schemas.EnrollmentToken(
        id=row.id,
        prefix=row.prefix,
        pool=row.pool,
        tenant_id=row.tenant_id,
        description=row.description,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
        node_id=row.node_id,
        revoked_at=row.revoked_at,
        state=_token_state(row, utc_now()),  # type: ignore[arg-type]
    )


async def _load_node(session: AsyncSession, node_id: str, *, lock: bool = False) -> Node:
    node = await session.get(Node, node_id, with_for_update=lock)
    if node is None:
        raise NotFound.of("node", node_id)
    return node


async def node_view(session: AsyncSession, node: Node) -> schemas.NodeView:
    rows = (
        (await session.execute(select(NodeAssignment).where(NodeAssignment.node_id == node.id).order_by("instance_id")))
        .scalars()
        .all()
    )
    reports = {
        report.key: report
        for report in (await session.execute(select(NodeReport).where(NodeReport.node_id == node.id))).scalars()
    }
    instances = []
    for row in rows:
        report = reports.get(INSTANCE_REPORT_PREFIX + row.instance_id)
        state = report.payload.get("state") if report is not None and isinstance(report.payload, dict) else None
        instances.append(
            schemas.NodeInstance(
                instance_id=row.instance_id,
                tenant_id=row.tenant_id,
                revision=row.revision,
                cpu_millis=row.cpu_millis,
                memory_mb=row.memory_mb,
                reported_state=state if isinstance(state, str) else None,
            )
        )
    return schemas.NodeView(
        id=node.id,
        hostname=node.hostname,
        pool=node.pool,
        tenant_id=node.tenant_id,
        state=node_state(node),  # type: ignore[arg-type]
        cordoned=node.cordoned,
        draining=node.draining,
        last_heartbeat_at=node.last_heartbeat_at,
        registered_at=node.registered_at,
        credential_expires_at=node.credential_expires_at,
        metadata=dict(node.node_metadata),
        capacity=schemas.NodeCapacityBody(
            cpu_millis=node.cpu_millis,
            memory_mb=node.memory_mb,
            used_cpu_millis=sum(row.cpu_millis for row in rows),
            used_memory_mb=sum(row.memory_mb for row in rows),
        ),
        instances=instances,
    )


class AdminNodes:
    """System admins: bootstrap tokens, the fleet, cordon/drain, key rotations, actions."""

    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session
        self.services = context.services

    async def create_token(self, data: schemas.EnrollmentTokenCreate) -> schemas.EnrollmentTokenCreated:
        ttl = parse_duration_input("ttl", data.ttl)
        limit = self.services.settings.node_enroll_token_max_ttl_seconds
        if not 0 < ttl <= limit:
            raise InvalidInput(f"ttl must be positive and at most {int(limit)}s", details={"ttl": data.ttl})
        if data.tenant_id is not None:
            await TenantRepository(self.session).get(data.tenant_id)  # NotFound when it does not exist
        token = _new_secret(ENROLL_TOKEN_PREFIX)
        now = utc_now()
        row = EnrollmentToken(
            id=new_id("enr"),
            token_hash=digest(token),
            prefix=token[: len(ENROLL_TOKEN_PREFIX) + 6],
            pool=data.pool,
            tenant_id=data.tenant_id,
            description=data.description,
            created_by=self.context.principal.subject,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
            used_at=None,
            node_id=None,
            revoked_at=None,
        )
        self.session.add(row)
        await self.session.flush()
        self.context.audit.resource_id = row.id
        self.context.audit.details = {"pool": row.pool, "tenant_id": row.tenant_id}
        return schemas.EnrollmentTokenCreated(**msgspec.structs.asdict(token_view(row)), token=token)

    async def list_tokens(self) -> Page[schemas.EnrollmentToken]:
        rows = (
            (await self.session.execute(select(EnrollmentToken).order_by(EnrollmentToken.created_at.desc())))
            .scalars()
            .all()
        )
        return Page(items=[token_view(row) for row in rows], next_cursor=None, total=len(rows))

    async def revoke_token(self, token_id: str) -> None:
        row = await self.session.get(EnrollmentToken, token_id, with_for_update=True)
        if row is None:
            raise NotFound.of("enrollment token", token_id)
        if row.revoked_at is None:
            row.revoked_at = utc_now()

    async def list_nodes(self, pool: str | None) -> Page[schemas.NodeView]:
        statement = select(Node).order_by(Node.registered_at, Node.id)
        if pool is not None:
            statement = statement.where(Node.pool == pool)
        nodes = (await self.session.execute(statement)).scalars().all()
        items = [await node_view(self.session, node) for node in nodes]
        return Page(items=items, next_cursor=None, total=len(items))

    async def get_node(self, node_id: str) -> schemas.NodeView:
        return await node_view(self.session, await _load_node(self.session, node_id))

    async def set_flags(self, node_id: str, *, cordoned: bool, draining: bool) -> schemas.NodeView:
        """Cordon: no new instances are placed on the node. Drain: cordon, and the nodes provider
        moves the node's instances elsewhere. Uncordon clears both."""
        node = await _load_node(self.session, node_id, lock=True)
        if node.status != "active":
            raise Conflict(f"node {node_id} is deregistered")
        node.cordoned, node.draining = cordoned, draining
        await self.session.flush()
        return await node_view(self.session, node)

    async def request_key_rotation(self, node_id: str) -> schemas.NodeView:
        node = await _load_node(self.session, node_id, lock=True)
        if node.status != "active":
            raise Conflict(f"node {node_id} is deregistered")
        node.rotate_keys_wanted = True
        await append_event(self.session, node.id, "rotate_keys", contract.RotateKeys(reason="requested by an admin"))
        return await node_view(self.session, node)

    async def rotate_signing_key(self) -> schemas.SigningKeysView:
        """A new current signing key; the previous one verifies for the transition period. Every
        registered node gets a ``signing_key_rotated`` event (signed with the new key)."""
        settings = self.services.settings
        row: NodeSigningKey = await keys.rotate_signing_key(
            self.session, self.services.vault.ring, timedelta(seconds=settings.node_signing_transition_seconds)
        )
        assert row.transition_expires is not None
        payload = contract.SigningKeyRotated(
            signing_public_key=row.public_key,
            key_id=row.key_id,
            valid_from=row.created_at,
            transition_expires=row.transition_expires,
        )
        node_ids = (await self.session.execute(select(Node.id).where(Node.status == "active"))).scalars().all()
        for node_id in node_ids:
            await append_event(self.session, node_id, "signing_key_rotated", payload)
        return schemas.SigningKeysView(
            keys=await keys.signing_keys(self.session, self.services.vault.ring), key_id=row.key_id
        )

    async def request_action(self, node_id: str, data: schemas.ActionCreate) -> schemas.Execution:
        if data.action.startswith(RESERVED_ACTION_PREFIX):
            # the nodes provider's own (restart, exec in a tenant's container): never an admin's
            raise InvalidInput(
                f"actions named {RESERVED_ACTION_PREFIX}* are the control plane's own",
                details={"action": data.action},
            )
        node = await _load_node(self.session, node_id, lock=True)
        if node.status != "active":
            raise Conflict(f"node {node_id} is deregistered")
        now = utc_now()
        row = NodeExecution(
            id=new_id("exec"),
            node_id=node.id,
            action=data.action,
            parameters=dict(data.parameters),
            status="requested",
            reason="",
            result=None,
            created_at=now,
            updated_at=now,
        )
        self.session.add(row)
        await self.session.flush()
        request = contract.ActionRequest(
            execution_id=row.id,
            action=data.action,
            type=data.type,
            parameters=dict(data.parameters),
            timeout=data.timeout,
            callback_url=f"/v1/nodes/{node.id}/executions/{row.id}/result",
        )
        await append_event(self.session, node.id, "action_request", request)
        return execution_view(row)

    async def get_execution(self, node_id: str, execution_id: str) -> schemas.Execution:
        row = await self.session.get(NodeExecution, execution_id)
        if row is None or row.node_id != node_id:
            raise NotFound.of("execution", execution_id)
        return execution_view(row)


RESERVED_ACTION_PREFIX = "ctrlplane."


def execution_view(row: NodeExecution) -> schemas.Execution:
    return schemas.Execution(
        id=row.id,
        node_id=row.node_id,
        action=row.action,
        parameters=dict(row.parameters),
        status=row.status,
        reason=row.reason,
        result=row.result,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


# --- the node side ----------------------------------------------------------------------


def _public_key(text: str, field: str) -> str:
    try:
        contract.load_x25519_public(text)
    except (ContractError, ValueError):
        raise InvalidInput(f"{field} must be a base64 X25519 public key", details={field: "malformed"}) from None
    return text


async def register(
    session: AsyncSession, services: AppServices, data: contract.RegisterRequest
) -> contract.RegisterResponse:
    """Use a bootstrap token once and create the node; see the module docstring."""
    public_key = _public_key(data.public_key, "public_key")
    now = utc_now()
    node_id = new_id("node")
    if not data.token.startswith(ENROLL_TOKEN_PREFIX):
        raise Unauthenticated("invalid, expired, used or revoked bootstrap token")
    used = (
        await session.execute(
            update(EnrollmentToken)
            .where(
                EnrollmentToken.token_hash == digest(data.token),
                EnrollmentToken.used_at.is_(None),
                EnrollmentToken.revoked_at.is_(None),
                EnrollmentToken.expires_at > now,
            )
            .values(used_at=now, node_id=node_id)
            .returning(EnrollmentToken.pool, EnrollmentToken.tenant_id)
        )
    ).one_or_none()
    if used is None:
        raise Unauthenticated("invalid, expired, used or revoked bootstrap token")
    pool, tenant_id = used
    scope = _scope_hostname(pool, tenant_id, data.hostname)
    if (await session.execute(select(Node.id).where(Node.scope_hostname == scope))).first() is not None:
        raise Conflict(f"a node named {data.hostname} is already registered in this pool")
    credential = _new_secret(NODE_CREDENTIAL_PREFIX)
    expires = now + timedelta(seconds=services.settings.node_credential_ttl_seconds)
    nsk = contract.new_node_secret_key()
    ring = services.vault.ring
    node = Node(
        id=node_id,
        hostname=data.hostname,
        scope_hostname=scope,
        pool=pool,
        tenant_id=tenant_id,
        status="active",
        public_key=public_key,
        credential_hash=digest(credential),
        credential_expires_at=expires,
        nsk_sealed=keys.seal(ring, nsk, aad=b"node-nsk|" + node_id.encode()),
        node_metadata=dict(data.metadata),
        capabilities=msgspec.to_builtins(data.capabilities),
        cpu_millis=data.capabilities.capacity.cpu_millis,
        memory_mb=data.capabilities.capacity.memory_mb,
        cordoned=False,
        draining=False,
        unreachable=False,
        reconcile_wanted=False,
        rotate_keys_wanted=False,
        last_heartbeat_at=now,
        last_heartbeat={},
        event_seq=0,
        registered_at=now,
        deregistered_at=None,
    )
    session.add(node)
    await session.flush()
    signing = await keys.signing_keys(session, ring)
    return contract.RegisterResponse(
        node_id=node_id,
        credential=credential,
        credential_expires_at=expires,
        signing_public_key=signing.current,
        node_secret_key=contract.seal_node_secret_key(nsk, public_key),
    )


async def authenticate_node(session: AsyncSession, authorization: str | None) -> Node:
    """The node whose credential is the bearer token; ``Unauthenticated`` for anything else
    (a tenant token, an API key, an expired or replaced credential, a deregistered node)."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(NODE_CREDENTIAL_PREFIX):
        raise Unauthenticated("this route needs a node credential (Authorization: Bearer cpx_node_...)")
    hashed = digest(token)
    node = (await session.execute(select(Node).where(Node.credential_hash == hashed))).scalar_one_or_none()
    if node is None or not hmac.compare_digest(node.credential_hash, hashed):
        raise Unauthenticated("invalid node credential; register again")
    if node.status != "active":
        raise Unauthenticated("this node is deregistered; register again")
    if node.credential_expires_at <= utc_now():
        raise Unauthenticated("the node credential expired; register again")
    return node


def _nsk(services: AppServices, node: Node) -> bytes:
    return keys.open_sealed(services.vault.ring, node.nsk_sealed, aad=b"node-nsk|" + node.id.encode())


class NodeCalls:
    """One authenticated node's calls, in the caller's transaction."""

    def __init__(self, session: AsyncSession, services: AppServices, node: Node) -> None:
        self.session = session
        self.services = services
        self.node = node

    def _rotation_due(self) -> bool:
        ttl = self.services.settings.node_credential_ttl_seconds
        return self.node.credential_expires_at - utc_now() < timedelta(seconds=ttl / 3)

    async def heartbeat(self, data: contract.HeartbeatRequest) -> contract.HeartbeatResponse:
        if data.node_id != self.node.id:
            raise InvalidInput("node_id must be this node's", details={"node_id": data.node_id})
        node = self.node
        reconcile = node.reconcile_wanted or node.unreachable
        rotate = node.rotate_keys_wanted or self._rotation_due()
        node.last_heartbeat_at = utc_now()
        node.last_heartbeat = msgspec.to_builtins(data)
        node.unreachable = False
        node.reconcile_wanted = False
        return contract.HeartbeatResponse(reconcile=reconcile, rotate_keys=rotate)

    async def deregister(self) -> contract.Acknowledged:
        self.node.status = "deregistered"
        self.node.scope_hostname = None
        self.node.deregistered_at = utc_now()
        return contract.Acknowledged()

    async def rotate_keys(self, data: contract.KeyRotateRequest) -> contract.KeyRotateResponse:
        if data.node_id != self.node.id:
            raise NotFound.of("node", data.node_id)
        public_key = _public_key(data.new_public_key, "new_public_key")
        credential = _new_secret(NODE_CREDENTIAL_PREFIX)
        expires = utc_now() + timedelta(seconds=self.services.settings.node_credential_ttl_seconds)
        nsk = contract.new_node_secret_key()
        node = self.node
        node.public_key = public_key
        node.credential_hash = digest(credential)
        node.credential_expires_at = expires
        node.nsk_sealed = keys.seal(self.services.vault.ring, nsk, aad=b"node-nsk|" + node.id.encode())
        node.rotate_keys_wanted = False
        return contract.KeyRotateResponse(
            updated_peers=[],
            credential=credential,
            credential_expires_at=expires,
            node_secret_key=contract.seal_node_secret_key(nsk, public_key),
        )

    async def capabilities(self, data: contract.Capabilities) -> contract.Acknowledged:
        self.node.capabilities = msgspec.to_builtins(data)
        self.node.cpu_millis = data.capacity.cpu_millis
        self.node.memory_mb = data.capacity.memory_mb
        return contract.Acknowledged()

    async def state(self) -> contract.NodeState:
        rows = (
            (
                await self.session.execute(
                    select(NodeAssignment)
                    .where(NodeAssignment.node_id == self.node.id)
                    .order_by(NodeAssignment.instance_id)
                )
            )
            .scalars()
            .all()
        )
        workloads = [workload_of(row) for row in rows]
        # the node resumes after this number: events up to it may be pruned (``prune_events``)
        self.node.state_pulled_seq = max(self.node.state_pulled_seq or 0, self.node.event_seq)
        return contract.NodeState(
            node_id=self.node.id,
            workloads=workloads,
            signing_keys=await keys.signing_keys(self.session, self.services.vault.ring),
            metadata=dict(self.node.node_metadata),
            secret_refs=[workload.secret for workload in workloads],
            last_event_id=self.node.event_seq,
        )

    async def secret(self, key: str) -> contract.EncryptedSecret:
        instance_id, _, revision_text = key.rpartition(".r")
        row = await self.session.get(NodeAssignment, instance_id) if instance_id else None
        if row is None:
            raise NotFound.of("secret", key)
        if row.node_id != self.node.id:
            raise Forbidden("this node may not read that secret")
        if revision_text != str(row.revision):
            raise NotFound.of("secret", key)
        plaintext = await self.services.vault.open(
            self.session, row.tenant_id, row.secrets_sealed, aad=secrets_aad(row.instance_id, row.revision)
        )
        return contract.encrypt_secret(
            _nsk(self.services, self.node), plaintext, node_id=self.node.id, key=key, version=row.revision
        )

    async def report(self, data: contract.ReportBatch) -> contract.Acknowledged:
        """Upserts entries whose version is not older than the stored one (older: 409, nothing
        kept); entries about instances not placed on this node are ignored."""
        placed = set(
            (
                await self.session.execute(
                    select(NodeAssignment.instance_id).where(NodeAssignment.node_id == self.node.id)
                )
            ).scalars()
        )
        now = utc_now()
        for entry in data.entries:
            if entry.key.startswith(INSTANCE_REPORT_PREFIX) and entry.key[len(INSTANCE_REPORT_PREFIX) :] not in placed:
                continue
            row = await self.session.get(NodeReport, (self.node.id, entry.key), with_for_update=True)
            if row is not None and row.version > entry.version:
                raise Conflict(
                    f"report entry {entry.key} has version {row.version}, newer than {entry.version}",
                    details={"key": entry.key, "version": row.version},
                )
            if row is None:
                row = NodeReport(node_id=self.node.id, key=entry.key)
                self.session.add(row)
            row.content_type = entry.content_type
            row.payload = entry.payload
            row.version = entry.version
            row.updated_at = entry.updated_at
            row.received_at = now
        if data.deleted:
            await self.session.execute(
                delete(NodeReport).where(NodeReport.node_id == self.node.id, NodeReport.key.in_(data.deleted))
            )
        await self.session.flush()
        return contract.Acknowledged()

    async def _execution(self, execution_id: str) -> NodeExecution:
        row = await self.session.get(NodeExecution, execution_id, with_for_update=True)
        if row is None or row.node_id != self.node.id:
            raise NotFound.of("execution", execution_id)
        return row

    async def ack(self, execution_id: str, data: contract.ExecutionAck) -> contract.Acknowledged:
        if data.execution_id != execution_id:
            raise InvalidInput("execution_id must match the path", details={"execution_id": data.execution_id})
        row = await self._execution(execution_id)
        if row.status == "requested":
            row.status, row.reason, row.updated_at = data.status, data.reason, utc_now()
        return contract.Acknowledged()

    async def result(self, execution_id: str, data: contract.ExecutionResult) -> contract.Acknowledged:
        if data.execution_id != execution_id:
            raise InvalidInput("execution_id must match the path", details={"execution_id": data.execution_id})
        row = await self._execution(execution_id)
        if row.status in ("requested", "accepted"):
            row.status, row.result, row.updated_at = data.status, msgspec.to_builtins(data), utc_now()
        return contract.Acknowledged()

    async def _placed(self) -> dict[str, str]:
        rows = await self.session.execute(
            select(NodeAssignment.instance_id, NodeAssignment.tenant_id).where(NodeAssignment.node_id == self.node.id)
        )
        return {instance_id: tenant_id for instance_id, tenant_id in rows.all()}

    async def metrics(self, records: Sequence[contract.MetricRecord]) -> contract.BatchAccepted:
        """``instance`` records become the instance's usage samples; ``replica`` records (one per
        running replica, with ``data.generation``) replace the instance's latest per-replica usage
        (``NodeReplicaUsage``), unless the stored one is newer (a batch that arrives late)."""
        placed = await self._placed()
        repository = MetricsRepository(self.session)
        accepted = rejected = 0
        replicas: dict[str, list[contract.MetricRecord]] = {}
        for record in records:
            if record.group not in ("instance", "replica"):
                accepted += 1
                continue
            tenant_id = placed.get(record.instance_id or "")
            if tenant_id is None:
                rejected += 1
                continue
            accepted += 1
            if record.group == "replica":
                replicas.setdefault(record.instance_id or "", []).append(record)
                continue
            await repository.add(tenant_id, record.instance_id or "", record.timestamp, usage_of(record.data))
        for instance_id, found in replicas.items():
            await self._replace_replica_usage(instance_id, found)
        return contract.BatchAccepted(accepted=accepted, rejected=rejected)

    async def _replace_replica_usage(self, instance_id: str, records: list[contract.MetricRecord]) -> None:
        newest = max(record.timestamp for record in records)
        latest = [record for record in records if record.timestamp == newest]
        stored = (
            await self.session.execute(
                select(func.max(NodeReplicaUsage.at)).where(NodeReplicaUsage.instance_id == instance_id)
            )
        ).scalar_one_or_none()
        if stored is not None and stored > newest:
            return
        await self.session.execute(delete(NodeReplicaUsage).where(NodeReplicaUsage.instance_id == instance_id))
        rows: dict[tuple[int, int], NodeReplicaUsage] = {}
        for record in latest:
            usage = usage_of(record.data)
            generation = int(record.data.get("generation", 0))
            rows[(generation, record.replica)] = NodeReplicaUsage(
                instance_id=instance_id,
                generation=generation,
                replica=record.replica,
                node_id=self.node.id,
                at=record.timestamp,
                cpu_percent=usage.cpu_percent,
                memory_used_bytes=usage.memory_used_bytes,
                memory_limit_bytes=usage.memory_limit_bytes,
                network_rx_bytes=usage.network_rx_bytes,
                network_tx_bytes=usage.network_tx_bytes,
                restarts=usage.restarts,
            )
        self.session.add_all(rows.values())
        await self.session.flush()

    async def logs(self, records: Sequence[contract.LogRecord]) -> contract.BatchAccepted:
        """An instance's lines are stored redacted of its secret values and OTLP token (one
        ``Redactor`` per instance in the batch), as ``GET .../logs`` would show them: the table
        never holds what the secrets' sealing keeps out of the database."""
        placed = await self._placed()
        accepted = rejected = 0
        rows = []
        redactors: dict[str, Redactor | None] = {}
        for record in records:
            if record.instance_id is None:
                accepted += 1  # the node's own log: counted, not kept
                continue
            if record.instance_id not in placed:
                rejected += 1
                continue
            stream = record.source if record.source in ("stdout", "stderr") else "stdout"
            if record.instance_id not in redactors:
                redactors[record.instance_id] = await redactor_now(
                    self.session, self.services, tenant_id=placed[record.instance_id], instance_id=record.instance_id
                )
            redactor = redactors[record.instance_id]
            rows.append(
                NodeLogLine(
                    instance_id=record.instance_id,
                    node_id=self.node.id,
                    at=record.timestamp,
                    replica=record.replica,
                    stream=stream,
                    message=WITHHELD if redactor is None else redactor(record.message)[:16384],
                )
            )
            accepted += 1
        self.session.add_all(rows)
        await self.session.flush()
        return contract.BatchAccepted(accepted=accepted, rejected=rejected)

    async def drift(self, data: contract.DriftReport) -> contract.Acknowledged:
        """Kept as the call's audit entry (the corrections are its details); nothing else to do:
        the node already converged on the desired state."""
        return contract.Acknowledged()

    async def audit(self, records: Sequence[contract.AuditRecord], *, request_id: str) -> contract.BatchAccepted:
        """The host's own audit records, each an entry of the system audit chain."""
        for record in records:
            entry = AuditEntryRecord(
                tenant_id=None,
                actor_kind="node",
                actor_subject=self.node.id,
                action="host_audit",
                resource="node",
                resource_id=self.node.id,
                outcome=record.result[:32] or "recorded",
                status_code=202,
                request_id=request_id,
                client_addr=None,
                details=msgspec.to_builtins(record),
            )
            await append_audit(self.session, entry, keys=self.services.audit_keys, at=record.timestamp)
        return contract.BatchAccepted(accepted=len(records))


# --- batches ---------------------------------------------------------------------------


def usage_of(data: dict[str, float | int]) -> Usage:
    """A metric record's ``data`` (``memory_used``/``memory_total`` as the agent names them)."""
    return Usage(
        cpu_percent=float(data.get("cpu_percent", 0.0)),
        memory_used_bytes=int(data.get("memory_used", 0)),
        memory_limit_bytes=int(data.get("memory_total", 0)),
        network_rx_bytes=int(data.get("network_rx_bytes", 0)),
        network_tx_bytes=int(data.get("network_tx_bytes", 0)),
        restarts=int(data.get("restarts", 0)),
    )


def parse_records(raw: bytes, kind: type[Any], *, max_records: int) -> list[Any]:
    """A JSON array, or NDJSON (one object per line), of ``kind``; 413 past ``max_records``."""
    text = raw.strip()
    try:
        if text.startswith(b"["):
            records: list[Any] = msgspec.json.decode(text, type=list[kind])  # type: ignore[valid-type]
        else:
            lines = [line for line in text.split(b"\n") if line.strip()]
            if len(lines) > max_records:
                raise PayloadTooLarge(f"the batch has over {max_records} records")
            records = [msgspec.json.decode(line, type=kind) for line in lines]
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid record: {exc}", details={"body": str(exc)[:200]}) from None
    except msgspec.DecodeError:
        raise InvalidInput("the batch is not JSON or NDJSON", details={"body": "malformed"}) from None
    if len(records) > max_records:
        raise PayloadTooLarge(f"the batch has over {max_records} records")
    return records


async def mark_unreachable(session: AsyncSession, timeout: timedelta) -> list[str]:
    """Nodes whose last heartbeat is older than ``timeout``: set ``unreachable``; their IDs."""
    cutoff = utc_now() - timeout
    statement = (
        update(Node)
        .where(Node.status == "active", Node.unreachable.is_(False), Node.last_heartbeat_at < cutoff)
        .values(unreachable=True)
        .returning(Node.id)
    )
    return list((await session.execute(statement)).scalars())


async def prune_events(session: AsyncSession, retention: timedelta) -> int:
    """Drop node events issued before ``retention`` ago that no replay needs: those up to the
    number the node last pulled its state at (it resumes after it), and every old one of a
    deregistered node. An event the node may not have seen yet stays, however old."""
    pulled = (
        select(Node.state_pulled_seq).where(Node.id == NodeEvent.node_id, Node.status == "active").scalar_subquery()
    )
    statement = delete(NodeEvent).where(
        NodeEvent.issued_at < utc_now() - retention,
        or_(NodeEvent.seq <= pulled, ~exists().where(Node.id == NodeEvent.node_id, Node.status == "active")),
    )
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_logs(session: AsyncSession, retention: timedelta) -> int:
    result = await session.execute(delete(NodeLogLine).where(NodeLogLine.at < utc_now() - retention))
    return int(getattr(result, "rowcount", 0) or 0)
