"""Every model, imported once so that ``metadata`` is complete for Alembic and the drift test."""

from ctrlplane.audit.models import AuditChain, AuditCheckpoint, AuditEntry
from ctrlplane.auth.models import ApiKey
from ctrlplane.db import Base
from ctrlplane.deployments.models import Deployment
from ctrlplane.drains.models import LogDrain
from ctrlplane.environments.models import Environment
from ctrlplane.events.models import Event, EventStream
from ctrlplane.health.models import HealthCheck, HealthCheckResult
from ctrlplane.idempotency.models import IdempotencyRecord
from ctrlplane.instances.models import Instance
from ctrlplane.network.models import (
    AcmeAccount,
    Certificate,
    Domain,
    HttpRequestSample,
    InstanceTraffic,
    Route,
    Upstream,
)
from ctrlplane.nodes.models import (
    EnrollmentToken,
    Node,
    NodeAssignment,
    NodeEvent,
    NodeExecution,
    NodeLogLine,
    NodeReport,
    NodeSigningKey,
)
from ctrlplane.operations.models import Operation
from ctrlplane.ratelimit.models import RateBucket
from ctrlplane.registry_credentials.models import RegistryCredential
from ctrlplane.releases.models import Release
from ctrlplane.runs.models import Job, Run
from ctrlplane.secrets.models import Secret, SecretVersion, TenantDataKey
from ctrlplane.telemetry.models import AppMetricSample, AppMetricSeries, MetricSample, TraceSpan
from ctrlplane.templates.models import Template, TemplateVersion
from ctrlplane.tenants.models import Tenant, TenantQuota
from ctrlplane.webhooks.models import WebhookDelivery, WebhookEndpoint

metadata = Base.metadata

__all__ = [
    "AcmeAccount",
    "ApiKey",
    "AppMetricSample",
    "AppMetricSeries",
    "AuditChain",
    "AuditCheckpoint",
    "AuditEntry",
    "Certificate",
    "Deployment",
    "Domain",
    "EnrollmentToken",
    "Environment",
    "Event",
    "EventStream",
    "HealthCheck",
    "HealthCheckResult",
    "HttpRequestSample",
    "IdempotencyRecord",
    "Instance",
    "InstanceTraffic",
    "Job",
    "LogDrain",
    "MetricSample",
    "Node",
    "NodeAssignment",
    "NodeEvent",
    "NodeExecution",
    "NodeLogLine",
    "NodeReport",
    "NodeSigningKey",
    "Operation",
    "RateBucket",
    "RegistryCredential",
    "Release",
    "Route",
    "Run",
    "Secret",
    "SecretVersion",
    "Template",
    "TemplateVersion",
    "Tenant",
    "TenantDataKey",
    "TenantQuota",
    "TraceSpan",
    "Upstream",
    "WebhookDelivery",
    "WebhookEndpoint",
    "metadata",
]
