"""Nodes, their enrolment tokens, durable event streams, desired state, reports and signing keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class EnrollmentToken(Base):
    """A one-time bootstrap token (``cpx_enroll_...``); only its SHA-256 is stored. Used once,
    atomically: ``used_at`` goes from NULL to a time in a conditional UPDATE."""

    __tablename__ = "node_enrollment_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    pool: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    description: Mapped[str] = mapped_column(String(256))
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    node_id: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Node(Base):
    """A registered Docker host. ``scope_hostname`` (``pool|tenant|hostname``) is unique while the
    node is registered and NULL once it deregistered, so a hostname registers once per scope.

    ``status`` is ``active`` or ``deregistered``; ``unreachable`` is set by the leader's heartbeat
    loop and cleared by the next heartbeat. The admin view's state is derived from these and from
    ``cordoned``/``draining``."""

    __tablename__ = "nodes"
    __table_args__ = (Index("ix_nodes_pool_status", "pool", "status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(253))
    scope_hostname: Mapped[str | None] = mapped_column(String(600), unique=True)
    pool: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[str] = mapped_column(String(64))
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    credential_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    nsk_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    node_metadata: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    cpu_millis: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    cordoned: Mapped[bool] = mapped_column(Boolean)
    draining: Mapped[bool] = mapped_column(Boolean)
    unreachable: Mapped[bool] = mapped_column(Boolean)
    reconcile_wanted: Mapped[bool] = mapped_column(Boolean)
    rotate_keys_wanted: Mapped[bool] = mapped_column(Boolean)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_heartbeat: Mapped[dict[str, Any]] = mapped_column(JSON)
    event_seq: Mapped[int] = mapped_column(BigInteger)
    """The number of the node's newest event (``node_events.seq``)."""
    state_pulled_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """``last_event_id`` of the node's latest ``GET .../state``: it resumes its stream after that
    number, so pruning may drop the events up to it once they are past the retention."""
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deregistered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class NodeEvent(Base):
    """The node's durable event stream: numbered per node, replayed after ``Last-Event-ID``.
    Envelopes are signed when served, with the signing key current then."""

    __tablename__ = "node_events"
    __table_args__ = (Index("ix_node_events_issued_at", "issued_at"),)

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NodeAssignment(Base):
    """An instance placed on a node: its secret-free spec and its secrets (env and files) sealed
    under the tenant's data key. An instance is on at most one node."""

    __tablename__ = "node_assignments"

    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    retained: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    """Replicas of other generations the node keeps running (``NodeWorkload.retained``)."""
    secrets_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    cpu_millis: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NodeReport(Base):
    """A node's report entry (seed 002 ``POST .../report``); ``instance/{id}`` holds a ``WorkloadStatus``."""

    __tablename__ = "node_reports"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[Any] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NodeExecution(Base):
    """An ``action_request`` sent to a node, and what the node answered."""

    __tablename__ = "node_executions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(200))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    """``requested``, ``accepted``, ``rejected``, then ``success``/``failure``/``timeout``/``cancelled``."""
    reason: Mapped[str] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class NodeSigningKey(Base):
    """The control plane's Ed25519 event-signing keys. The newest is current; the one before stays
    valid for verification until ``transition_expires`` of the newest."""

    __tablename__ = "node_signing_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    private_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    transition_expires: Mapped[datetime | None] = mapped_column(UTCDateTime())


class NodeLogLine(Base):
    """An instance's log line shipped by its node: ``GET /v1/instances/{id}/logs`` of an instance on
    a node reads these (through the nodes provider's ``logs``)."""

    __tablename__ = "node_log_lines"
    __table_args__ = (Index("ix_node_log_lines_instance_at", "instance_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    replica: Mapped[int] = mapped_column(Integer)
    stream: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)


class NodeReplicaUsage(Base):
    """Each replica's latest usage as its node reported it (metric records of group ``replica``):
    ``GET /v1/instances/{id}/resources`` of an instance on a node reads these (through the nodes
    provider's ``replica_usage``). A batch replaces the instance's rows, so a replica gone from it
    is gone here too; the instance's removal from its node removes them."""

    __tablename__ = "node_replica_usage"

    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    cpu_percent: Mapped[float] = mapped_column(Float)
    memory_used_bytes: Mapped[int] = mapped_column(BigInteger)
    memory_limit_bytes: Mapped[int] = mapped_column(BigInteger)
    network_rx_bytes: Mapped[int] = mapped_column(BigInteger)
    network_tx_bytes: Mapped[int] = mapped_column(BigInteger)
    restarts: Mapped[int] = mapped_column(Integer)
