"""The provider contract: what ctrlplane asks of a runtime (Docker, Kubernetes, ...).

Providers are plugins registered under the ``ctrlplane.providers`` entry-point group; ctrlplane
never imports them, and they import nothing of ctrlplane but ``ctrlplane.provisioning`` (this
contract, ``errors`` and ``registry.ProviderFactory``). A provider is built by
``factory(ProviderSettings)``: the few values of the core's configuration every provider needs. Its
own variables (``CTRLPLANE_DOCKER_*``, ``CTRLPLANE_K8S_*``) it reads itself, in its factory, from
``ProviderSettings.environ``, into a settings Struct of its own; a value it cannot use raises
``errors.ProviderLoadError`` naming the variable. A provider must honour these rules:

* **Idempotent and keyed by ctrlplane IDs.** Everything a provider creates carries the labels
  ``ctrlplane.managed=true``, ``ctrlplane.cluster`` (``CTRLPLANE_CLUSTER_NAME``), ``ctrlplane.instance``,
  ``ctrlplane.tenant``, ``ctrlplane.release``, ``ctrlplane.generation`` and ``ctrlplane.replica``, and
  has a deterministic name derived from them.
* **One installation's objects only.** ``inventory`` lists only objects of this provider's cluster,
  so two installations sharing one engine never reap each other's workloads.
  A call retried or resumed after a crash adopts what already exists instead of duplicating it.
* **Neutral types in and out.** Inputs and outputs are the frozen Structs below; SDK exceptions are
  translated into ``ctrlplane.provisioning.errors`` at the provider boundary.
* **Never block the event loop.** Blocking SDKs run in worker threads.
* **Status is observed, not remembered.** ``status`` and ``inventory`` read the runtime.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

import msgspec

Protocol_ = Literal["tcp", "udp"]
PullPolicy = Literal["IfNotPresent", "Always", "Never"]
RestartPolicy = Literal["always", "on-failure", "never"]
Strategy = Literal["rolling", "blue_green", "canary", "recreate"]
ReplicaState = Literal["created", "running", "restarting", "exited", "paused", "dead", "removing"]
WorkloadState = Literal["running", "partial", "stopped", "failed", "missing", "unknown"]

LABEL_MANAGED = "ctrlplane.managed"
LABEL_CLUSTER = "ctrlplane.cluster"
LABEL_INSTANCE = "ctrlplane.instance"
LABEL_TENANT = "ctrlplane.tenant"
LABEL_RELEASE = "ctrlplane.release"
LABEL_GENERATION = "ctrlplane.generation"
LABEL_REPLICA = "ctrlplane.replica"
LABEL_RUN = "ctrlplane.run"
LABEL_INSTALLATION = "ctrlplane.installation"
"""The installation (``ProviderSettings.installation_id``) that created an object: two installations
with one cluster name on one engine show up as objects of that cluster with another installation's
ID."""
RunState = Literal["created", "running", "exited", "missing"]


class ProviderSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the core hands a provider's factory, built from its ``Settings`` at startup.

    * ``cluster_name``: ``CTRLPLANE_CLUSTER_NAME``, the ``ctrlplane.cluster`` label of everything the
      provider creates and the only objects its ``inventory`` lists.
    * ``installation_id``: this installation's ID (``ctrlplane.installation``; empty: none known),
      so two installations using one cluster name on one engine can tell each other apart.
    * ``environ``: where the provider reads its own ``CTRLPLANE_<PROVIDER>_*`` variables; None: the
      process environment. The node agent passes only the variables it sets itself.
    """

    cluster_name: str = "ctrlplane"
    installation_id: str = ""
    environ: Mapping[str, str] | None = None

    def variables(self) -> Mapping[str, str]:
        """``environ``, or the process environment when it is None."""
        return os.environ if self.environ is None else self.environ


class ProviderHealth(msgspec.Struct, frozen=True):
    available: bool
    message: str


class Resources(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cpu_millis: int
    memory_mb: int


class PortSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    container_port: int
    protocol: Protocol_ = "tcp"


class SecretFile(msgspec.Struct, frozen=True):
    """A file to mount read-only (mode 0400) inside every replica; its content is plaintext here only."""

    path: str
    content: bytes

    def __repr__(self) -> str:
        return f"SecretFile(path={self.path!r}, content=<{len(self.content)} bytes>)"


class RegistryAuth(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's credentials for the registry its image is pulled from (``registry`` as the image
    names it: ``ghcr.io``, ``localhost:5000``; ``docker.io`` for Docker Hub); plaintext here only."""

    registry: str
    username: str
    password: str

    def __repr__(self) -> str:
        return f"RegistryAuth(registry={self.registry!r}, username={self.username!r}, password=<hidden>)"


class TenantQuota(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's limits, for runtimes that enforce them per tenant (Kubernetes' ResourceQuota)."""

    max_instances: int
    max_cpu_millis: int
    max_memory_mb: int


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    """A health check the runtime runs itself: ``http`` (GET ``path`` on ``port``), ``tcp`` (connect to
    ``port``) or ``command`` (exit code 0). ``use`` says whether it gates traffic (readiness), restarts
    the replica (liveness) or both."""

    kind: Literal["http", "tcp", "command"]
    port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    use: Literal["readiness", "liveness", "both"] = "both"
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 2
    failure_threshold: int = 3


class HttpRoute(msgspec.Struct, frozen=True, kw_only=True):
    """A host (and path prefix) routed to one of the instance's ports; ``tls`` asks for HTTPS."""

    host: str
    path: str = "/"
    container_port: int | None = None
    tls: bool = True


class WorkloadSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a provider needs to run one instance.

    ``generation`` grows with every deploy; containers of one generation are one "set" (blue/green
    and canary run two sets side by side). ``release_id`` is informational (a label).
    ``tenant_quota``, ``probes`` and ``routes`` are optional inputs for runtimes that enforce or
    serve them themselves (Kubernetes: ResourceQuota, probes, Ingress); others ignore them.
    """

    instance_id: str
    tenant_id: str
    name: str
    image: str
    resources: Resources
    replicas: int = 1
    ports: tuple[PortSpec, ...] = ()
    env: dict[str, str] = msgspec.field(default_factory=dict)
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    files: tuple[SecretFile, ...] = ()
    command: tuple[str, ...] | None = None
    pull_policy: PullPolicy = "IfNotPresent"
    release_id: str | None = None
    generation: int = 1
    tenant_quota: TenantQuota | None = None
    probes: tuple[Probe, ...] = ()
    routes: tuple[HttpRoute, ...] = ()
    registry_auth: RegistryAuth | None = None
    """Credentials for pulling ``image`` from its registry (Docker: the pull's auth config;
    Kubernetes: a ``kubernetes.io/dockerconfigjson`` Secret named in ``imagePullSecrets``)."""
    read_only_root_fs: bool = False
    """Mount the container's root filesystem read-only, with a writable tmpfs at ``/tmp``."""


class Endpoint(msgspec.Struct, frozen=True):
    container_port: int
    protocol: Protocol_
    host: str
    host_port: int
    url: str
    replica: int = 0


class ReplicaStatus(msgspec.Struct, frozen=True, kw_only=True):
    replica: int
    generation: int
    name: str
    state: ReplicaState
    exit_code: int | None = None
    oom_killed: bool = False
    error: str | None = None
    restart_count: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    endpoints: tuple[Endpoint, ...] = ()


class WorkloadStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What runs for one instance. ``state``: all wanted replicas running → running; some → partial;
    containers exist but none run → stopped (or failed when one exited non-zero / OOM); none → missing;
    unknown when the runtime cannot tell now (a node that missed its heartbeats): ``replicas`` are
    then the last ones seen, and nothing is repaired or restarted on the strength of it."""

    instance_id: str
    state: WorkloadState
    message: str = ""
    replicas: tuple[ReplicaStatus, ...] = ()

    @property
    def endpoints(self) -> list[Endpoint]:
        return [endpoint for replica in self.replicas for endpoint in replica.endpoints]


class InventoryItem(msgspec.Struct, frozen=True, kw_only=True):
    """One object the provider runs for ctrlplane, found by label."""

    kind: str
    name: str
    instance_id: str | None
    tenant_id: str | None
    generation: int | None = None
    replica: int | None = None
    state: str | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    cpu_percent: float
    memory_used_bytes: int
    memory_limit_bytes: int
    network_rx_bytes: int
    network_tx_bytes: int
    restarts: int


def total_usage(samples: Iterable[Usage]) -> Usage:
    """The instance's usage as the sum of its replicas' (what runs of it: no sample, all zero)."""
    found = list(samples)
    return Usage(
        cpu_percent=round(sum(u.cpu_percent for u in found), 3),
        memory_used_bytes=sum(u.memory_used_bytes for u in found),
        memory_limit_bytes=sum(u.memory_limit_bytes for u in found),
        network_rx_bytes=sum(u.network_rx_bytes for u in found),
        network_tx_bytes=sum(u.network_tx_bytes for u in found),
        restarts=sum(u.restarts for u in found),
    )


class ReplicaUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One replica's usage now; ``usage`` is None when the replica does not run."""

    replica: int
    generation: int
    name: str
    state: ReplicaState
    usage: Usage | None


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    timestamp: datetime
    replica: int
    stream: Literal["stdout", "stderr"]
    message: str


class ExecResult(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int
    output: str


@runtime_checkable
class Provider(Protocol):
    """A runtime for instances. Every call is idempotent and keyed by ctrlplane IDs.

    Errors: ``ProviderUnavailable`` when the runtime cannot be reached, ``ImageNotFound`` for an
    image that is not there (and may not be pulled), ``WorkloadNotFound`` when an instance has no
    objects where some are needed, ``ProviderError`` for anything else the runtime refused.
    """

    name: str

    async def ping(self) -> ProviderHealth:
        """Whether the runtime answers right now; never raises."""
        ...

    async def provision(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Create (or adopt) the tenant's network and the instance's replicas, and start them."""
        ...

    async def deprovision(self, instance_id: str) -> None:
        """Remove every object of the instance; a tenant network left empty goes too. No-op if gone."""
        ...

    async def start(self, instance_id: str) -> WorkloadStatus:
        """Start the instance's stopped replicas."""
        ...

    async def stop(self, instance_id: str) -> WorkloadStatus:
        """Stop the instance's replicas, keeping them for a later start."""
        ...

    async def restart(self, instance_id: str, replicas: tuple[int, ...] | None = None) -> WorkloadStatus:
        """Restart all replicas, or only those named."""
        ...

    async def scale(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Apply ``spec.resources`` to running replicas in place and add or remove replicas to match
        ``spec.replicas``."""
        ...

    async def deploy(self, spec: WorkloadSpec, strategy: Strategy) -> WorkloadStatus:
        """Replace the running generation with ``spec.generation`` under ``strategy``. Health gating
        is the caller's: this runs the mechanics (``recreate``: stop old, start new; others: start
        the new set, then remove the old one)."""
        ...

    async def remove_generation(
        self, instance_id: str, generation: int, replicas: tuple[int, ...] | None = None
    ) -> None:
        """Remove the replicas of one generation, or only those named (used to finish or abort a
        deploy, and to retire old replicas one at a time in a rolling one)."""
        ...

    async def status(self, instance_id: str) -> WorkloadStatus:
        """Observe the instance now."""
        ...

    def logs(
        self, instance_id: str, *, tail: int | None = None, since: datetime | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        """The replicas' log lines, oldest first; with ``follow`` it keeps yielding new lines."""
        ...

    async def usage(self, instance_id: str) -> Usage:
        """Resource usage summed over the running replicas."""
        ...

    async def replica_usage(self, instance_id: str) -> list[ReplicaUsage]:
        """Each replica's usage (every generation), ordered by generation and replica; a replica that
        does not run has ``usage=None``. Raises ``WorkloadNotFound`` when the instance has no replicas."""
        ...

    async def exec(
        self,
        instance_id: str,
        command: list[str],
        *,
        timeout: float = 10.0,
        generation: int | None = None,
        replica: int | None = None,
    ) -> ExecResult:
        """Run a command inside one running replica (never on the control-plane host): by default the
        first running replica of the newest generation; ``generation`` and/or ``replica`` narrow the
        choice (a deploy gate runs a health check in the new replica it gates). No running replica
        matches: ``WorkloadNotFound``."""
        ...

    async def inventory(self) -> list[InventoryItem]:
        """Every object this provider runs for ctrlplane, found by the managed label."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A one-shot container of a release (a release phase, a one-off run, a job's firing): the
    release's image, env, files, limits and tenant network from ``workload`` (its ``replicas``,
    ``ports`` and ``probes`` are ignored), running ``command`` instead of the image's own."""

    run_id: str
    workload: WorkloadSpec
    command: tuple[str, ...]


class RunStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A one-shot container now: ``missing`` once it is gone (never created, or removed)."""

    run_id: str
    state: RunState
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None


@runtime_checkable
class RunProvider(Protocol):
    """A runtime that runs one-shot containers of a release beside (never inside) the serving
    replicas (Docker: a container; Kubernetes: a ``Job``). Keyed by the run's ID like everything
    else: ``start_run`` of a run that exists adopts it, so a worker resuming after a crash never
    starts the command twice. The objects carry ``ctrlplane.run`` and the instance's labels (so
    ``deprovision`` removes them with the instance) but no generation, so retiring a generation in
    a deploy never kills a run."""

    async def start_run(self, spec: RunSpec) -> RunStatus:
        """Create (or adopt) the run's container and start it; one that already exited stays so."""
        ...

    async def run_status(self, instance_id: str, run_id: str) -> RunStatus:
        """Observe the run's container now."""
        ...

    def run_logs(
        self, instance_id: str, run_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        """The run's output lines (stdout and stderr, ``replica`` 0), oldest first; with ``follow`` it
        keeps yielding until the container exits. Nothing (no error) once the run is gone."""
        ...

    async def remove_run(self, instance_id: str, run_id: str) -> None:
        """Kill and remove the run's container and what it alone used; no-op when gone."""
        ...


@runtime_checkable
class SelfSampledProvider(Protocol):
    """A runtime whose instances' usage samples reach ctrlplane on their own (the nodes provider:
    the agents' metric batches are stored as samples when they arrive). The metrics sampler takes
    no sample of its instances, which would count each one twice; its ``usage`` still answers."""

    samples_usage: bool


@runtime_checkable
class ConfigurableProvider(Protocol):
    """A runtime that enforces ``WorkloadSpec.tenant_quota``, runs ``probes`` or serves ``routes``
    itself (Kubernetes). When a tenant's quota, an instance's health checks, routes or domains
    change, ctrlplane queues a ``configure`` operation for each affected instance on such a runtime
    (and on no other: Docker never sees one)."""

    async def configure(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Apply ``spec``'s tenant quota, probes and routes to what runs for the instance now,
        idempotently; replicas, image and generation stay as they are (a stopped instance stays
        stopped). An instance with nothing running is left alone (its next provision carries the
        spec); one whose replicas are of another generation (changed while stopped) gets all but
        the replicas' part (the probes), which its next start brings."""
        ...


@runtime_checkable
class KillableProvider(Protocol):
    """A runtime that can end an instance's processes without a grace period. A hard terminate
    (``deprovision`` with ``{"hard": true}``) kills first, so the deprovision that follows has
    nothing left to wait for; on other runtimes it is a plain, graceful ``deprovision``."""

    async def kill(self, instance_id: str) -> None:
        """Send SIGKILL to every running replica of the instance; no-op when none runs."""
        ...


@runtime_checkable
class SharedEngineProvider(Protocol):
    """A runtime that other installations may use too (a Docker engine), and that can tell whether
    one of them uses this installation's cluster name: each would remove the other's objects as
    orphans."""

    async def other_installations(self) -> list[str]:
        """The IDs of other installations that labelled objects with this cluster name; empty when
        none did (or the runtime cannot be reached)."""
        ...


@runtime_checkable
class AdmittingProvider(Protocol):
    """A runtime with a finite room per tenant that it can check before work is accepted (Docker:
    a tenant network needs a free block of the subnet pool)."""

    async def admit(self, tenant_id: str) -> None:
        """Raise ``ProviderUnavailable`` (a subclass with its own ``code``) when a new instance of
        ``tenant_id`` could not be placed now; return when it could."""
        ...


@runtime_checkable
class CollectingProvider(Protocol):
    """A runtime holding shared objects that outlive the instances using them (Docker: tenant
    networks); the reconciler asks it to remove this installation's unused ones on every pass."""

    async def collect_unused(self) -> list[str]:
        """Remove this installation's shared objects nothing uses (never another installation's);
        the names of those removed."""
        ...


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """Everything of this installation a runtime runs, read in one listing (``observe``).

    ``workloads`` holds the status of every instance that has objects (an instance absent from it
    has none: ``missing``). A listing may lack details an instance's own ``status`` reads (Docker's
    container list has no OOM flag, error text or timestamps), so ``exact`` says whether these
    statuses are what ``status`` would answer; when it is False, a caller that acts on one reads
    that instance's ``status`` first."""

    items: tuple[InventoryItem, ...]
    workloads: dict[str, WorkloadStatus]
    exact: bool = False


@runtime_checkable
class ObservingProvider(Protocol):
    """A runtime that lists every instance's state in one call, so the reconciler's pass costs one
    listing plus work for the instances that changed, not one ``status`` call per instance."""

    async def observe(self) -> Observation:
        """This installation's objects and every instance's status, from one listing per kind."""
        ...


@runtime_checkable
class WatchingProvider(Protocol):
    """A runtime that reports changes as they happen (Docker's event stream, Kubernetes' list-then-
    watch of Deployments and Pods), so the reconciler repairs an instance within a second instead of
    at its next periodic pass."""

    def changes(self) -> AsyncGenerator[str, None]:
        """IDs of instances whose objects changed (a replica died, was killed, removed, ...), as
        the runtime reports them; runs until closed. Raises ``ProviderUnavailable`` when the
        runtime cannot be reached (the caller retries)."""
        ...


class RetainedReplicas(msgspec.Struct, kw_only=True):
    """Replicas of another generation than a workload's that its runtime keeps running beside it (a
    deploy's old set, until the router has withdrawn and drained them: the nodes provider sends
    these to its node)."""

    generation: int
    replicas: list[int] = msgspec.field(default_factory=list)
