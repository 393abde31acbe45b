"""Configuration, read once from ``CTRLPLANE_*`` environment variables.

Nothing reads the environment at import time: ``Settings.from_env()`` is called by the CLI, and tests
build ``Settings(...)`` directly. docs/configuration.md lists every variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ctrlplane.timeutil import parse_duration

PREFIX = "CTRLPLANE_"


class PlanQuota(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_instances: int
    max_cpu_millis: int
    max_memory_mb: int
    max_domains: int
    max_routes: int
    max_secrets: int
    max_environments_per_owner: int | None = None


DEFAULT_PLANS: dict[str, PlanQuota] = {
    "free": PlanQuota(
        max_instances=3, max_cpu_millis=2000, max_memory_mb=2048, max_domains=2, max_routes=10, max_secrets=20
    ),
    "pro": PlanQuota(
        max_instances=20,
        max_cpu_millis=16000,
        max_memory_mb=32768,
        max_domains=20,
        max_routes=100,
        max_secrets=200,
    ),
    "enterprise": PlanQuota(
        max_instances=200,
        max_cpu_millis=128000,
        max_memory_mb=262144,
        max_domains=200,
        max_routes=1000,
        max_secrets=2000,
    ),
}


class PlanRateLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Token buckets of a plan: each tenant's, and each of its credentials' (API key or JWT subject)."""

    tenant_per_minute: int
    tenant_burst: int
    credential_per_minute: int
    credential_burst: int


DEFAULT_RATE_LIMITS: dict[str, PlanRateLimit] = {
    "free": PlanRateLimit(tenant_per_minute=600, tenant_burst=300, credential_per_minute=300, credential_burst=150),
    "pro": PlanRateLimit(tenant_per_minute=3000, tenant_burst=1000, credential_per_minute=1200, credential_burst=500),
    "enterprise": PlanRateLimit(
        tenant_per_minute=12000, tenant_burst=3000, credential_per_minute=6000, credential_burst=1500
    ),
}


MAX_BODY_BYTES = 1024 * 1024
"""The default of ``Settings.max_body_bytes``."""


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: str = ".ctrlplane"
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    migrate_on_start: bool = True
    log_format: str = "auto"
    log_level: str = "info"

    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_private_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: int = 30
    jwt_max_ttl_seconds: float = 86400.0

    providers: tuple[str, ...] = ("docker",)
    cluster_name: str = "ctrlplane"
    installation_id: str = ""
    """Set by ``ctrlplane.installation.resolve`` (``serve``), never from the environment: providers
    label what they create with it (``ctrlplane.installation``). Providers get it, and the cluster
    name, as ``ProviderSettings`` (``provisioning.registry.provider_settings``); a provider's own
    variables (``CTRLPLANE_DOCKER_*``, ``CTRLPLANE_K8S_*``) are not here: it reads them itself."""
    workers: int = 4
    background: bool = True
    reconcile_interval_seconds: float = 10.0
    operation_lease_seconds: float = 30.0
    operation_max_attempts: int = 5
    crashloop_restarts: int = 5
    crashloop_window_seconds: float = 300.0
    event_poll_seconds: float = 1.0
    leader_lease_seconds: float = 10.0
    replica_name: str | None = None
    deploy_health_timeout_seconds: float = 60.0
    deploy_deadline_seconds: float = 600.0
    canary_observation_seconds: float = 10.0
    health_concurrency: int = 16
    health_tick_seconds: float = 1.0
    health_jitter: float = 0.1
    health_result_retention_seconds: float = 7 * 86400.0
    health_results_per_check: int = 10_000
    health_prune_interval_seconds: float = 60.0
    canary_traffic_percent: int = 10
    run_workers: int = 2
    """One-off runs and job firings this replica carries at once (ctrlplane.runs)."""
    run_lease_seconds: float = 30.0
    run_default_timeout_seconds: float = 3600.0
    run_history: int = 20
    """Finished runs kept per instance (one-off) and per job; older ones are deleted."""
    job_tick_seconds: float = 1.0
    job_starting_deadline_seconds: float = 300.0
    """A firing missed while no control plane ran is still run if it is at most this old."""
    job_allow_seconds: bool = False
    """Accept six-field schedules (a leading seconds field): tests use them; production keeps cron's minute."""

    router: str = "caddy"
    router_admin_address: str = "localhost:2019"
    router_base_domain: str = "localhost"
    domain_claim_ttl_seconds: float = 7 * 86400.0
    router_http_listen: str = ":80"
    router_https_listen: str = ":443"
    router_sync_interval_seconds: float = 5.0
    router_drain_seconds: float = 1.0
    router_try_duration_seconds: float = 5.0
    router_fail_seconds: float = 5.0
    router_access_log_listen: str = "127.0.0.1:0"
    """Where ctrlplane's access-log sink listens for Caddy's JSON access log (``net`` writer);
    ``none`` turns request reporting off (docs/network.md)."""
    router_wake_listen: str = "127.0.0.1:0"
    """Where ctrlplane's wake listener takes the requests of sleeping instances; ``none``: off."""
    router_report_flush_seconds: float = 2.0
    wake_timeout_seconds: float = 30.0
    wake_retry_after_seconds: int = 5
    idle_check_seconds: float = 10.0
    dns_resolver: str | None = None
    dns_timeout_seconds: float = 5.0
    acme_directory_url: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_ca_bundle: str | None = None
    acme_email: str | None = None
    acme_renew_before_days: float = 30.0
    acme_retry_base_seconds: float = 60.0
    acme_timeout_seconds: float = 120.0
    plans: dict[str, PlanQuota] = msgspec.field(default_factory=lambda: dict(DEFAULT_PLANS))
    default_plan: str = "free"
    rate_limits: dict[str, PlanRateLimit] = msgspec.field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    rate_limits_enabled: bool = True
    rate_limit_batch: int = 1000
    """At most this many tokens a replica reserves from a shared bucket at once (and never more
    than a tenth of its burst); 1 debits the database on every request (docs/operations.md)."""
    rate_limit_hold_seconds: float = 1.0
    """How long a replica may spend the tokens it reserved before unspent ones lapse."""
    read_cache_seconds: float = 10.0
    """How long a replica serves a tenant's standing and an instance's view from memory at most
    (``rowcache.py``; every change invalidates them sooner); 0 turns the cache off."""

    outbound_allow_cidrs: tuple[str, ...] = ()
    registry_allow: tuple[str, ...] = ()
    max_body_bytes: int = MAX_BODY_BYTES
    idempotency_ttl_seconds: int = 24 * 3600
    idempotency_lease_seconds: int = 300
    api_key_touch_seconds: int = 60
    secrets_master_keys: str | None = None
    """The secrets master key ring (``1:<base64>,2:<base64>``) or a file holding it; None: the data
    directory's ``secrets-master-keys``, generated on first start (see ``ctrlplane.secrets.crypto``)."""

    audit_checkpoint_seconds: float = 3600.0
    """How often the leader signs a checkpoint of the audit chains' heads (``audit/checkpoints.py``)."""
    metrics_sample_seconds: float = 15.0
    metrics_raw_retention_seconds: float = 6 * 3600.0
    metrics_minute_retention_seconds: float = 48 * 3600.0
    metrics_retention_seconds: float = 30 * 86400.0
    trace_retention_seconds: float = 7 * 86400.0
    trace_max_spans_per_instance: int = 10_000
    otlp_endpoint: str | None = None
    otlp_token_secret: str | None = None
    otlp_max_bytes: int = 8 * 1024 * 1024
    """The largest OTLP export once gunzipped; past it 413 (the body as sent is held to
    ``max_body_bytes`` first)."""
    otlp_max_metrics: int = 100
    """Distinct metric names an instance may push (among its series pushed within the raw retention)."""
    otlp_max_series_per_metric: int = 50
    """Attribute sets one of an instance's metric names may have (likewise, active ones)."""
    metrics_token: str | None = None
    environments_max_per_owner: int | None = None
    """Active environments one owner (a JWT subject or API key) may hold in a tenant, when neither
    the template nor the tenant quota sets ``max_environments_per_owner``; None: no limit."""

    webhook_workers: int = 2
    """Delivery loops per replica (deliveries of one endpoint still go one at a time, in order)."""
    webhook_timeout_seconds: float = 10.0
    webhook_max_response_bytes: int = 64 * 1024
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_retry_period_seconds: float = 24 * 3600.0
    """How long a delivery is retried before it fails and its endpoint is marked failing."""
    webhook_secret_overlap_seconds: float = 24 * 3600.0
    webhook_delivery_retention_seconds: float = 30 * 86400.0
    """Finished deliveries older than this are deleted."""
    log_drain_batch_lines: int = 500
    log_drain_buffer_lines: int = 10_000
    """Lines a drain holds while its receiver is slow; past it the oldest are dropped (and counted)."""
    log_drain_flush_seconds: float = 1.0
    log_drain_retries: int = 3
    log_drain_timeout_seconds: float = 5.0
    node_heartbeat_timeout_seconds: float = 90.0
    """A node without a heartbeat for this long is ``unreachable`` (docs/nodes.md)."""
    node_credential_ttl_seconds: float = 30 * 86400.0
    """How long a node identity credential lives; heartbeats ask for a rotation in its last third."""
    node_enroll_token_max_ttl_seconds: float = 7 * 86400.0
    node_signing_transition_seconds: float = 86400.0
    """How long the previous event-signing key still verifies after a rotation."""
    node_batch_max_bytes: int = 4 * 1024 * 1024
    """The largest telemetry batch a node may send, decompressed; past it 413."""
    node_batch_max_records: int = 5000
    node_log_retention_seconds: float = 7 * 86400.0
    node_event_retention_seconds: float = 86400.0
    """A node's events older than this are pruned once the node has pulled a state past them."""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_path / 'ctrlplane.db').resolve()}"

    @property
    def signing_key_path(self) -> Path:
        return self.data_path / "jwt-signing-key"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}

        def get(name: str) -> str | None:
            raw = env.get(PREFIX + name)
            return raw if raw not in (None, "") else None

        simple = {
            "DATA_DIR": "data_dir",
            "DATABASE_URL": "database_url",
            "HOST": "host",
            "PORT": "port",
            "MIGRATE_ON_START": "migrate_on_start",
            "LOG_FORMAT": "log_format",
            "LOG_LEVEL": "log_level",
            "JWT_SECRET": "jwt_secret",
            "JWT_JWKS_URL": "jwt_jwks_url",
            "JWT_ISSUER": "jwt_issuer",
            "JWT_AUDIENCE": "jwt_audience",
            "JWT_LEEWAY_SECONDS": "jwt_leeway_seconds",
            "DEFAULT_PLAN": "default_plan",
            "MAX_BODY_BYTES": "max_body_bytes",
            "IDEMPOTENCY_LEASE_SECONDS": "idempotency_lease_seconds",
            "API_KEY_TOUCH_SECONDS": "api_key_touch_seconds",
            "CLUSTER_NAME": "cluster_name",
            "WORKERS": "workers",
            "BACKGROUND": "background",
            "RECONCILE_INTERVAL_SECONDS": "reconcile_interval_seconds",
            "OPERATION_LEASE_SECONDS": "operation_lease_seconds",
            "OPERATION_MAX_ATTEMPTS": "operation_max_attempts",
            "CRASHLOOP_RESTARTS": "crashloop_restarts",
            "CRASHLOOP_WINDOW_SECONDS": "crashloop_window_seconds",
            "DEPLOY_HEALTH_TIMEOUT_SECONDS": "deploy_health_timeout_seconds",
            "DEPLOY_DEADLINE_SECONDS": "deploy_deadline_seconds",
            "CANARY_OBSERVATION_SECONDS": "canary_observation_seconds",
            "EVENT_POLL_SECONDS": "event_poll_seconds",
            "SECRETS_MASTER_KEYS": "secrets_master_keys",
            "HEALTH_CONCURRENCY": "health_concurrency",
            "HEALTH_TICK_SECONDS": "health_tick_seconds",
            "HEALTH_JITTER": "health_jitter",
            "HEALTH_RESULTS_PER_CHECK": "health_results_per_check",
            "HEALTH_PRUNE_INTERVAL_SECONDS": "health_prune_interval_seconds",
            "METRICS_SAMPLE_SECONDS": "metrics_sample_seconds",
            "AUDIT_CHECKPOINT_SECONDS": "audit_checkpoint_seconds",
            "TRACE_MAX_SPANS_PER_INSTANCE": "trace_max_spans_per_instance",
            "OTLP_MAX_BYTES": "otlp_max_bytes",
            "OTLP_MAX_METRICS": "otlp_max_metrics",
            "OTLP_MAX_SERIES_PER_METRIC": "otlp_max_series_per_metric",
            "OTLP_ENDPOINT": "otlp_endpoint",
            "OTLP_TOKEN_SECRET": "otlp_token_secret",
            "METRICS_TOKEN": "metrics_token",
            "ENVIRONMENTS_MAX_PER_OWNER": "environments_max_per_owner",
            "LEADER_LEASE_SECONDS": "leader_lease_seconds",
            "REPLICA_NAME": "replica_name",
            "RATE_LIMITS_ENABLED": "rate_limits_enabled",
            "RATE_LIMIT_BATCH": "rate_limit_batch",
            "RATE_LIMIT_HOLD_SECONDS": "rate_limit_hold_seconds",
            "READ_CACHE_SECONDS": "read_cache_seconds",
            "CANARY_TRAFFIC_PERCENT": "canary_traffic_percent",
            "RUN_WORKERS": "run_workers",
            "RUN_LEASE_SECONDS": "run_lease_seconds",
            "RUN_DEFAULT_TIMEOUT_SECONDS": "run_default_timeout_seconds",
            "RUN_HISTORY": "run_history",
            "JOB_TICK_SECONDS": "job_tick_seconds",
            "JOB_STARTING_DEADLINE_SECONDS": "job_starting_deadline_seconds",
            "JOB_ALLOW_SECONDS": "job_allow_seconds",
            "ROUTER": "router",
            "ROUTER_ADMIN_ADDRESS": "router_admin_address",
            "ROUTER_BASE_DOMAIN": "router_base_domain",
            "ROUTER_HTTP_LISTEN": "router_http_listen",
            "ROUTER_HTTPS_LISTEN": "router_https_listen",
            "ROUTER_SYNC_INTERVAL_SECONDS": "router_sync_interval_seconds",
            "ROUTER_DRAIN_SECONDS": "router_drain_seconds",
            "ROUTER_TRY_DURATION_SECONDS": "router_try_duration_seconds",
            "ROUTER_FAIL_SECONDS": "router_fail_seconds",
            "ROUTER_ACCESS_LOG_LISTEN": "router_access_log_listen",
            "ROUTER_WAKE_LISTEN": "router_wake_listen",
            "ROUTER_REPORT_FLUSH_SECONDS": "router_report_flush_seconds",
            "WAKE_RETRY_AFTER_SECONDS": "wake_retry_after_seconds",
            "IDLE_CHECK_SECONDS": "idle_check_seconds",
            "DNS_RESOLVER": "dns_resolver",
            "DNS_TIMEOUT_SECONDS": "dns_timeout_seconds",
            "ACME_DIRECTORY_URL": "acme_directory_url",
            "ACME_CA_BUNDLE": "acme_ca_bundle",
            "ACME_EMAIL": "acme_email",
            "ACME_RENEW_BEFORE_DAYS": "acme_renew_before_days",
            "ACME_RETRY_BASE_SECONDS": "acme_retry_base_seconds",
            "ACME_TIMEOUT_SECONDS": "acme_timeout_seconds",
            "WEBHOOK_WORKERS": "webhook_workers",
            "WEBHOOK_TIMEOUT_SECONDS": "webhook_timeout_seconds",
            "WEBHOOK_MAX_RESPONSE_BYTES": "webhook_max_response_bytes",
            "WEBHOOK_RETRY_BASE_SECONDS": "webhook_retry_base_seconds",
            "WEBHOOK_RETRY_MAX_SECONDS": "webhook_retry_max_seconds",
            "LOG_DRAIN_BATCH_LINES": "log_drain_batch_lines",
            "LOG_DRAIN_BUFFER_LINES": "log_drain_buffer_lines",
            "LOG_DRAIN_FLUSH_SECONDS": "log_drain_flush_seconds",
            "LOG_DRAIN_RETRIES": "log_drain_retries",
            "LOG_DRAIN_TIMEOUT_SECONDS": "log_drain_timeout_seconds",
            "NODE_BATCH_MAX_BYTES": "node_batch_max_bytes",
            "NODE_BATCH_MAX_RECORDS": "node_batch_max_records",
        }
        for var, field in simple.items():
            if (raw := get(var)) is not None:
                values[field] = raw
        for var, field in {"JWT_PUBLIC_KEY": "jwt_public_key", "JWT_PRIVATE_KEY": "jwt_private_key"}.items():
            if (raw := get(var)) is not None:
                values[field] = _pem_or_file(var, raw)
        if (raw := get("JWT_ALGORITHMS")) is not None:
            values["jwt_algorithms"] = tuple(a.strip() for a in raw.split(",") if a.strip())
        if (raw := get("OUTBOUND_ALLOW_CIDRS")) is not None:
            values["outbound_allow_cidrs"] = tuple(c.strip() for c in raw.split(",") if c.strip())
        if (raw := get("REGISTRY_ALLOW")) is not None:
            values["registry_allow"] = tuple(r.strip() for r in raw.split(",") if r.strip())
        if (raw := get("PROVIDERS")) is not None:
            values["providers"] = tuple(p.strip() for p in raw.split(",") if p.strip())
        for var, field in {
            "NODE_HEARTBEAT_TIMEOUT": "node_heartbeat_timeout_seconds",
            "NODE_CREDENTIAL_TTL": "node_credential_ttl_seconds",
            "NODE_ENROLL_TOKEN_MAX_TTL": "node_enroll_token_max_ttl_seconds",
            "NODE_SIGNING_TRANSITION": "node_signing_transition_seconds",
            "NODE_LOG_RETENTION": "node_log_retention_seconds",
            "NODE_EVENT_RETENTION": "node_event_retention_seconds",
        }.items():
            if (raw := get(var)) is not None:
                values[field] = _duration(var=var, raw=raw)
        if (raw := get("IDEMPOTENCY_TTL")) is not None:
            values["idempotency_ttl_seconds"] = int(_duration(var="IDEMPOTENCY_TTL", raw=raw))
        if (raw := get("WAKE_TIMEOUT")) is not None:
            values["wake_timeout_seconds"] = _duration(var="WAKE_TIMEOUT", raw=raw)
        if (raw := get("HEALTH_RESULT_RETENTION")) is not None:
            values["health_result_retention_seconds"] = _duration(var="HEALTH_RESULT_RETENTION", raw=raw)
        for var, field in {
            "METRICS_RAW_RETENTION": "metrics_raw_retention_seconds",
            "METRICS_MINUTE_RETENTION": "metrics_minute_retention_seconds",
            "METRICS_RETENTION": "metrics_retention_seconds",
            "TRACE_RETENTION": "trace_retention_seconds",
            "WEBHOOK_RETRY_PERIOD": "webhook_retry_period_seconds",
            "WEBHOOK_SECRET_OVERLAP": "webhook_secret_overlap_seconds",
            "WEBHOOK_DELIVERY_RETENTION": "webhook_delivery_retention_seconds",
            "JWT_MAX_TTL": "jwt_max_ttl_seconds",
            "DOMAIN_CLAIM_TTL": "domain_claim_ttl_seconds",
        }.items():
            if (raw := get(var)) is not None:
                values[field] = _duration(var=var, raw=raw)
        if (raw := get("PLANS")) is not None:
            try:
                values["plans"] = msgspec.json.decode(raw.encode(), type=dict[str, PlanQuota])
            except msgspec.ValidationError as exc:
                raise SettingsError(f"{PREFIX}PLANS: {exc}") from exc
            except msgspec.DecodeError as exc:
                raise SettingsError(f"{PREFIX}PLANS is not JSON: {exc}") from exc
        if (raw := get("RATE_LIMITS")) is not None:
            try:
                values["rate_limits"] = msgspec.json.decode(raw.encode(), type=dict[str, PlanRateLimit])
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise SettingsError(f"{PREFIX}RATE_LIMITS: {exc}") from exc
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise SettingsError(_naming_the_variable(str(exc), simple, values)) from exc
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.default_plan not in self.plans:
            raise SettingsError(f"{PREFIX}DEFAULT_PLAN {self.default_plan!r} is not one of {sorted(self.plans)}")
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
        unknown = set(self.jwt_algorithms) - allowed
        if unknown or not self.jwt_algorithms:
            raise SettingsError(f"{PREFIX}JWT_ALGORITHMS must be a subset of {sorted(allowed)}")
        asymmetric = [a for a in self.jwt_algorithms if not a.startswith("HS")]
        if asymmetric and not (self.jwt_public_key or self.jwt_jwks_url):
            raise SettingsError(
                f"{PREFIX}JWT_ALGORITHMS names {asymmetric} but neither {PREFIX}JWT_PUBLIC_KEY "
                f"nor {PREFIX}JWT_JWKS_URL is set"
            )
        if self.log_format not in ("auto", "json", "console"):
            raise SettingsError(f"{PREFIX}LOG_FORMAT must be auto, json or console")
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", self.cluster_name):
            raise SettingsError(f"{PREFIX}CLUSTER_NAME must be a DNS label (lowercase letters, digits, hyphens)")
        if self.workers < 1:
            raise SettingsError(f"{PREFIX}WORKERS must be at least 1")
        if self.jwt_max_ttl_seconds <= 0:
            raise SettingsError(f"{PREFIX}JWT_MAX_TTL must be positive")
        if self.reconcile_interval_seconds <= 0 or self.operation_lease_seconds <= 0:
            raise SettingsError(f"{PREFIX}RECONCILE_INTERVAL_SECONDS and OPERATION_LEASE_SECONDS must be positive")
        if self.health_concurrency < 1 or self.health_results_per_check < 1:
            raise SettingsError(f"{PREFIX}HEALTH_CONCURRENCY and HEALTH_RESULTS_PER_CHECK must be at least 1")
        if not 0 <= self.health_jitter <= 0.5:
            raise SettingsError(f"{PREFIX}HEALTH_JITTER must be from 0 to 0.5 (a fraction of the interval)")
        if min(self.health_tick_seconds, self.health_result_retention_seconds, self.health_prune_interval_seconds) <= 0:
            raise SettingsError(
                f"{PREFIX}HEALTH_TICK_SECONDS, HEALTH_RESULT_RETENTION and "
                "HEALTH_PRUNE_INTERVAL_SECONDS must be positive"
            )
        if self.default_plan not in self.rate_limits:
            raise SettingsError(f"{PREFIX}RATE_LIMITS has no entry for the default plan {self.default_plan!r}")
        if self.read_cache_seconds < 0:
            raise SettingsError(f"{PREFIX}READ_CACHE_SECONDS must be 0 (off) or positive")
        if self.rate_limit_batch < 1 or self.rate_limit_hold_seconds <= 0:
            raise SettingsError(f"{PREFIX}RATE_LIMIT_BATCH must be at least 1 and RATE_LIMIT_HOLD_SECONDS positive")
        for plan, limit in self.rate_limits.items():
            if min(msgspec.structs.astuple(limit)) < 1:
                raise SettingsError(f"{PREFIX}RATE_LIMITS[{plan!r}]: every rate and burst must be at least 1")
        for cidr in self.outbound_allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}OUTBOUND_ALLOW_CIDRS: {exc}") from exc
        if self.leader_lease_seconds <= 0:
            raise SettingsError(f"{PREFIX}LEADER_LEASE_SECONDS must be positive")
        if self.replica_name is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,30}", self.replica_name):
            raise SettingsError(f"{PREFIX}REPLICA_NAME must be 1-30 letters, digits, dots, hyphens or underscores")
        if self.router not in ("caddy", "none"):
            raise SettingsError(f"{PREFIX}ROUTER must be caddy or none")
        if not 0 <= self.canary_traffic_percent <= 100:
            raise SettingsError(f"{PREFIX}CANARY_TRAFFIC_PERCENT must be between 0 and 100")
        if not re.fullmatch(
            r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", self.router_base_domain
        ):
            raise SettingsError(f"{PREFIX}ROUTER_BASE_DOMAIN must be a lowercase domain name such as apps.example.net")
        if self.router_sync_interval_seconds <= 0:
            raise SettingsError(f"{PREFIX}ROUTER_SYNC_INTERVAL_SECONDS must be positive")
        for var, address in (
            ("ROUTER_ACCESS_LOG_LISTEN", self.router_access_log_listen),
            ("ROUTER_WAKE_LISTEN", self.router_wake_listen),
        ):
            if address != "none" and not re.fullmatch(r"[^\s:]+:\d{1,5}", address):
                raise SettingsError(f"{PREFIX}{var} must be host:port (port 0: any free one) or none")
        if min(self.router_report_flush_seconds, self.wake_timeout_seconds, self.idle_check_seconds) <= 0:
            raise SettingsError(
                f"{PREFIX}ROUTER_REPORT_FLUSH_SECONDS, WAKE_TIMEOUT and IDLE_CHECK_SECONDS must be positive"
            )
        if self.wake_retry_after_seconds < 1:
            raise SettingsError(f"{PREFIX}WAKE_RETRY_AFTER_SECONDS must be at least 1")
        if self.max_body_bytes < 1024:
            raise SettingsError(f"{PREFIX}MAX_BODY_BYTES must be at least 1024")
        if self.metrics_sample_seconds <= 0:
            raise SettingsError(f"{PREFIX}METRICS_SAMPLE_SECONDS must be positive")
        if self.audit_checkpoint_seconds < 1:
            raise SettingsError(f"{PREFIX}AUDIT_CHECKPOINT_SECONDS must be at least 1")
        if not (
            0
            < self.metrics_raw_retention_seconds
            <= self.metrics_minute_retention_seconds
            <= self.metrics_retention_seconds
        ):
            raise SettingsError(
                f"{PREFIX}METRICS_RAW_RETENTION <= METRICS_MINUTE_RETENTION <= METRICS_RETENTION must hold "
                "(each tier is rolled up into the next)"
            )
        if self.trace_retention_seconds <= 0 or self.trace_max_spans_per_instance < 1:
            raise SettingsError(f"{PREFIX}TRACE_RETENTION and TRACE_MAX_SPANS_PER_INSTANCE must be positive")
        if self.otlp_max_bytes < 1024 or min(self.otlp_max_metrics, self.otlp_max_series_per_metric) < 1:
            raise SettingsError(
                f"{PREFIX}OTLP_MAX_BYTES must be at least 1024, "
                "OTLP_MAX_METRICS and OTLP_MAX_SERIES_PER_METRIC positive"
            )
        if self.otlp_endpoint is not None and not re.match(r"^https?://[^/\s]+", self.otlp_endpoint):
            raise SettingsError(f"{PREFIX}OTLP_ENDPOINT must be an http(s) URL such as http://172.17.0.1:8080/v1/otlp")
        if self.webhook_workers < 0 or self.webhook_max_response_bytes < 0:
            raise SettingsError(f"{PREFIX}WEBHOOK_WORKERS and WEBHOOK_MAX_RESPONSE_BYTES must not be negative")
        if (
            min(
                self.webhook_timeout_seconds,
                self.webhook_retry_base_seconds,
                self.webhook_retry_max_seconds,
                self.webhook_retry_period_seconds,
            )
            <= 0
            or self.webhook_secret_overlap_seconds < 0
        ):
            raise SettingsError(
                f"{PREFIX}WEBHOOK_TIMEOUT_SECONDS, WEBHOOK_RETRY_BASE_SECONDS, WEBHOOK_RETRY_MAX_SECONDS and "
                "WEBHOOK_RETRY_PERIOD, WEBHOOK_DELIVERY_RETENTION must be positive, WEBHOOK_SECRET_OVERLAP not negative"
            )
        if min(self.log_drain_batch_lines, self.log_drain_buffer_lines) < 1 or self.log_drain_retries < 0:
            raise SettingsError(f"{PREFIX}LOG_DRAIN_BATCH_LINES and LOG_DRAIN_BUFFER_LINES must be at least 1")
        if self.log_drain_flush_seconds <= 0 or self.log_drain_timeout_seconds <= 0:
            raise SettingsError(f"{PREFIX}LOG_DRAIN_FLUSH_SECONDS and LOG_DRAIN_TIMEOUT_SECONDS must be positive")


def _pem_or_file(var: str, raw: str) -> str:
    if raw.lstrip().startswith("-----BEGIN"):
        return raw
    path = Path(raw)
    try:
        return path.read_text()
    except OSError as exc:
        raise SettingsError(f"{PREFIX}{var}: neither a PEM block nor a readable file ({exc})") from exc


def _duration(*, var: str, raw: str) -> float:
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}{var}: {exc}") from exc


def _naming_the_variable(error: str, variables: Mapping[str, str], values: Mapping[str, Any]) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.workers``` as the variable a user set:
    ``CTRLPLANE_WORKERS='abc': expected `int`, got `str```."""
    found = re.fullmatch(r"(?s)(.*) - at `\$\.(\w+)(.*)`", error)
    if found is None:
        return f"invalid configuration: {error}"
    reason, field, rest = found.groups()
    names = {f: PREFIX + var for var, f in variables.items()}
    name = names.get(field, PREFIX + field.upper())
    secret = any(word in field for word in ("secret", "key", "token", "password"))
    shown = f"={values[field]!r}" if isinstance(values.get(field), str) and not rest and not secret else ""
    where = f" (at {rest.lstrip('.')})" if rest else ""
    return f"{name}{shown}{where}: {reason[:1].lower()}{reason[1:]}"
