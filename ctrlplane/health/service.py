"""Health checks: defining them, running one on request, the instance's aggregate, and the rule
every run is recorded by (the scheduler's and a manual one alike).

**Rules of a check.** ``interval`` and ``timeout`` are Go-style durations: ``interval`` from 1 s to
24 h, ``timeout`` above 0, at most 60 s and below ``interval``. An ``http`` or ``tcp`` target names
``localhost`` and one of the instance's TCP ports (``probes.py`` says why no other host is
allowed); a ``command`` is shell-quoted words run inside the replica without a shell. Names are
unique per instance; an instance has at most ``MAX_CHECKS_PER_INSTANCE`` checks.

**Status of a check.** ``unknown`` until concluded; ``retries`` consecutive failed runs make it
``unhealthy`` (event ``health.check_unhealthy``); one passing run makes it ``healthy`` (event
``health.check_healthy``). Both events are appended in the transaction that records the run.

**Aggregate** (``GET /v1/instances/{id}/health``): ``unknown`` when the instance is not meant to
run or no enabled check has been concluded or failed yet; ``unhealthy`` when every such check is
unhealthy; ``degraded`` when some are unhealthy or failing; ``healthy`` otherwise.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

from ctrlplane.errors import Conflict, InvalidInput, InvalidState
from ctrlplane.events.service import append as append_event
from ctrlplane.health import schemas
from ctrlplane.health.models import HealthCheck, HealthCheckResult
from ctrlplane.health.probes import Outcome, Target, parse_target, run_check
from ctrlplane.health.repository import HealthRepository
from ctrlplane.ids import new_id
from ctrlplane.instances.lifecycle import reconfigure
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.secrets.service import values_of as secret_values
from ctrlplane.telemetry.otlp import instance_token
from ctrlplane.timeutil import parse_duration_input, utc_now
from ctrlplane.web.context import AppServices, RequestContext
from ctrlplane.web.pagination import Page, paginate
from ctrlplane.web.preconditions import require_version

MAX_CHECKS_PER_INSTANCE = 20
MIN_INTERVAL_SECONDS = 1.0
MAX_INTERVAL_SECONDS = 24 * 3600.0
MAX_TIMEOUT_SECONDS = 60.0
UPTIME_WINDOW = timedelta(hours=24)
RUNNABLE_STATES = ("running", "failed")
"""Instance states in which checks run (a failed instance's checks say what answers)."""


HIDDEN_OUTPUT = "(shown to the deploy role only)"


async def secrets_to_redact(services: AppServices, *, tenant_id: str, instance_id: str) -> list[str]:
    """The instance's secret values and its OTLP token: removed from a command check's messages
    (the only checks that show what a container printed)."""
    async with services.db.read() as session:
        values = await secret_values(session, services.vault, tenant_id=tenant_id, instance_id=instance_id)
    return [*values, instance_token(services.settings, instance_id)]


def result_schema(result: HealthCheckResult, *, show_output: bool = True) -> schemas.CheckResult:
    """A result; ``show_output`` false (a caller without the deploy role) hides its message, which
    may hold what the container printed."""
    return schemas.CheckResult(
        id=result.id,
        check_id=result.check_id,
        status=result.status,  # type: ignore[arg-type]
        latency_ms=result.latency_ms,
        message=result.message if show_output else HIDDEN_OUTPUT,
        manual=result.manual,
        checked_at=result.checked_at,
    )


def check_schema(check: HealthCheck) -> schemas.HealthCheck:
    return schemas.HealthCheck(
        id=check.id,
        tenant_id=check.tenant_id,
        instance_id=check.instance_id,
        name=check.name,
        type=check.type,  # type: ignore[arg-type]
        target=check.target,
        interval=check.interval,
        timeout=check.timeout,
        retries=check.retries,
        enabled=check.enabled,
        status=check.status,  # type: ignore[arg-type]
        consecutive_failures=check.consecutive_failures,
        last_checked_at=check.last_checked_at,
        last_success_at=check.last_success_at,
        version=check.version,
        created_by=check.created_by,
        created_at=check.created_at,
        updated_at=check.updated_at,
    )


def target_of(check: HealthCheck) -> Target:
    return parse_target(check.type, check.target)


def _seconds(field: str, text: str) -> float:
    return parse_duration_input(field, text)


def validate_timing(interval: str, timeout: str) -> tuple[float, float]:
    interval_seconds, timeout_seconds = _seconds("interval", interval), _seconds("timeout", timeout)
    if not MIN_INTERVAL_SECONDS <= interval_seconds <= MAX_INTERVAL_SECONDS:
        raise InvalidInput("interval must be from 1s to 24h", details={"interval": interval})
    if not 0 < timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput("timeout must be above 0 and at most 60s", details={"timeout": timeout})
    if timeout_seconds >= interval_seconds:
        raise InvalidInput(
            f"timeout ({timeout}) must be shorter than interval ({interval})",
            details={"timeout": timeout, "interval": interval},
        )
    return interval_seconds, timeout_seconds


def validate_target(type: str, target: str, instance: Instance) -> Target:
    return validate_target_ports(type, target, instance.ports)


def validate_target_ports(type: str, target: str, ports: list[dict[str, Any]]) -> Target:
    """The parsed target, or 400 when it is malformed or names a port not among ``ports`` (an
    instance's, or a template's before any instance exists)."""
    try:
        parsed = parse_target(type, target)
    except ValueError as exc:
        raise InvalidInput(f"target: {exc}", details={"target": str(exc)}) from None
    if parsed.port is not None:
        tcp_ports = sorted(p["container_port"] for p in ports if p.get("protocol", "tcp") == "tcp")
        if parsed.port not in tcp_ports:
            raise InvalidInput(
                f"target: port {parsed.port} is not one of the instance's TCP ports {tcp_ports}",
                details={"target": target, "ports": tcp_ports},
            )
    return parsed


async def record_outcome(session: Any, check: HealthCheck, outcome: Outcome, *, manual: bool) -> HealthCheckResult:
    """Record one run of a locked check: its result, its counters and, when its status changes,
    the ``health.check_healthy`` / ``health.check_unhealthy`` event, in the caller's transaction."""
    now = utc_now()
    result = HealthCheckResult(
        id=new_id("hcr"),
        check_id=check.id,
        tenant_id=check.tenant_id,
        instance_id=check.instance_id,
        status="pass" if outcome.ok else "fail",
        latency_ms=outcome.latency_ms,
        message=outcome.message,
        manual=manual,
        checked_at=now,
    )
    session.add(result)
    previous = check.status
    check.last_checked_at = now
    if outcome.ok:
        check.consecutive_failures = 0
        check.last_success_at = now
        check.status = "healthy"
    else:
        check.consecutive_failures += 1
        if check.consecutive_failures >= check.retries:
            check.status = "unhealthy"
    if check.status != previous:
        await append_event(
            session,
            tenant_id=check.tenant_id,
            instance_id=check.instance_id,
            type=f"health.check_{check.status}",
            data={
                "check_id": check.id,
                "name": check.name,
                "type": check.type,
                "from": previous,
                "to": check.status,
                "consecutive_failures": check.consecutive_failures,
                # events are read by the read role: a command's output stays in the results
                "message": outcome.message.split(":", 1)[0] if check.type == "command" else outcome.message,
            },
        )
    await session.flush()
    return result


def aggregate(instance: Instance, checks: list[HealthCheck]) -> str:
    if instance.desired_state != "running":
        return "unknown"
    considered = [c for c in checks if c.enabled and (c.status != "unknown" or c.consecutive_failures > 0)]
    if not considered:
        return "unknown"
    if all(c.status == "unhealthy" for c in considered):
        return "unhealthy"
    if any(c.status == "unhealthy" or c.consecutive_failures > 0 for c in considered):
        return "degraded"
    return "healthy"


class HealthService:
    def __init__(self, context: RequestContext, *, if_match: str | None = None) -> None:
        self.context = context
        self.if_match = if_match
        self.session = context.session
        self.tenant_id = context.principal.tenant_id
        self.repo = HealthRepository(context.session, self.tenant_id)
        self.instances = InstanceRepository(context.session, self.tenant_id)
        self._show_output = context.principal.has_role("deploy")

    def _audit(self, check: HealthCheck, **details: Any) -> None:
        self.context.audit.resource_id = check.id
        self.context.audit.tenant_id = check.tenant_id
        self.context.audit.details.update(instance_id=check.instance_id, name=check.name, **details)

    async def create(self, instance_id: str, data: schemas.HealthCheckCreate) -> schemas.HealthCheck:
        interval_seconds, timeout_seconds = validate_timing(data.interval, data.timeout)
        instance = await self.instances.get(instance_id, for_update=True)
        validate_target(data.type, data.target, instance)
        if instance.state in ("destroying", "destroyed"):
            raise InvalidState(
                f"cannot add a health check to an instance that is {instance.state}",
                details={"state": instance.state},
            )
        if await self.repo.name_taken(instance.id, data.name):
            raise Conflict(f"the instance already has a health check named {data.name!r}", details={"name": data.name})
        if await self.repo.count_of_instance(instance.id) >= MAX_CHECKS_PER_INSTANCE:
            raise Conflict(
                f"an instance has at most {MAX_CHECKS_PER_INSTANCE} health checks",
                details={"limit": MAX_CHECKS_PER_INSTANCE},
            )
        now = utc_now()
        check = HealthCheck(
            id=new_id("chk"),
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            name=data.name,
            type=data.type,
            target=data.target,
            interval=data.interval,
            timeout=data.timeout,
            interval_seconds=interval_seconds,
            timeout_seconds=timeout_seconds,
            retries=data.retries,
            enabled=data.enabled,
            status="unknown",
            consecutive_failures=0,
            next_run_at=now,
            version=1,
            created_by=self.context.principal.subject,
            created_at=now,
            updated_at=now,
        )
        self.session.add(check)
        await self.session.flush()
        await reconfigure(self.session, self.context.services.providers, [instance])
        self._audit(check, type=data.type, target=data.target)
        return check_schema(check)

    async def list(self, instance_id: str, *, cursor: str | None, limit: int) -> Page[schemas.HealthCheck]:
        instance = await self.instances.get(instance_id)
        statement = self.repo.of_instance(instance.id)
        return await paginate(self.session, statement, HealthCheck.id, cursor=cursor, limit=limit, convert=check_schema)

    async def _locked(self, check_id: str) -> HealthCheck:
        check = await self.repo.get(check_id, for_update=True)
        require_version(self.if_match, resource="health check", resource_id=check.id, version=check.version)
        return check

    async def get(self, check_id: str) -> schemas.HealthCheck:
        return check_schema(await self.repo.get(check_id))

    async def update(self, check_id: str, data: schemas.HealthCheckUpdate) -> schemas.HealthCheck:
        """Change the fields present, by the rules of ``create``. A new target starts the check
        afresh (``unknown``): what was concluded about the old one says nothing about the new."""
        check = await self._locked(check_id)
        instance = await self.instances.get(check.instance_id)
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        changes = {k: v for k, v in changes.items() if getattr(check, k) != v}
        interval, timeout = changes.get("interval", check.interval), changes.get("timeout", check.timeout)
        check.interval_seconds, check.timeout_seconds = validate_timing(interval, timeout)
        if "target" in changes:
            validate_target(check.type, changes["target"], instance)
        if "name" in changes and await self.repo.name_taken(check.instance_id, changes["name"]):
            raise Conflict(
                f"the instance already has a health check named {changes['name']!r}", details={"name": changes["name"]}
            )
        for field, value in changes.items():
            setattr(check, field, value)
        if "target" in changes:
            check.status, check.consecutive_failures = "unknown", 0
        if changes.keys() & {"target", "interval", "timeout", "enabled"}:
            check.next_run_at = utc_now()
        if changes:
            check.version += 1
            check.updated_at = utc_now()
        self._audit(check, changed=sorted(changes))
        if changes.keys() & {"target", "interval", "timeout", "retries", "enabled"}:
            # what a runtime's own probes are made of (see health.probes.runtime_probes)
            await self.session.flush()
            await reconfigure(self.session, self.context.services.providers, [instance])
        return check_schema(check)

    async def delete(self, check_id: str) -> None:
        check = await self._locked(check_id)
        self._audit(check)
        await self.session.delete(check)
        await self.session.flush()
        await reconfigure(self.session, self.context.services.providers, [await self.instances.get(check.instance_id)])

    async def run(self, check_id: str) -> schemas.CheckRun:
        """Run a check now and record the run like a scheduled one. The check and its instance are
        read in a short session of their own and the request's transaction is first used after
        the probe, so no transaction stays open while the provider is called."""
        services = self.context.services
        async with services.db.read() as session:
            check = await HealthRepository(session, self.tenant_id).get(check_id)
            instance = await session.get(Instance, check.instance_id)
        require_version(self.if_match, resource="health check", resource_id=check.id, version=check.version)
        if instance is None or instance.desired_state != "running" or instance.state not in RUNNABLE_STATES:
            state = instance.state if instance is not None else "destroyed"
            raise InvalidState(
                f"cannot run a health check of an instance that is {state}",
                details={"state": state, "allowed": list(RUNNABLE_STATES)},
            )
        provider = services.providers.get(instance.provider_name)
        target = target_of(check)
        secrets = (
            await secrets_to_redact(services, tenant_id=instance.tenant_id, instance_id=instance.id)
            if target.type == "command"
            else []
        )
        outcome = await run_check(
            provider, instance.id, instance.generation, target, timeout=check.timeout_seconds, secrets=secrets
        )
        locked = await self._locked(check_id)
        result = await record_outcome(self.session, locked, outcome, manual=True)
        self._audit(locked, status=result.status)
        return schemas.CheckRun(result=result_schema(result, show_output=self._show_output), check=check_schema(locked))

    async def health(self, instance_id: str) -> schemas.InstanceHealth:
        instance = await self.instances.get(instance_id)
        checks = await self.repo.all_of_instance(instance.id)
        counts = await self.repo.pass_counts([c.id for c in checks], utc_now() - UPTIME_WINDOW)
        entries = []
        for check in checks:
            latest = await self.repo.latest_result(check.id)
            passed, total = counts.get(check.id, (0, 0))
            entries.append(
                schemas.CheckHealth(
                    check_id=check.id,
                    name=check.name,
                    type=check.type,  # type: ignore[arg-type]
                    target=check.target,
                    enabled=check.enabled,
                    status=check.status,  # type: ignore[arg-type]
                    latest=result_schema(latest, show_output=self._show_output) if latest is not None else None,
                    latency_ms=latest.latency_ms if latest is not None else None,
                    consecutive_failures=check.consecutive_failures,
                    last_success_at=check.last_success_at,
                    uptime_percent=round(100.0 * passed / total, 3) if total else None,
                )
            )
        return schemas.InstanceHealth(
            instance_id=instance.id,
            status=aggregate(instance, checks),  # type: ignore[arg-type]
            instance_state=instance.state,
            checks=entries,
        )
