"""Routes, domains, certificates, the router's upstreams, the ACME account, and what the router
reports of each instance's requests (``InstanceTraffic``, ``HttpRequestSample``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class Route(Base):
    """Requests for an instance's hostnames under ``path`` go to its container ``port``."""

    __tablename__ = "routes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(256))
    port: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(16))
    weight: Mapped[int] = mapped_column(Integer)
    strip_prefix: Mapped[bool] = mapped_column(Boolean)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Domain(Base):
    """A hostname a tenant claims for an instance; it routes traffic once its TXT record proved
    control. Several tenants may hold pending claims of one hostname; only one claim of a hostname
    can be verified (a partial unique index), the first to prove control wins."""

    __tablename__ = "domains"
    __table_args__ = (
        Index(
            "uq_domains_verified_hostname",
            "hostname",
            unique=True,
            sqlite_where=text("status = 'verified'"),
            postgresql_where=text("status = 'verified'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    hostname: Mapped[str] = mapped_column(String(253), index=True)
    status: Mapped[str] = mapped_column(String(16))
    verification_token: Mapped[str] = mapped_column(String(128))
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Certificate(Base):
    """A domain's certificate from an ACME CA. ``chain_pem`` and ``key_sealed`` hold the current
    certificate (kept while a renewal runs); the challenge fields exist only while an order waits
    for the CA to validate."""

    __tablename__ = "certificates"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    domain_id: Mapped[str] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    issuer: Mapped[str | None] = mapped_column(Text)
    serial: Mapped[str | None] = mapped_column(String(128))
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    chain_pem: Mapped[str | None] = mapped_column(Text)
    key_sealed: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    challenge_token: Mapped[str | None] = mapped_column(String(256))
    challenge_validation: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Upstream(Base):
    """One replica's host port in the router's rotation for an instance. Outside a deploy these follow
    the replicas the provider reports running; during a deploy the deploy engine owns them, adding a
    new replica only after its gate and removing an old one before its container goes."""

    __tablename__ = "router_upstreams"

    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica: Mapped[int] = mapped_column(Integer, primary_key=True)
    container_port: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    host_port: Mapped[int] = mapped_column(Integer)
    weight: Mapped[int] = mapped_column(Integer, default=1)


class AcmeAccount(Base):
    """This installation's account at one ACME directory (one per directory URL, reused for every
    order: CAs limit how many accounts an address may register)."""

    __tablename__ = "acme_accounts"

    directory_url: Mapped[str] = mapped_column(String(512), primary_key=True)
    key_sealed: Mapped[str] = mapped_column(Text)
    registration: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class InstanceTraffic(Base):
    """What the router last saw of an instance, and its idle policy: one row per instance that was
    requested through the router or has a policy. ``last_request_at`` is written in batches by the
    access-log sink (``access.py``); ``slept_at``/``woken_at`` by ``sleep.py``."""

    __tablename__ = "instance_traffic"

    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    last_request_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    idle_timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    policy_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    slept_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    woken_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class HttpRequestSample(Base):
    """Requests the router served for one instance, route, method and status class in one flush of
    the access-log sink (``step_seconds`` 0), or a rollup of such rows (60, 300), kept and rolled up
    like ``telemetry.models.MetricSample``. ``duration_buckets`` counts the requests per latency
    bucket of ``access.DURATION_BUCKETS`` (not cumulative), so quantiles survive rollups."""

    __tablename__ = "http_request_samples"
    __table_args__ = (
        Index("ix_http_request_samples_step_taken_at", "step_seconds", "taken_at"),
        Index("ix_http_request_samples_instance_taken_at", "instance_id", "taken_at"),
    )

    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    step_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    route: Mapped[str] = mapped_column(String(256), primary_key=True)
    method: Mapped[str] = mapped_column(String(8), primary_key=True)
    status_class: Mapped[str] = mapped_column(String(3), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    requests: Mapped[int] = mapped_column(BigInteger)
    duration_seconds_sum: Mapped[float] = mapped_column(Float)
    duration_buckets: Mapped[list[int]] = mapped_column(JSON)
    request_bytes: Mapped[int] = mapped_column(BigInteger)
    response_bytes: Mapped[int] = mapped_column(BigInteger)


class UpstreamRequestSample(Base):
    """Round trips the router made to one replica of one generation of an instance in one flush of
    the access-log sink: how many, how many answered 5xx, and their latency buckets (time to the
    upstream's response headers, ``access.DURATION_BUCKETS``, not cumulative). What a deploy's
    traffic analysis judges the new replicas by; kept ``CTRLPLANE_METRICS_RAW_RETENTION``, never
    rolled up."""

    __tablename__ = "upstream_request_samples"
    __table_args__ = (Index("ix_upstream_request_samples_taken_at", "taken_at"),)

    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    replica: Mapped[int] = mapped_column(Integer, primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    duration_buckets: Mapped[list[int]] = mapped_column(JSON)
