"""Instances: the API side. Records desired state and an operation in the request's transaction;
workers apply it (no request waits on a provider).

Lifecycle rules (an action the state does not allow is 409 ``invalid_state`` naming the state):

    action     allowed in                                   state after   desired
    start      stopped, sleeping, failed                    starting      running
    stop       provisioning, starting, running, sleeping, failed  stopping  stopped
    restart    running, failed                              starting      running
    scale      provisioning, starting, running, stopped, failed  (unchanged)
    update     any but destroying/destroyed (env, ports, labels → rolling replacement; resources → scale)
    delete     any but destroying/destroyed                 destroying    destroyed
    suspend    not suspended, not destroying/destroyed      stopping      stopped (remembers the old)
    unsuspend  suspended                                    starting if it ran before

A suspended instance refuses start, restart, scale and changes that need new containers.
``unknown`` is observed, never asked for: the instance's runtime cannot tell now (its node missed
its heartbeats, ``nodes`` provider); it allows update, delete and suspension only.
Actions that queue work for the provider answer 503 ``provider_unavailable`` (and write nothing)
while the provider's runtime does not answer; work accepted before an outage waits and resumes.
Quotas (``max_instances``, ``max_cpu_millis``, ``max_memory_mb``, counting CPU and memory times
replicas) are checked under a lock on the tenant row, so concurrent creates cannot overshoot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, cast

import msgspec

from ctrlplane.deployments.repository import deployment_running
from ctrlplane.errors import Conflict, Forbidden, InvalidInput, InvalidState, QuotaExceeded
from ctrlplane.events.service import append as append_event
from ctrlplane.ids import new_id
from ctrlplane.instances import schemas
from ctrlplane.instances.lifecycle import FINAL, destroy, suspend, unsuspend
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.network.router import default_hostname, router_url
from ctrlplane.operations import queue
from ctrlplane.releases.service import cut as cut_release
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate_rows
from ctrlplane.web.preconditions import require_version


def to_schema(instance: Instance) -> schemas.Instance:
    return schemas.Instance(
        id=instance.id,
        tenant_id=instance.tenant_id,
        name=instance.name,
        image=instance.image,
        provider_name=instance.provider_name,
        state=instance.state,  # type: ignore[arg-type]
        desired_state=instance.desired_state,  # type: ignore[arg-type]
        status_message=instance.status_message,
        resources=schemas.Resources(cpu_millis=instance.cpu_millis, memory_mb=instance.memory_mb),
        replicas=instance.replicas,
        ports=[msgspec.convert(p, schemas.Port) for p in instance.ports],
        env=instance.env,
        labels=instance.labels,
        restart_policy=instance.restart_policy,  # type: ignore[arg-type]
        pull_policy=instance.pull_policy,  # type: ignore[arg-type]
        endpoints=[msgspec.convert(e, schemas.Endpoint) for e in instance.endpoints],
        restart_count=instance.restart_count,
        suspended_at=instance.suspended_at,
        suspension_reason=instance.suspension_reason,
        current_release_id=instance.current_release_id,
        version=instance.version,
        created_at=instance.created_at,
        updated_at=instance.updated_at,
        release_command=instance.release_command,
        release_timeout=instance.release_timeout_seconds,
        read_only_root_fs=instance.read_only_root_fs,
    )


_PORTS = msgspec.json.Decoder(list[schemas.Port])
_ENDPOINTS = msgspec.json.Decoder(list[schemas.Endpoint])
_STRINGS = msgspec.json.Decoder(dict[str, str])
_ARGV = msgspec.json.Decoder(list[str] | None)


def listed(row: Any, hostname: str, url: str) -> schemas.Instance:
    """The API view of a listed row at its router address: what ``to_schema`` makes of the row, its
    JSON columns given as text (``repository.LISTED_JSON``) and decoded here into the view's types."""
    return schemas.Instance(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        image=row.image,
        provider_name=row.provider_name,
        state=row.state,
        desired_state=row.desired_state,
        status_message=row.status_message,
        resources=schemas.Resources(cpu_millis=row.cpu_millis, memory_mb=row.memory_mb),
        replicas=row.replicas,
        ports=_PORTS.decode(row.ports),
        env=_STRINGS.decode(row.env),
        labels=_STRINGS.decode(row.labels),
        restart_policy=row.restart_policy,
        pull_policy=row.pull_policy,
        endpoints=_ENDPOINTS.decode(row.endpoints),
        restart_count=row.restart_count,
        suspended_at=row.suspended_at,
        suspension_reason=row.suspension_reason,
        current_release_id=row.current_release_id,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        release_command=_ARGV.decode(row.release_command) if row.release_command is not None else None,
        release_timeout=row.release_timeout_seconds,
        read_only_root_fs=row.read_only_root_fs,
        hostnames=[hostname],
        url=url,
    )


def _require(instance: Instance, action: str, allowed: tuple[str, ...]) -> None:
    if instance.state not in allowed:
        raise InvalidState(
            f"cannot {action} an instance that is {instance.state}",
            details={"state": instance.state, "allowed": list(allowed)},
        )


def _not_suspended(instance: Instance, action: str) -> None:
    if instance.suspended_at is not None:
        raise InvalidState(
            f"cannot {action} a suspended instance ({instance.suspension_reason})", details={"state": "suspended"}
        )


class InstanceService:
    def __init__(self, context: RequestContext, *, if_match: str | None = None) -> None:
        self.context = context
        self.session = context.session
        self.repo = InstanceRepository(context.session, context.principal.tenant_id)
        self.if_match = if_match

    def _audit(self, instance: Instance, **details: Any) -> None:
        self.context.audit.resource_id = instance.id
        self.context.audit.tenant_id = instance.tenant_id
        self.context.audit.details.update(details)

    async def _event(self, instance: Instance, type: str, **data: Any) -> None:
        await append_event(self.session, tenant_id=instance.tenant_id, instance_id=instance.id, type=type, data=data)

    async def locked(self, instance_id: str) -> Instance:
        """The instance, locked after its tenant: every path that locks both takes the tenant first
        (quota checks, tenant suspension), so two of them can never deadlock."""
        instance = await self.repo.get(instance_id)
        # From here on the request is about this tenant's instance: refused or not, its audit
        # entry goes to the tenant's chain (a system admin's too, whose token names no tenant).
        self.context.audit.tenant_id, self.context.audit.resource_id = instance.tenant_id, instance.id
        await TenantRepository(self.session).get(instance.tenant_id, for_update=True)
        instance = await self.repo.get(instance_id, for_update=True)
        require_version(self.if_match, resource="instance", resource_id=instance.id, version=instance.version)
        return instance

    async def _no_deploy_running(self, instance: Instance, action: str) -> None:
        """A deploy owns the instance's configuration until it ends: changing it meanwhile would be
        lost (or half-applied) when the deploy goes back."""
        running = await deployment_running(self.session, instance.id)
        if running is not None:
            raise Conflict(
                f"cannot {action} while deployment {running} runs; wait for it or cancel it",
                details={"deployment_id": running},
            )

    async def _provider_answers(self, provider_name: str) -> None:
        """Refuse (503, nothing written) work for a runtime that does not answer right now."""
        await self.context.services.providers.require_available(provider_name)

    def _roll_out(self, instance: Instance, kind: str) -> None:
        """Apply a configuration change: ``update`` rolls a new generation out now; ``scale`` changes
        the running replicas in place. A stopped instance gets a new generation instead, which its
        next start puts in place of the old containers, so nothing asked for while stopped is lost."""
        if instance.desired_state in ("stopped", "sleeping"):
            instance.generation += 1
            return
        if kind == "update":
            instance.generation += 1
        self._enqueue(instance, kind)

    def _enqueue(self, instance: Instance, kind: str, **payload: Any) -> None:
        queue.enqueue(self.session, tenant_id=instance.tenant_id, instance_id=instance.id, kind=kind, payload=payload)

    async def check_quota(
        self,
        tenant_id: str,
        *,
        instances: int,
        cpu_millis: int,
        memory_mb: int,
        except_id: str | None = None,
        tenant_locked: bool = False,
    ) -> None:
        """Refuse (``QuotaExceeded``) what would take the tenant past its quota; the tenant's row is
        locked first (unless the caller did: ``tenant_locked``), so concurrent checks of one tenant
        run one after the other."""
        tenants = TenantRepository(self.session)
        if not tenant_locked:
            await tenants.get(tenant_id, for_update=True)
        quota = await tenants.quota(tenant_id)
        count, cpu, memory = await self.repo.usage(tenant_id, except_id=except_id)
        for reserved in self.context.services.reserved_usage:
            reserved_cpu, reserved_memory = await reserved(self.session, tenant_id)
            cpu, memory = cpu + reserved_cpu, memory + reserved_memory
        for name, used, requested, limit in (
            ("max_instances", count, instances, quota.max_instances),
            ("max_cpu_millis", cpu, cpu_millis, quota.max_cpu_millis),
            ("max_memory_mb", memory, memory_mb, quota.max_memory_mb),
        ):
            if requested and used + requested > limit:
                raise QuotaExceeded(name, used=used, limit=limit, requested=requested)

    async def create(self, data: schemas.InstanceCreate) -> schemas.Instance:
        tenant_id = self.context.tenant_scope(data.tenant_id)
        provider_name = data.provider_name or self.context.services.settings.providers[0]
        await self._provider_answers(provider_name)
        _unique_ports(data.ports)
        # two checks made in worker threads, at once, and before the first statement takes the
        # transaction's lock (an engine that stalls must not hold every writer up): the provider's
        # room (an engine call) and the image's registry (a name lookup)
        await _all_pass(
            self.context.services.providers.admit(provider_name, tenant_id),
            self.context.services.registries.admit(data.image),
        )
        tenant = await TenantRepository(self.session).get(tenant_id, for_update=True)
        if tenant.status != "active":
            raise InvalidState(
                f"tenant is {tenant.status}; no instances can be created", details={"state": tenant.status}
            )
        await self.check_quota(
            tenant_id,
            instances=1,
            cpu_millis=data.resources.cpu_millis * data.replicas,
            memory_mb=data.resources.memory_mb * data.replicas,
            tenant_locked=True,
        )
        if await self.repo.name_taken(tenant_id, data.name):
            raise Conflict(f"an instance named {data.name!r} exists", details={"name": data.name})
        now = utc_now()
        instance = Instance(
            id=new_id("inst"),
            tenant_id=tenant_id,
            name=data.name,
            image=data.image,
            provider_name=provider_name,
            state="provisioning",
            desired_state="running",
            status_message="",
            cpu_millis=data.resources.cpu_millis,
            memory_mb=data.resources.memory_mb,
            replicas=data.replicas,
            ports=[msgspec.to_builtins(p) for p in data.ports],
            env=dict(data.env),
            labels=dict(data.labels),
            restart_policy=data.restart_policy,
            pull_policy=data.pull_policy,
            read_only_root_fs=data.read_only_root_fs,
            release_command=schemas.argv(data.release_command) if data.release_command is not None else None,
            release_timeout_seconds=data.release_timeout,
            endpoints=[],
            generation=1,
            restart_count=0,
            recent_restarts=[],
            version=1,
            created_at=now,
            updated_at=now,
        )
        self.session.add(instance)
        await self.session.flush()
        await cut_release(self.session, instance, reason="create", created_by=self.context.principal.subject)
        self._enqueue(instance, "provision")
        await self._event(instance, "instance.created", name=instance.name, image=instance.image)
        self._audit(instance, name=data.name, image=data.image, provider=provider_name)
        return await self._addressed(to_schema(instance), tenant.slug)

    async def _addressed(self, view: schemas.Instance, slug: str | None = None) -> schemas.Instance:
        """``view`` with its hostname and URL through the router."""
        if slug is None:
            slug = (await TenantRepository(self.session).get(view.tenant_id)).slug
        settings = self.context.services.settings
        hostname = default_hostname(settings, view.name, slug)
        return msgspec.structs.replace(view, hostnames=[hostname], url=router_url(settings, hostname))

    async def list(
        self,
        *,
        state: str | None,
        labels: dict[str, str],
        provider: str | None,
        name: str | None,
        cursor: str | None,
        limit: int,
        tenant_id: str | None = None,
    ) -> Page[schemas.Instance]:
        """The caller's instances; ``tenant_id`` narrows a system admin's list to one tenant (for a
        tenant's own token it must name that tenant: 403 otherwise, as for API keys)."""
        own = self.context.principal.tenant_id
        if tenant_id is not None and own is not None and tenant_id != own:
            raise Forbidden("tenant_id differs from the tenant of your token")
        listing, params = self.repo.listing(
            state=state, labels=labels, provider=provider, name=name, include_destroyed=False, tenant_id=tenant_id
        )
        settings = self.context.services.settings

        def addressed(row: Any) -> schemas.Instance:
            hostname = default_hostname(settings, row.name, row.tenant_slug)
            return listed(row, hostname, router_url(settings, hostname))

        if own is None or not self.context.cached_reads or not self.repo.is_live_listing(listing):
            # one statement: the page, each row's tenant slug and the total (tests/api/test_instances.py)
            connection = await self.session.connection()
            return await paginate_rows(connection, listing, params, cursor=cursor, limit=limit, convert=addressed)
        # which instances the page holds is cached by tenant (invalidated whenever one of the
        # tenant's instances is inserted, deleted or changes state), each view by instance
        rows = self.context.services.db.rows
        part = (cursor or "", limit)
        ids: Page[str] | None = rows.get_in("instance_pages", own, part)
        if ids is not None:
            views: list[schemas.Instance | None] = [rows.get("instances", id_) for id_ in ids.items]
            if all(view is not None and view.tenant_id == own for view in views):
                return Page(items=cast("list[schemas.Instance]", views), next_cursor=ids.next_cursor, total=ids.total)
        ticket = rows.ticket()
        connection = await self.session.connection()
        page = await paginate_rows(connection, listing, params, cursor=cursor, limit=limit, convert=addressed)
        for view in page.items:
            rows.put("instances", view.id, ticket, view)
        listed_ids = Page(items=[view.id for view in page.items], next_cursor=page.next_cursor, total=page.total)
        rows.put_in("instance_pages", own, part, ticket, listed_ids)
        return page

    async def get(self, instance_id: str) -> schemas.Instance:
        """The instance's view; a tenant's read request takes it from the row cache when it can."""
        tenant_id = self.context.principal.tenant_id
        if tenant_id is None or not self.context.cached_reads:
            return await self._addressed(to_schema(await self.repo.view(instance_id)))
        rows = self.context.services.db.rows
        cached: schemas.Instance | None = rows.get("instances", instance_id)
        if cached is not None and cached.tenant_id == tenant_id:
            return cached
        ticket = rows.ticket()
        view = await self._addressed(to_schema(await self.repo.view(instance_id)))
        rows.put("instances", instance_id, ticket, view)
        return view

    async def update(self, instance_id: str, data: schemas.InstanceUpdate) -> schemas.Instance:
        instance = await self.locked(instance_id)
        _require(instance, "update", tuple(s for s in _ALL_STATES if s not in FINAL))
        changed: list[str] = []
        if data.name is not msgspec.UNSET and data.name != instance.name:
            if await self.repo.name_taken(instance.tenant_id, data.name, except_id=instance.id):
                raise Conflict(f"an instance named {data.name!r} exists", details={"name": data.name})
            instance.name = data.name
            changed.append("name")
        needs_new_containers = False
        if data.labels is not msgspec.UNSET and data.labels != instance.labels:
            instance.labels = dict(data.labels)
            changed.append("labels")
            needs_new_containers = True
        if data.env is not msgspec.UNSET and data.env != instance.env:
            instance.env = dict(data.env)
            changed.append("env")
            needs_new_containers = True
        if data.ports is not msgspec.UNSET:
            _unique_ports(data.ports)
            ports = [msgspec.to_builtins(p) for p in data.ports]
            if ports != instance.ports:
                instance.ports = ports
                changed.append("ports")
                needs_new_containers = True
        if data.read_only_root_fs is not msgspec.UNSET and data.read_only_root_fs != instance.read_only_root_fs:
            instance.read_only_root_fs = data.read_only_root_fs
            changed.append("read_only_root_fs")
            needs_new_containers = True
        if data.resources is not msgspec.UNSET and (
            data.resources.cpu_millis != instance.cpu_millis or data.resources.memory_mb != instance.memory_mb
        ):
            await self._apply_scale(instance, data.resources, instance.replicas)
            changed.append("resources")
        if needs_new_containers:
            _not_suspended(instance, "change env, ports or labels of")
            await self._no_deploy_running(instance, "change env, ports or labels")
            await self._provider_answers(instance.provider_name)
            await cut_release(
                self.session,
                instance,
                reason="update",
                created_by=self.context.principal.subject,
                notes="changed " + ", ".join(f for f in changed if f != "name"),
            )
            self._roll_out(instance, "update")
        if changed:
            instance.version += 1
            instance.updated_at = utc_now()
            await self._event(instance, "instance.updated", fields=changed)
        self._audit(instance, changed=changed)
        return await self._addressed(to_schema(instance))

    async def _apply_scale(self, instance: Instance, resources: schemas.Resources, replicas: int) -> None:
        _not_suspended(instance, "scale")
        await self._no_deploy_running(instance, "scale")
        await self._provider_answers(instance.provider_name)
        await self.check_quota(
            instance.tenant_id,
            instances=0,
            cpu_millis=resources.cpu_millis * replicas,
            memory_mb=resources.memory_mb * replicas,
            except_id=instance.id,
        )
        instance.cpu_millis, instance.memory_mb, instance.replicas = resources.cpu_millis, resources.memory_mb, replicas
        self._roll_out(instance, "scale")

    async def scale(self, instance_id: str, data: schemas.ScaleRequest) -> schemas.Instance:
        instance = await self.locked(instance_id)
        _require(instance, "scale", ("provisioning", "starting", "running", "stopped", "sleeping", "failed"))
        if data.resources is msgspec.UNSET and data.replicas is msgspec.UNSET:
            raise InvalidInput("scale needs resources, replicas or both", details={"body": "empty"})
        resources = (
            data.resources
            if data.resources is not msgspec.UNSET
            else schemas.Resources(cpu_millis=instance.cpu_millis, memory_mb=instance.memory_mb)
        )
        replicas = data.replicas if data.replicas is not msgspec.UNSET else instance.replicas
        await self._apply_scale(instance, resources, replicas)
        instance.version += 1
        instance.updated_at = utc_now()
        await self._event(
            instance,
            "instance.scaled",
            cpu_millis=resources.cpu_millis,
            memory_mb=resources.memory_mb,
            replicas=replicas,
        )
        self._audit(instance, cpu_millis=resources.cpu_millis, memory_mb=resources.memory_mb, replicas=replicas)
        return await self._addressed(to_schema(instance))

    async def delete(self, instance_id: str) -> schemas.Instance:
        instance = await self.locked(instance_id)
        _require(instance, "delete", tuple(s for s in _ALL_STATES if s not in FINAL))
        await self._provider_answers(instance.provider_name)
        await destroy(self.session, instance)
        self._audit(instance)
        return await self._addressed(to_schema(instance))

    async def act(self, instance_id: str, action: str) -> schemas.Instance:
        """``start``, ``stop`` or ``restart``: check the state allows it, record what is wanted, queue it."""
        allowed, state, desired, refused_while_suspended = _ACTIONS[action]
        instance = await self.locked(instance_id)
        _require(instance, action, allowed)
        if refused_while_suspended:
            _not_suspended(instance, action)
        await self._provider_answers(instance.provider_name)
        await self._transition(instance, action, state=state, desired=desired)
        return await self._addressed(to_schema(instance))

    async def _transition(self, instance: Instance, kind: str, *, state: str, desired: str) -> None:
        previous = instance.state
        instance.state, instance.desired_state = state, desired
        instance.recent_restarts = []
        instance.version += 1
        instance.updated_at = utc_now()
        self._enqueue(instance, kind)
        await self._event(instance, "instance.state_changed", **{"from": previous, "to": state, "action": kind})
        self._audit(instance)

    async def suspend(self, instance_id: str, reason: str) -> schemas.Instance:
        instance = await self.locked(instance_id)
        _require(instance, "suspend", tuple(s for s in _ALL_STATES if s not in FINAL))
        await self._provider_answers(instance.provider_name)
        if instance.suspended_at is not None:
            raise InvalidState("instance is already suspended", details={"state": "suspended"})
        await suspend(self.session, instance, reason=reason, by="instance")
        self._audit(instance, reason=reason)
        return await self._addressed(to_schema(instance))

    async def unsuspend(self, instance_id: str, reason: str) -> schemas.Instance:
        instance = await self.locked(instance_id)
        _require(instance, "unsuspend", tuple(s for s in _ALL_STATES if s not in FINAL))
        if instance.suspended_at is None:
            raise InvalidState("instance is not suspended", details={"state": instance.state})
        await unsuspend(self.session, instance, reason=reason)
        self._audit(instance, reason=reason)
        return await self._addressed(to_schema(instance))


_ACTIONS: dict[str, tuple[tuple[str, ...], str, str, bool]] = {
    # action: (allowed in, state after, desired state, refused while suspended)
    "start": (("stopped", "sleeping", "failed"), "starting", "running", True),
    "stop": (("provisioning", "starting", "running", "sleeping", "failed"), "stopping", "stopped", False),
    "restart": (("running", "failed"), "starting", "running", True),
}

_ALL_STATES = (
    "provisioning",
    "starting",
    "running",
    "stopping",
    "stopped",
    "sleeping",
    "failed",
    "destroying",
    "destroyed",
    "unknown",
)


async def _all_pass(*checks: Awaitable[None]) -> None:
    """Run ``checks`` at once; when some refuse, the first refusal in their order is raised (after
    all have ended, so none is left running or unread)."""
    for outcome in await asyncio.gather(*checks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


def _unique_ports(ports: list[schemas.Port]) -> None:
    seen = {(p.container_port, p.protocol) for p in ports}
    if len(seen) != len(ports):
        raise InvalidInput("ports must be unique per container_port and protocol", details={"ports": "duplicate"})
