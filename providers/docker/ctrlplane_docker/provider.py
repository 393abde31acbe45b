"""The Docker provider, on the ``docker`` SDK. The engine comes from ``DOCKER_HOST`` or the default
socket. The SDK blocks, so every call runs in a worker thread, never on the event loop.

What an instance is on Docker:

* **Replicas** are containers named ``cp-{instance_id}-g{generation}-r{replica}`` and labelled with
  ``ctrlplane.managed=true``, ``ctrlplane.instance``, ``ctrlplane.tenant``, ``ctrlplane.release``,
  ``ctrlplane.generation``, ``ctrlplane.replica`` (plus ``ctrlplane.purpose=replica``) on top of
  the spec's own labels, which may not use the ``ctrlplane.`` prefix. Creating a name that exists
  adopts the existing container, so a retried call never duplicates one.
* **Limits**: ``NanoCpus = cpu_millis * 1_000_000``; ``Memory = MemorySwap = memory_mb MiB`` (no swap).
* **Network**: one bridge network per tenant, ``cp-tenant-{tenant_id}``. Docker isolates bridge
  networks from each other, so tenants cannot reach one another's containers while replicas of one
  tenant can. It is created on demand and removed when the tenant's last container goes; its subnet
  is a block of ``CTRLPLANE_DOCKER_SUBNET_POOL`` (see ``subnets``), not of dockerd's default pools.
  ``collect_unused`` (the reconciler) removes this installation's networks that nothing uses.
* **Ports** are published on ``CTRLPLANE_DOCKER_HOST_ADDRESS`` (default 127.0.0.1) on a port the
  engine picks; ``status`` reports them as endpoints.
* **Restart policy** is Docker's ``no``: ctrlplane's reconciler restarts replicas itself, so that each
  restart is observed and recorded as an event. Replicas run under Docker's init (tini) so that a
  stop's SIGTERM reaches applications that never installed a handler as PID 1.
* **Stopped marker**: a labelled volume ``cp-{instance_id}-stopped`` exists while ctrlplane holds the
  instance stopped. Stopping makes processes exit non-zero (SIGTERM, or SIGKILL after the grace
  period), exactly like a crash; the marker is how ``status`` tells "stopped" from "failed" by
  observation alone, with no memory in this process.
* **Files** are mounted read-only with mode 0400 from a per-generation volume (see ``files``).
* **Confinement**: no new privileges, capabilities dropped but a documented few, a pids limit,
  ulimits, Docker's default seccomp profile, never privileged or host resources (see ``isolation``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
import docker  # type: ignore[import-untyped, unused-ignore]
import structlog
from docker import APIClient, DockerClient  # type: ignore[import-untyped, unused-ignore]
from docker.errors import APIError, DockerException  # type: ignore[import-untyped, unused-ignore]
from docker.types import IPAMConfig, IPAMPool, Mount  # type: ignore[import-untyped, unused-ignore]
from docker.utils import parse_repository_tag  # type: ignore[import-untyped, unused-ignore]

from ctrlplane.provisioning.contract import (
    LABEL_CLUSTER,
    LABEL_GENERATION,
    LABEL_INSTALLATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_RELEASE,
    LABEL_REPLICA,
    LABEL_RUN,
    LABEL_TENANT,
    ExecResult,
    InventoryItem,
    LogLine,
    Observation,
    ProviderHealth,
    ProviderSettings,
    ReplicaStatus,
    ReplicaUsage,
    Resources,
    RunSpec,
    RunStatus,
    Strategy,
    Usage,
    WorkloadSpec,
    WorkloadStatus,
)
from ctrlplane.provisioning.errors import ImageNotFound, ProviderError, WorkloadNotFound, pull_failed
from ctrlplane_docker import logs as container_logs
from ctrlplane_docker.commands import run_command
from ctrlplane_docker.errors import engine_errors, explanation, is_conflict, is_not_found, unreachable
from ctrlplane_docker.files import load_files
from ctrlplane_docker.gate import NetworkGate
from ctrlplane_docker.isolation import hardened
from ctrlplane_docker.naming import (
    LABEL_PURPOSE,
    cluster_filter,
    container_name,
    files_volume_name,
    instance_filter,
    network_name,
    object_labels,
    replica_labels,
    run_container_name,
    run_files_volume_name,
    stopped_marker_name,
    tenant_filter,
)
from ctrlplane_docker.observe import (
    inventory_ids,
    label_int,
    listed_replica_status,
    oom_settle_seconds,
    parse_time,
    replica_status,
    workload_status,
)
from ctrlplane_docker.observe import replica_usage as replica_usage_from_sample
from ctrlplane_docker.observe import usage as usage_from_samples
from ctrlplane_docker.settings import DockerSettings
from ctrlplane_docker.subnets import SubnetPool, SubnetPoolExhausted, network_subnets

DOCKER_HUB_ADDRESS = "https://index.docker.io/v1/"
"""The server address Docker Hub's credentials are filed under (what ``docker login`` uses)."""
log = structlog.get_logger("ctrlplane.docker")
T = TypeVar("T")
R = TypeVar("R")

ENGINE_TIMEOUT = 30
ADOPT_WAIT_SECONDS = 10.0
ADOPT_POLL_SECONDS = 0.05
OOM_POLL_SECONDS = 0.05
MIB = 1024 * 1024
MAX_PARALLEL = 8
LIVE_STATES = frozenset({"running", "restarting", "paused"})
WATCHED_EVENTS = ("die", "oom", "destroy", "start")
"""Container events that may change what the reconciler should do about an instance."""


@dataclass(frozen=True)
class _Container:
    """A container as the engine lists it (no inspect): enough to act on it."""

    id: str
    name: str
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> _Container:
        names = summary.get("Names") or [summary["Id"]]
        return cls(
            id=str(summary["Id"]),
            name=str(names[0]).lstrip("/"),
            state=str(summary.get("State", "")),
            labels=dict(summary.get("Labels") or {}),
        )

    @property
    def generation(self) -> int:
        return label_int(self.labels, LABEL_GENERATION) or 0

    @property
    def replica(self) -> int:
        return label_int(self.labels, LABEL_REPLICA) or 0

    @property
    def tenant_id(self) -> str | None:
        return self.labels.get(LABEL_TENANT)

    @property
    def is_replica(self) -> bool:
        return self.labels.get(LABEL_PURPOSE, "replica") == "replica" and LABEL_REPLICA in self.labels


def _each(items: Sequence[T], work: Callable[[T], R]) -> list[R]:
    """``work`` on every item, in parallel threads: stopping three replicas that ignore SIGTERM takes
    one grace period, not three. The first error is raised once all have finished."""
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), MAX_PARALLEL), thread_name_prefix="ctrlplane-docker") as pool:
        return list(pool.map(work, items))


def oom_settled(api: APIClient, attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs``, inspected again every ``OOM_POLL_SECONDS`` while whether the container was
    OOM-killed may still change (``oom_settle_seconds``, at most a second, measured on this
    machine's monotonic clock from the first read), so a replica or run the kernel killed is
    recorded as OOM-killed rather than as exit code 137."""
    left = oom_settle_seconds(attrs, datetime.now(UTC))
    deadline = time.monotonic() + left
    while left > 0:
        time.sleep(min(OOM_POLL_SECONDS, left))
        try:
            attrs = dict(api.inspect_container(attrs["Id"]))
        except APIError as exc:
            if is_not_found(exc):  # removed meanwhile: what was read stands
                return attrs
            raise
        left = min(deadline - time.monotonic(), oom_settle_seconds(attrs, datetime.now(UTC)))
    return attrs


def _network_missing(exc: APIError) -> bool:
    text = explanation(exc).lower()
    return ("network" in text and "not found" in text) or "no such network" in text


class DockerProvider:
    """ctrlplane's ``Provider`` on a Docker engine; see the module docstring for the mapping.

    Every method is idempotent and keyed by ctrlplane IDs; it observes the engine rather than
    remembering, so a new process (or a retried call) carries on where another left off. Errors are
    ``ProviderUnavailable`` when the engine cannot be reached, ``ImageNotFound`` for an image that
    is missing and may not (or could not) be pulled, ``WorkloadNotFound`` when an instance has no
    container where one is needed, and ``ProviderError`` with the engine's explanation otherwise.

    ``docker`` defaults to the ``CTRLPLANE_DOCKER_*`` variables of ``settings.environ``
    (``ProviderLoadError`` for one that cannot be used); ``base_url`` overrides ``DOCKER_HOST``;
    ``stop_timeout`` is the grace period, in seconds, between SIGTERM and SIGKILL when a replica is
    stopped, restarted or removed.
    """

    name = "docker"

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        docker: DockerSettings | None = None,
        base_url: str | None = None,
        stop_timeout: int = 10,
    ) -> None:
        docker = docker or DockerSettings.from_env(settings.variables())
        self._cluster = settings.cluster_name
        self._installation = settings.installation_id
        self._host_address = docker.host_address
        self._pids_limit = docker.pids_limit
        self._base_url = base_url
        self._stop_timeout = stop_timeout
        self._client: DockerClient | None = None
        self._client_lock = threading.Lock()
        self._engine_version: str | None = None
        """The engine's version, asked once per connection: a ping (every second in a server's
        health loop) then costs one request, not two."""
        self._network_lock = threading.Lock()
        self._network_gate = NetworkGate()
        self._subnets = SubnetPool(docker.subnet_pool, docker.subnet_size)
        self._exhausted: str | None = None

    # -- plumbing -------------------------------------------------------------------------------

    def _api(self) -> APIClient:
        with self._client_lock:
            if self._client is None:
                try:
                    if self._base_url is not None:
                        self._client = DockerClient(base_url=self._base_url, timeout=ENGINE_TIMEOUT)
                    else:
                        self._client = docker.from_env(timeout=ENGINE_TIMEOUT)
                except DockerException as exc:
                    raise unreachable(exc) from exc
            return self._client.api

    async def _run(self, action: str, work: Callable[[APIClient], T]) -> T:
        def call() -> T:
            with engine_errors(action):
                return work(self._api())

        return await anyio.to_thread.run_sync(call)

    # -- reading the engine ---------------------------------------------------------------------

    def _objects(self, api: APIClient, instance_id: str) -> list[_Container]:
        """Every container of the instance, replicas and transient helpers alike."""
        return [_Container.from_summary(s) for s in api.containers(all=True, filters=instance_filter(instance_id))]

    def _replicas(self, api: APIClient, instance_id: str) -> list[_Container]:
        replicas = [c for c in self._objects(api, instance_id) if c.is_replica]
        return sorted(replicas, key=lambda c: (c.generation, c.replica))

    def _required_replicas(self, api: APIClient, instance_id: str) -> list[_Container]:
        replicas = self._replicas(api, instance_id)
        if not replicas:
            raise WorkloadNotFound(
                f"instance {instance_id} has no containers on Docker", details={"instance_id": instance_id}
            )
        return replicas

    def _inspect(self, api: APIClient, containers: Iterable[_Container]) -> list[dict[str, Any]]:
        inspected: list[dict[str, Any]] = []
        for container in containers:
            try:
                inspected.append(dict(api.inspect_container(container.id)))
            except APIError as exc:
                if not is_not_found(exc):  # removed since it was listed
                    raise
        return inspected

    def _status(self, api: APIClient, instance_id: str, *, stopped: bool | None = None) -> WorkloadStatus:
        """The instance's status; ``stopped`` when the caller knows the stop marker's state (it just
        cleared it), else the marker is read."""
        inspected = self._inspect(api, self._replicas(api, instance_id))
        if stopped is None:
            stopped = bool(inspected) and self._is_marked_stopped(api, instance_id)
        if not stopped:  # ctrlplane's own SIGKILLs (a stop's grace period passing) are no failure
            inspected = [oom_settled(api, attrs) for attrs in inspected]
        return workload_status(
            instance_id,
            [replica_status(attrs, self._host_address) for attrs in inspected],
            stopped_by_ctrlplane=stopped,
        )

    # -- images, networks, markers --------------------------------------------------------------

    def _ensure_image(self, api: APIClient, spec: WorkloadSpec) -> None:
        """Make ``spec.image`` present, pulling it with the tenant's credentials for its registry
        (``spec.registry_auth``) when there are some."""
        image = spec.image
        if spec.pull_policy != "Always":
            try:
                untyped: Any = api  # the stubs leave inspect_image untyped
                untyped.inspect_image(image)
                return
            except APIError as exc:
                if not is_not_found(exc):
                    raise
            if spec.pull_policy == "Never":
                raise ImageNotFound(
                    f"image {image!r} is not on the Docker engine and its pull policy is Never",
                    details={"image": image, "pull_policy": spec.pull_policy},
                )
        repository, tag = parse_repository_tag(image)
        auth = spec.registry_auth
        auth_config = (
            {
                "username": auth.username,
                "password": auth.password,
                "serveraddress": DOCKER_HUB_ADDRESS if auth.registry == "docker.io" else auth.registry,
            }
            if auth is not None
            else None
        )
        try:
            for event in api.pull(repository, tag=tag or "latest", stream=True, decode=True, auth_config=auth_config):
                if isinstance(event, dict) and event.get("error"):
                    raise ProviderError(str(event["error"]))
        except (APIError, ProviderError) as exc:
            reason = explanation(exc) if isinstance(exc, APIError) else exc.message
            log.warning("image_pull_failed", image=image, instance=spec.instance_id, engine=reason)
            raise pull_failed(image, reason) from exc

    def _networks(self, api: APIClient, tenant_id: str) -> list[str]:
        """IDs of the tenant's networks, oldest first. Docker tolerates two networks of one name (two
        concurrent creates); the oldest is the one everybody uses."""
        name = network_name(tenant_id)
        found = [n for n in api.networks(names=[name]) if n.get("Name") == name]
        found.sort(key=lambda n: (str(n.get("Created", "")), str(n["Id"])))
        return [str(n["Id"]) for n in found]

    def _ensure_network(self, api: APIClient, tenant_id: str) -> str:
        if existing := self._networks(api, tenant_id):
            return existing[0]
        # The engine's duplicate check is not atomic: two concurrent creates can both succeed.
        with self._network_lock:
            if existing := self._networks(api, tenant_id):
                return existing[0]
            self._create_tenant_network(api, tenant_id)
        oldest, *extras = self._networks(api, tenant_id) or [""]
        if not oldest:
            raise ProviderError(f"network {network_name(tenant_id)} vanished as it was created")
        # Another process raced this one: converge on the oldest. A container that was put on an
        # extra meanwhile is moved back when it starts (see _reattach).
        for extra in extras:
            self._remove_network(api, extra)
        return oldest

    def _create_tenant_network(self, api: APIClient, tenant_id: str) -> None:
        """Create the tenant's network on a free block of the subnet pool; a block another
        installation took since the engine's networks were listed is skipped for the next one."""
        for subnet in self._subnets.free(network_subnets(api.networks()), start_key=tenant_id):
            try:
                api.create_network(
                    network_name(tenant_id),
                    driver="bridge",
                    check_duplicate=True,
                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))]),
                    labels=object_labels(
                        cluster=self._cluster,
                        purpose="network",
                        tenant_id=tenant_id,
                        installation=self._installation,
                    ),
                )
            except APIError as exc:
                if is_conflict(exc):
                    return
                if "overlap" not in explanation(exc).lower():
                    raise
                continue
            self._exhausted = None
            return
        self._exhausted = f"subnet pool {self._subnets} is exhausted (all {self._subnets.count} blocks are in use)"
        raise SubnetPoolExhausted(
            f"cannot create a network for tenant {tenant_id}: {self._exhausted}; "
            "an administrator must enlarge CTRLPLANE_DOCKER_SUBNET_POOL or remove tenants' instances",
            details={"provider": "docker", "subnet_pool": str(self._subnets.network), "size": self._subnets.size},
        )

    def _admit(self, api: APIClient, tenant_id: str) -> None:
        if self._networks(api, tenant_id):
            return
        if next(self._subnets.free(network_subnets(api.networks()), start_key=tenant_id), None) is None:
            self._exhausted = f"subnet pool {self._subnets} is exhausted (all {self._subnets.count} blocks are in use)"
            raise SubnetPoolExhausted(
                f"no network can be created for a new tenant on Docker: {self._exhausted}; "
                "an administrator must enlarge CTRLPLANE_DOCKER_SUBNET_POOL or remove tenants' instances",
                details={"provider": "docker", "subnet_pool": str(self._subnets.network), "size": self._subnets.size},
            )

    def _remove_network(self, api: APIClient, network_id: str) -> None:
        try:
            api.remove_network(network_id)
        except APIError as exc:
            # 403: a container has joined it (it "has active endpoints"); it stays.
            if not (is_not_found(exc) or exc.status_code in (403, 409)):
                raise

    def _remove_network_if_unused(self, api: APIClient, tenant_id: str) -> bool:
        with self._network_gate.removing(tenant_id):
            if api.containers(all=True, quiet=True, filters=tenant_filter(tenant_id)):
                return False
            for network_id in self._networks(api, tenant_id):
                self._remove_network(api, network_id)
            return True

    def _sweep_networks(self, api: APIClient) -> list[str]:
        """Remove this installation's tenant networks that no container of their tenant uses (each
        re-checked under the tenant's gate); the names of those removed."""
        networks = api.networks(filters=cluster_filter(self._cluster))
        if not networks:
            return []
        containers = api.containers(all=True, filters=cluster_filter(self._cluster))
        in_use = {_Container.from_summary(c).tenant_id for c in containers}
        removed: list[str] = []
        for network in networks:
            tenant_id = (network.get("Labels") or {}).get(LABEL_TENANT)
            if tenant_id and tenant_id not in in_use and self._remove_network_if_unused(api, tenant_id):
                removed.append(str(network.get("Name")))
        return removed

    def _mark_stopped(self, api: APIClient, instance_id: str, tenant_id: str) -> None:
        labels = object_labels(
            cluster=self._cluster,
            purpose="stopped",
            tenant_id=tenant_id,
            instance_id=instance_id,
            installation=self._installation,
        )
        api.create_volume(name=stopped_marker_name(instance_id), driver="local", labels=labels)

    def _clear_stopped(self, api: APIClient, instance_id: str) -> None:
        self._remove_volume(api, stopped_marker_name(instance_id))

    def _is_marked_stopped(self, api: APIClient, instance_id: str) -> bool:
        try:
            api.inspect_volume(stopped_marker_name(instance_id))
        except APIError as exc:
            if is_not_found(exc):
                return False
            raise
        return True

    def _remove_volume(self, api: APIClient, name: str) -> None:
        try:
            api.remove_volume(name, force=True)
        except APIError as exc:
            if not is_not_found(exc):
                raise

    # -- containers -----------------------------------------------------------------------------

    def _create_replica(
        self, api: APIClient, spec: WorkloadSpec, generation: int, replica: int, network_id: str, mounts: list[Mount]
    ) -> tuple[str, str]:
        """Create one replica, or adopt the container of its name; (id, state)."""
        try:
            return self._create_container(api, spec, generation, replica, network_id, mounts)
        except APIError as exc:
            if not (is_not_found(exc) and _network_missing(exc)):
                raise
        # The tenant's last other instance was deprovisioned (taking the network) since it was found.
        network_id = self._ensure_network(api, spec.tenant_id)
        return self._create_container(api, spec, generation, replica, network_id, mounts)

    def _create_container(
        self, api: APIClient, spec: WorkloadSpec, generation: int, replica: int, network_id: str, mounts: list[Mount]
    ) -> tuple[str, str]:
        name = container_name(spec.instance_id, generation, replica)
        memory = spec.resources.memory_mb * MIB
        host_config = api.create_host_config(
            port_bindings={f"{p.container_port}/{p.protocol}": (self._host_address, None) for p in spec.ports},
            nano_cpus=spec.resources.cpu_millis * 1_000_000,
            mem_limit=memory,
            memswap_limit=memory,
            restart_policy={"Name": "no"},
            network_mode=network_id,
            init=True,
            mounts=mounts or None,
            **hardened(pids_limit=self._pids_limit, read_only=spec.read_only_root_fs),
        )
        deadline = time.monotonic() + ADOPT_WAIT_SECONDS
        while True:
            try:
                created = api.create_container(
                    spec.image,
                    command=list(spec.command) if spec.command else None,
                    name=name,
                    labels=replica_labels(
                        spec, generation, replica, cluster=self._cluster, installation=self._installation
                    ),
                    environment=dict(spec.env),
                    ports=[(p.container_port, p.protocol) for p in spec.ports] or None,
                    host_config=host_config,
                    networking_config={"EndpointsConfig": {network_id: {}}},
                    detach=True,
                )
                return str(created["Id"]), "created"
            except APIError as exc:
                if not is_conflict(exc):
                    raise
            try:
                return self._adopt(api, name, spec.instance_id)
            except APIError as exc:
                # The engine reserves a name before the container can be inspected (a concurrent
                # create) and keeps it until a removal ends: wait, then create or adopt again.
                if not is_not_found(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(ADOPT_POLL_SECONDS)

    def _adopt(self, api: APIClient, name: str, instance_id: str) -> tuple[str, str]:
        attrs = api.inspect_container(name)
        labels = attrs["Config"].get("Labels") or {}
        if labels.get(LABEL_INSTANCE) != instance_id or labels.get(LABEL_MANAGED) != "true":
            raise ProviderError(f"container name {name} is taken by a container that is not this instance's")
        return str(attrs["Id"]), str(attrs["State"]["Status"])

    def _start_container(self, api: APIClient, container_id: str, state: str, tenant_id: str) -> None:
        if state == "paused":
            api.unpause(container_id)
            return
        with self._network_gate.using(tenant_id):
            try:
                api.start(container_id)
            except APIError as exc:
                if not _network_missing(exc):
                    raise
                self._reattach(api, container_id, tenant_id)
                api.start(container_id)

    def _restart_container(self, api: APIClient, container: _Container) -> None:
        with self._network_gate.using(container.tenant_id or ""):
            try:
                api.restart(container.id, timeout=self._stop_timeout)
            except APIError as exc:
                if not _network_missing(exc):
                    raise
                self._reattach(api, container.id, container.tenant_id or "")
                api.start(container.id)

    def _reattach(self, api: APIClient, container_id: str, tenant_id: str) -> None:
        """Move a stopped container from a tenant network that was removed under it (a deprovision
        racing this instance's creation) to the tenant's current one."""
        attrs = api.inspect_container(container_id)
        for name in (attrs.get("NetworkSettings") or {}).get("Networks") or {}:
            try:
                api.disconnect_container_from_network(container_id, name, force=True)
            except APIError as exc:
                if not is_not_found(exc):
                    raise
        api.connect_container_to_network(container_id, self._ensure_network(api, tenant_id))

    def _stop_container(self, api: APIClient, container_id: str) -> None:
        try:
            api.stop(container_id, timeout=self._stop_timeout)
        except APIError as exc:
            if not is_not_found(exc):
                raise

    def _remove_container(self, api: APIClient, container: _Container) -> None:
        """Stop gracefully (in-flight requests finish), then remove with anonymous volumes."""
        try:
            if container.state in LIVE_STATES:
                api.stop(container.id, timeout=self._stop_timeout)
            api.remove_container(container.id, v=True, force=True)
        except APIError as exc:
            # 409: the engine is already removing it.
            if not (is_not_found(exc) or is_conflict(exc)):
                raise

    def _update_limits(self, api: APIClient, container_id: str, resources: Resources) -> None:
        # The SDK's update_container has no NanoCpus, and CPU quota/period cannot be combined with
        # the NanoCpus set at creation, so the engine's update endpoint is called directly.
        raw: Any = api
        memory = resources.memory_mb * MIB
        response = raw._post_json(
            raw._url("/containers/{0}/update", container_id),
            data={"NanoCpus": resources.cpu_millis * 1_000_000, "Memory": memory, "MemorySwap": memory},
        )
        raw._raise_for_status(response)

    def _ensure_replicas(
        self,
        api: APIClient,
        spec: WorkloadSpec,
        generation: int,
        replicas: Iterable[int],
        existing: Mapping[str, _Container],
        *,
        start_new: bool = True,
        start_existing: bool = True,
    ) -> list[str]:
        """Create the named replicas of one generation that are missing, adopt those that exist, and
        start them as asked; the containers' IDs, in order."""
        wanted = list(replicas)
        missing = [r for r in wanted if container_name(spec.instance_id, generation, r) not in existing]
        with self._network_gate.using(spec.tenant_id):
            network_id = self._ensure_network(api, spec.tenant_id) if missing else ""
            mounts = load_files(api, spec, generation, self._cluster) if missing and spec.files else []

            def ensure(replica: int) -> str:
                found = existing.get(container_name(spec.instance_id, generation, replica))
                if found is None:
                    container_id, state = self._create_replica(api, spec, generation, replica, network_id, mounts)
                    start = start_new
                else:
                    container_id, state, start = found.id, found.state, start_existing
                if start and state != "running":
                    self._start_container(api, container_id, state, spec.tenant_id)
                return container_id

            return _each(wanted, ensure)

    def _require_running(self, api: APIClient, spec: WorkloadSpec, container_ids: Iterable[str]) -> None:
        for container_id in container_ids:
            replica = replica_status(api.inspect_container(container_id), self._host_address)
            if replica.state != "running":
                reason = f"exited with code {replica.exit_code}" if replica.exit_code is not None else replica.state
                raise ProviderError(
                    f"generation {spec.generation} of instance {spec.instance_id}: replica {replica.replica} "
                    f"did not stay running ({reason}); the previous generation was left in place",
                    details={"instance_id": spec.instance_id, "generation": spec.generation},
                )

    # -- the contract ---------------------------------------------------------------------------

    async def ping(self) -> ProviderHealth:
        """Whether the engine answers right now, with its version; never raises."""

        def ping_engine() -> ProviderHealth:
            try:
                api = self._api()
                api.ping()
                version = self._engine_version or str(api.version().get("Version", "unknown"))
            except Exception as exc:  # noqa: BLE001 - ping reports, it never raises
                with self._client_lock:
                    self._client = None
                # the engine that answers next may have been upgraded meanwhile
                self._engine_version = None
                return ProviderHealth(False, f"Docker engine unreachable: {exc}")
            self._engine_version = version
            if self._exhausted:
                return ProviderHealth(True, f"Docker engine {version}; {self._exhausted}")
            return ProviderHealth(True, f"Docker engine {version}")

        # abandon_on_cancel: a caller's timeout must work even while the engine hangs
        return await anyio.to_thread.run_sync(ping_engine, abandon_on_cancel=True)

    async def admit(self, tenant_id: str) -> None:
        """Refuse a new instance up front (``SubnetPoolExhausted``, a 503) when its tenant has no
        network yet and the subnet pool has no free block for one."""
        await self._run(f"check room for tenant {tenant_id}", lambda api: self._admit(api, tenant_id))

    async def collect_unused(self) -> list[str]:
        """Remove this installation's tenant networks (``ctrlplane.cluster`` label) that no container
        uses any longer; another installation's are never touched. The names of those removed."""
        return await self._run("remove unused tenant networks", self._sweep_networks)

    async def provision(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Create (or adopt) the tenant's network and replicas ``0..spec.replicas-1`` of
        ``spec.generation``, and start them. Other generations are left alone, so provisioning a new
        generation beside the running one is how a caller builds a gated blue/green or canary set.
        An adopted container keeps the configuration it was created with. Clears a stop."""

        def provision(api: APIClient) -> WorkloadStatus:
            self._ensure_image(api, spec)
            existing = {c.name: c for c in self._replicas(api, spec.instance_id)}
            self._ensure_replicas(api, spec, spec.generation, range(spec.replicas), existing)
            self._clear_stopped(api, spec.instance_id)
            return self._status(api, spec.instance_id, stopped=False)

        return await self._run(f"provision instance {spec.instance_id}", provision)

    async def deprovision(self, instance_id: str) -> None:
        """Remove the instance's containers (graceful stop first) and volumes, then its tenant's
        network if no ctrlplane container of that tenant is left. No-op when nothing is there."""

        def deprovision(api: APIClient) -> None:
            containers = self._objects(api, instance_id)
            volumes = api.volumes(filters=instance_filter(instance_id)).get("Volumes") or []
            tenants = {c.tenant_id for c in containers if c.tenant_id}
            tenants |= {t for v in volumes if (t := (v.get("Labels") or {}).get(LABEL_TENANT))}
            _each(containers, lambda c: self._remove_container(api, c))
            for volume in volumes:
                self._remove_volume(api, str(volume["Name"]))
            if tenants:
                for tenant_id in sorted(tenants):
                    self._remove_network_if_unused(api, tenant_id)
            else:
                # A retry after a crash between removing the containers and the network: the
                # tenant is no longer known, so every empty tenant network is collected.
                self._sweep_networks(api)

        await self._run(f"deprovision instance {instance_id}", deprovision)

    async def start(self, instance_id: str) -> WorkloadStatus:
        """Start every replica that is not running (all generations) and clear a stop."""

        def start(api: APIClient) -> WorkloadStatus:
            replicas = self._required_replicas(api, instance_id)
            _each(
                [c for c in replicas if c.state != "running"],
                lambda c: self._start_container(api, c.id, c.state, c.tenant_id or ""),
            )
            self._clear_stopped(api, instance_id)
            return self._status(api, instance_id, stopped=False)

        return await self._run(f"start instance {instance_id}", start)

    async def stop(self, instance_id: str) -> WorkloadStatus:
        """Mark the instance stopped, then stop its replicas (SIGTERM, SIGKILL after
        ``stop_timeout``), keeping them for a later ``start``. Status then says ``stopped``."""

        def stop(api: APIClient) -> WorkloadStatus:
            replicas = self._required_replicas(api, instance_id)
            self._mark_stopped(api, instance_id, replicas[0].tenant_id or "")
            _each([c for c in replicas if c.state in LIVE_STATES], lambda c: self._stop_container(api, c.id))
            return self._status(api, instance_id)

        return await self._run(f"stop instance {instance_id}", stop)

    async def kill(self, instance_id: str) -> None:
        """SIGKILL every running replica at once (a hard terminate: no grace period)."""

        def kill(api: APIClient) -> None:
            def one(container: _Container) -> None:
                try:
                    api.kill(container.id)
                except APIError as exc:
                    # 404: gone already; 409: it stopped between the listing and the kill
                    if not (is_not_found(exc) or is_conflict(exc)):
                        raise

            _each([c for c in self._objects(api, instance_id) if c.state in LIVE_STATES], one)

        await self._run(f"kill instance {instance_id}", kill)

    async def restart(self, instance_id: str, replicas: tuple[int, ...] | None = None) -> WorkloadStatus:
        """Restart all replicas, or those whose index is named (in every generation that has it);
        a replica that was not running is started. Restarting them all clears a stop."""

        def restart(api: APIClient) -> WorkloadStatus:
            found = self._required_replicas(api, instance_id)
            chosen = found if replicas is None else [c for c in found if c.replica in set(replicas)]
            if not chosen:
                raise WorkloadNotFound(
                    f"instance {instance_id} has no replica {', '.join(map(str, replicas or ()))}",
                    details={"instance_id": instance_id},
                )
            _each(chosen, lambda c: self._restart_container(api, c))
            if len(chosen) == len(found):
                self._clear_stopped(api, instance_id)
                return self._status(api, instance_id, stopped=False)
            return self._status(api, instance_id)

        return await self._run(f"restart instance {instance_id}", restart)

    async def scale(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Apply ``spec.resources`` in place to every container of the instance (running or not, so a
        later start keeps them), then match ``spec.replicas`` in the current (highest) generation:
        the highest replica indexes are removed, missing ones are created from ``spec`` (which should
        describe that generation) and started unless the instance is stopped."""

        def scale(api: APIClient) -> WorkloadStatus:
            found = self._required_replicas(api, spec.instance_id)
            generation = max(c.generation for c in found)
            surplus = [c for c in found if c.generation == generation and c.replica >= spec.replicas]
            _each(surplus, lambda c: self._remove_container(api, c))
            kept = [c for c in found if c not in surplus]
            _each(kept, lambda c: self._update_limits(api, c.id, spec.resources))
            current = {c.name: c for c in kept if c.generation == generation}
            if len(current) < spec.replicas:
                self._ensure_image(api, spec)
            running = not self._is_marked_stopped(api, spec.instance_id)
            self._ensure_replicas(
                api, spec, generation, range(spec.replicas), current, start_new=running, start_existing=False
            )
            return self._status(api, spec.instance_id)

        return await self._run(f"scale instance {spec.instance_id}", scale)

    async def deploy(self, spec: WorkloadSpec, strategy: Strategy) -> WorkloadStatus:
        """Replace every other generation with ``spec.generation``; health gating is the caller's.

        The image is ensured first, so a missing image fails before anything is touched. Then:

        * ``recreate``: stop and remove all other generations, then create and start the new one
          (downtime between the two).
        * ``rolling``: for each replica index in turn, create and start the new replica, check that
          the engine reports it running, then stop and remove the old replicas of that index; old
          replicas beyond ``spec.replicas`` go last.
        * ``blue_green`` and ``canary``: create and start the whole new set beside the old one,
          check that the engine reports it all running, then stop and remove the old set. (Traffic
          splitting for canary is the router's business, not the runtime's.)

        If a new replica is not running right after its start, ``ProviderError`` is raised and the
        old replicas not yet replaced stay. For a gated deploy, a caller instead ``provision``s the
        new generation beside the old one, runs its gates against ``status``, and finishes with
        ``remove_generation(old)`` or aborts with ``remove_generation(new)``. Retrying a deploy
        adopts whatever the interrupted one created. Clears a stop; returns the new status.
        """

        def deploy(api: APIClient) -> WorkloadStatus:
            self._ensure_image(api, spec)
            found = self._replicas(api, spec.instance_id)
            old = [c for c in found if c.generation != spec.generation]
            new = {c.name: c for c in found if c.generation == spec.generation}
            surplus = [c for c in new.values() if c.replica >= spec.replicas]
            every = range(spec.replicas)

            def remove(containers: Sequence[_Container]) -> None:
                _each(containers, lambda c: self._remove_container(api, c))

            if strategy == "recreate":
                remove([*old, *surplus])
                self._ensure_replicas(api, spec, spec.generation, every, new)
            elif strategy == "rolling":
                for replica in every:
                    started = self._ensure_replicas(api, spec, spec.generation, [replica], new)
                    self._require_running(api, spec, started)
                    remove([c for c in old if c.replica == replica])
                remove([*(c for c in old if c.replica >= spec.replicas), *surplus])
            else:
                started = self._ensure_replicas(api, spec, spec.generation, every, new)
                self._require_running(api, spec, started)
                remove([*old, *surplus])
            for generation in sorted({c.generation for c in old}):
                self._remove_volume(api, files_volume_name(spec.instance_id, generation))
            self._clear_stopped(api, spec.instance_id)
            return self._status(api, spec.instance_id, stopped=False)

        return await self._run(f"deploy generation {spec.generation} of instance {spec.instance_id}", deploy)

    async def remove_generation(
        self, instance_id: str, generation: int, replicas: tuple[int, ...] | None = None
    ) -> None:
        """Stop and remove the replicas of one generation (only those named, if any are) and, when
        the whole generation goes, its files volume; no-op if none."""

        def remove_generation(api: APIClient) -> None:
            doomed = [
                c
                for c in self._objects(api, instance_id)
                if c.generation == generation and (replicas is None or (c.is_replica and c.replica in replicas))
            ]
            _each(doomed, lambda c: self._remove_container(api, c))
            if replicas is None:
                self._remove_volume(api, files_volume_name(instance_id, generation))

        await self._run(f"remove generation {generation} of instance {instance_id}", remove_generation)

    async def status(self, instance_id: str) -> WorkloadStatus:
        """Observe the instance now: every replica of every generation (a deploy in progress shows
        both sets), with its state, exit code, OOM kill, timestamps and endpoints."""
        return await self._run(f"read the status of instance {instance_id}", lambda api: self._status(api, instance_id))

    def logs(
        self, instance_id: str, *, tail: int | None = None, since: datetime | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        """The replicas' lines (stdout and stderr, with the engine's timestamps). Without ``follow``:
        all replicas merged oldest first, the last ``tail`` of them. With ``follow``: each replica's
        last ``tail`` lines, then new ones as they come (in arrival order across replicas), until
        every replica's stream ends or the iterator is closed. Raises ``WorkloadNotFound`` on first
        iteration when the instance has no containers."""
        return self._logs(instance_id, tail=tail, since=since, follow=follow)

    async def _logs(
        self, instance_id: str, *, tail: int | None, since: datetime | None, follow: bool
    ) -> AsyncIterator[LogLine]:
        def sources(api: APIClient) -> list[container_logs.Source]:
            found = self._required_replicas(api, instance_id)
            return [container_logs.Source(c.id, c.name, c.replica) for c in found]

        found = await self._run(f"read the logs of instance {instance_id}", sources)
        async with aclosing(
            self._lines(found, f"the logs of instance {instance_id}", tail=tail, since=since, follow=follow)
        ) as lines:
            async for line in lines:
                yield line

    async def _lines(
        self,
        found: list[container_logs.Source],
        what: str,
        *,
        tail: int | None,
        since: datetime | None,
        follow: bool,
    ) -> AsyncGenerator[LogLine, None]:
        """The lines of ``found``'s containers: what they wrote so far, or followed as they write."""
        if not follow:
            lines = await self._run(
                f"read {what}", lambda api: container_logs.read_logs(api, found, tail=tail, since=since)
            )
            for line in lines:
                yield line
            return
        opened = await self._run(
            f"follow {what}", lambda api: container_logs.open_streams(api, found, tail=tail, since=since)
        )
        async with aclosing(container_logs.follow(opened, since=since)) as followed:
            async for line in followed:
                yield line

    async def usage(self, instance_id: str) -> Usage:
        """CPU (percent of one CPU, summed), memory in use and limits, network bytes: one engine
        stats sample per running replica, taken in parallel. ``restarts`` sums the engine's restart
        counts, which with restart policy ``no`` stays 0: ctrlplane counts its own restarts."""
        inspected = await self._run(
            f"read the usage of instance {instance_id}",
            lambda api: self._inspect(api, self._required_replicas(api, instance_id)),
        )
        running = [str(attrs["Id"]) for attrs in inspected if attrs["State"].get("Status") == "running"]
        samples = await self._stats(instance_id, running)
        restarts = sum(int(attrs.get("RestartCount") or 0) for attrs in inspected)
        return usage_from_samples(list(samples.values()), restarts=restarts)

    async def replica_usage(self, instance_id: str) -> list[ReplicaUsage]:
        """One engine stats sample per running replica (taken in parallel), next to its status;
        replicas that do not run have no usage. ``restarts`` is the engine's restart count."""
        inspected = await self._run(
            f"read the usage of instance {instance_id}",
            lambda api: self._inspect(api, self._required_replicas(api, instance_id)),
        )
        running = [str(attrs["Id"]) for attrs in inspected if attrs["State"].get("Status") == "running"]
        samples = await self._stats(instance_id, running)
        found = [
            replica_usage_from_sample(
                replica_status(attrs, self._host_address),
                samples.get(str(attrs["Id"])),
                restarts=int(attrs.get("RestartCount") or 0),
            )
            for attrs in inspected
        ]
        return sorted(found, key=lambda r: (r.generation, r.replica))

    async def _stats(self, instance_id: str, container_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """One engine stats sample per container, taken in parallel. A container that stops or goes
        while it is sampled (a deploy retiring it) has none: the engine answers 404, 409 or an
        empty body. Any other failure is raised as itself (the first one), not as a group."""
        samples: dict[str, dict[str, Any]] = {}
        failures: list[Exception] = []

        def read(api: APIClient, container_id: str) -> dict[str, Any] | None:
            try:
                return dict(api.stats(container_id, stream=False))
            except APIError as exc:
                if is_not_found(exc) or is_conflict(exc):
                    return None
                raise
            except ValueError:  # the body of a container stopping under the request is empty
                return None

        async def sample(container_id: str) -> None:
            try:
                stats = await self._run(
                    f"read the usage of instance {instance_id}", lambda api: read(api, container_id)
                )
            except Exception as exc:  # noqa: BLE001 - re-raised below, once the others are done
                failures.append(exc)
                return
            if stats is not None:
                samples[container_id] = stats

        async with anyio.create_task_group() as group:
            for container_id in container_ids:
                group.start_soon(sample, container_id)
        if failures:
            raise failures[0]
        return samples

    async def exec(
        self,
        instance_id: str,
        command: list[str],
        *,
        timeout: float = 10.0,
        generation: int | None = None,
        replica: int | None = None,
    ) -> ExecResult:
        """Run ``command`` (argv, no shell) in the first running replica of the newest generation,
        or the one ``generation`` and ``replica`` name, never on the control-plane host. Past
        ``timeout`` seconds: ``ProviderError`` (the command itself may keep running in the
        container: the engine cannot kill an exec). No running replica matches: ``WorkloadNotFound``."""
        if not command:
            raise ProviderError("exec needs a command")

        def run(api: APIClient) -> ExecResult:
            running = [
                c
                for c in self._required_replicas(api, instance_id)
                if c.state == "running"
                and (generation is None or c.generation == generation)
                and (replica is None or c.replica == replica)
            ]
            if not running:
                raise WorkloadNotFound(
                    f"instance {instance_id} has no running replica to run a command in"
                    + (
                        f" (generation {generation}, replica {replica})"
                        if generation is not None or replica is not None
                        else ""
                    ),
                    details={"instance_id": instance_id, "generation": generation, "replica": replica},
                )
            target = min(running, key=lambda c: (-c.generation, c.replica))
            return run_command(api, target.id, list(command), timeout=timeout)

        return await self._run(f"run a command in instance {instance_id}", run)

    # -- one-shot runs (RunProvider) ------------------------------------------------------------

    def _run_labels(self, spec: RunSpec, purpose: str) -> dict[str, str]:
        workload = spec.workload
        labels = {key: value for key, value in workload.labels.items() if not key.startswith("ctrlplane.")}
        labels.update(
            object_labels(
                cluster=self._cluster,
                purpose=purpose,
                tenant_id=workload.tenant_id,
                instance_id=workload.instance_id,
                installation=self._installation,
            )
        )
        labels[LABEL_RUN] = spec.run_id
        labels[LABEL_RELEASE] = workload.release_id or ""
        return labels

    def _run_status(self, api: APIClient, instance_id: str, run_id: str) -> RunStatus:
        try:
            attrs = oom_settled(api, dict(api.inspect_container(run_container_name(instance_id, run_id))))
        except APIError as exc:
            if is_not_found(exc):
                return RunStatus(run_id=run_id, state="missing")
            raise
        state: Mapping[str, Any] = attrs.get("State") or {}
        status = str(state.get("Status", "dead"))
        exited = status in ("exited", "dead")
        return RunStatus(
            run_id=run_id,
            state="exited" if exited else "created" if status == "created" else "running",
            exit_code=int(state.get("ExitCode") or 0) if exited else None,
            oom_killed=bool(state.get("OOMKilled", False)),
            started_at=parse_time(state.get("StartedAt")),
            finished_at=parse_time(state.get("FinishedAt")) if exited else None,
        )

    async def start_run(self, spec: RunSpec) -> RunStatus:
        """Create the container ``cp-{instance_id}-{run_id}`` from the release's image, env, files (in
        a volume of the run's own) and limits, on the tenant's network with no published port, under
        Docker's init (so a cancel's SIGTERM reaches the command), and start it. An existing one is
        adopted; one that already ran is not started again."""
        workload = spec.workload
        name = run_container_name(workload.instance_id, spec.run_id)
        if not spec.command:
            raise ProviderError("a run needs a command")

        def start(api: APIClient) -> RunStatus:
            found = self._run_status(api, workload.instance_id, spec.run_id)
            if found.state == "missing":
                self._ensure_image(api, workload)
                with self._network_gate.using(workload.tenant_id):
                    network_id = self._ensure_network(api, workload.tenant_id)
                    volume = run_files_volume_name(workload.instance_id, spec.run_id)
                    mounts = load_files(
                        api,
                        workload,
                        workload.generation,
                        self._cluster,
                        own=(volume, f"{volume}-loader", self._run_labels(spec, "run-files")),
                    )
                    memory = workload.resources.memory_mb * MIB
                    host_config = api.create_host_config(
                        nano_cpus=workload.resources.cpu_millis * 1_000_000,
                        mem_limit=memory,
                        memswap_limit=memory,
                        restart_policy={"Name": "no"},
                        network_mode=network_id,
                        init=True,
                        mounts=mounts or None,
                        **hardened(pids_limit=self._pids_limit, read_only=workload.read_only_root_fs),
                    )
                    try:
                        created = api.create_container(
                            workload.image,
                            command=list(spec.command),
                            name=name,
                            labels=self._run_labels(spec, "run"),
                            environment=dict(workload.env),
                            host_config=host_config,
                            networking_config={"EndpointsConfig": {network_id: {}}},
                            detach=True,
                        )
                        container_id, state = str(created["Id"]), "created"
                    except APIError as exc:
                        if not is_conflict(exc):
                            raise
                        container_id, state = self._adopt(api, name, workload.instance_id)
                    if state == "created":
                        self._start_container(api, container_id, state, workload.tenant_id)
            elif found.state == "created":
                with self._network_gate.using(workload.tenant_id):
                    self._start_container(api, name, "created", workload.tenant_id)
            return self._run_status(api, workload.instance_id, spec.run_id)

        return await self._run(f"start run {spec.run_id} of instance {workload.instance_id}", start)

    async def run_status(self, instance_id: str, run_id: str) -> RunStatus:
        """The run's container now (``missing`` when there is none)."""
        return await self._run(f"read run {run_id}", lambda api: self._run_status(api, instance_id, run_id))

    def run_logs(
        self, instance_id: str, run_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        """The run container's lines (stdout and stderr); with ``follow``, until it exits."""
        return self._run_logs(instance_id, run_id, tail=tail, follow=follow)

    async def _run_logs(
        self, instance_id: str, run_id: str, *, tail: int | None, follow: bool
    ) -> AsyncIterator[LogLine]:
        name = run_container_name(instance_id, run_id)

        def sources(api: APIClient) -> list[container_logs.Source]:
            return [
                container_logs.Source(str(s["Id"]), name, 0)
                for s in api.containers(all=True, filters={"name": [f"^/{name}$"], **instance_filter(instance_id)})
            ]

        found = await self._run(f"read the output of run {run_id}", sources)
        if not found:
            return
        async with aclosing(
            self._lines(found, f"the output of run {run_id}", tail=tail, since=None, follow=follow)
        ) as lines:
            async for line in lines:
                yield line

    async def remove_run(self, instance_id: str, run_id: str) -> None:
        """Kill (no grace period: a cancel or a timeout ends the command now) and remove the run's
        container and its files volume; no-op when gone."""

        def remove(api: APIClient) -> None:
            try:
                api.remove_container(run_container_name(instance_id, run_id), v=True, force=True)
            except APIError as exc:
                if not (is_not_found(exc) or is_conflict(exc)):
                    raise
            self._remove_volume(api, run_files_volume_name(instance_id, run_id))

        await self._run(f"remove run {run_id}", remove)

    def _inventory(
        self, api: APIClient
    ) -> tuple[list[InventoryItem], list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """This cluster's objects as items, with the container and volume summaries they came from."""
        containers = list(api.containers(all=True, filters=cluster_filter(self._cluster)))
        volumes = list(api.volumes(filters=cluster_filter(self._cluster)).get("Volumes") or [])
        networks = list(api.networks(filters=cluster_filter(self._cluster)))
        items: list[InventoryItem] = []
        for summary in containers:
            container = _Container.from_summary(summary)
            instance_id, tenant_id, generation, replica = inventory_ids(container.labels)
            items.append(
                InventoryItem(
                    kind="container",
                    name=container.name,
                    instance_id=instance_id,
                    tenant_id=tenant_id,
                    generation=generation,
                    replica=replica,
                    state=container.state,
                )
            )
        for kind, found in [*(("network", n) for n in networks), *(("volume", v) for v in volumes)]:
            instance_id, tenant_id, generation, replica = inventory_ids(found.get("Labels") or {})
            items.append(
                InventoryItem(
                    kind=kind,
                    name=str(found["Name"]),
                    instance_id=instance_id,
                    tenant_id=tenant_id,
                    generation=generation,
                    replica=replica,
                )
            )
        return sorted(items, key=lambda item: (item.kind, item.name)), containers, volumes

    async def inventory(self) -> list[InventoryItem]:
        """Every container, network and volume of this cluster (``ctrlplane.managed=true`` and
        ``ctrlplane.cluster=CTRLPLANE_CLUSTER_NAME``; kinds
        ``container``, ``network``, ``volume``), sorted by kind and name."""
        return await self._run("list ctrlplane's objects", lambda api: self._inventory(api)[0])

    async def other_installations(self) -> list[str]:
        """The ``ctrlplane.installation`` labels, other than this installation's, on containers and
        networks of this cluster name: another installation uses the same engine and name."""
        if not self._installation:
            return []

        def find(api: APIClient) -> list[str]:
            found = [c.get("Labels") or {} for c in api.containers(all=True, filters=cluster_filter(self._cluster))]
            found += [n.get("Labels") or {} for n in api.networks(filters=cluster_filter(self._cluster))]
            others = {labels.get(LABEL_INSTALLATION, "") for labels in found} - {"", self._installation}
            return sorted(others)

        try:
            return await self._run("list other installations' objects", find)
        except ProviderError:
            return []  # no engine: nothing shares it now; the provider's health says the rest

    async def observe(self) -> Observation:
        """``inventory`` and every instance's status from the same three listings (containers,
        volumes, networks of this cluster), with no inspect: the container list has no OOM flag,
        error text or timestamps, so the statuses are not ``exact`` (a failed replica's message
        may lack its cause until ``status`` reads it)."""

        def observe(api: APIClient) -> Observation:
            items, containers, volumes = self._inventory(api)
            stopped = {
                labels.get(LABEL_INSTANCE)
                for volume in volumes
                if (labels := volume.get("Labels") or {}).get(LABEL_PURPOSE) == "stopped"
            }
            replicas: dict[str, list[ReplicaStatus]] = {}
            for summary in containers:
                container = _Container.from_summary(summary)
                instance_id = container.labels.get(LABEL_INSTANCE)
                if instance_id and container.is_replica:
                    replicas.setdefault(instance_id, []).append(listed_replica_status(summary, self._host_address))
            workloads = {
                instance_id: workload_status(instance_id, found, stopped_by_ctrlplane=instance_id in stopped)
                for instance_id, found in replicas.items()
            }
            return Observation(items=tuple(items), workloads=workloads, exact=False)

        return await self._run("list ctrlplane's objects", observe)

    def changes(self) -> AsyncGenerator[str, None]:
        """IDs of this cluster's instances as the engine's event stream reports their containers
        dying, being OOM-killed, started or removed; until closed."""
        return self._changes()

    async def _changes(self) -> AsyncGenerator[str, None]:
        filters = {
            "type": ["container"],
            "event": list(WATCHED_EVENTS),
            "label": [f"{LABEL_MANAGED}=true", f"{LABEL_CLUSTER}={self._cluster}"],
        }
        stream = await self._run("watch the engine's events", lambda api: api.events(decode=True, filters=filters))

        def next_event() -> Mapping[str, Any] | None:
            with engine_errors("watch the engine's events"):
                return cast("Mapping[str, Any] | None", next(stream, None))

        try:
            while True:
                event = await anyio.to_thread.run_sync(next_event, abandon_on_cancel=True)
                if event is None:
                    return
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                if instance_id := attributes.get(LABEL_INSTANCE):
                    yield str(instance_id)
        finally:
            stream.close()

    async def close(self) -> None:
        """Close the engine client (its connection pool); a later call opens a new one."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await anyio.to_thread.run_sync(client.close)
