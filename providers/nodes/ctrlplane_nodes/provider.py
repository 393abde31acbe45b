"""The ``nodes`` provider: instances on Docker hosts that run ``ctrlplane agent``.

It never talks to a node. It writes the desired state through the control plane's node
assignments (``AppServices.nodes``, the door of ``ctrlplane.nodes``: one short transaction per
call, plus the node's signed event), and reads what the node reported (``POST .../report``). The
agent on the node does the Docker work with the Docker provider's own code. So:

* ``provision`` places a new instance (``placement.choose``), moves one off a draining node (when
  another ready node of its pool has room: its status is ``missing`` meanwhile, so the reconciler
  repairs it) or re-sends its spec to the node it is on, then waits until the node reports the
  spec's generation running (a new generation is started beside the old one, which the node keeps
  as ``retained`` until ``remove_generation``); ``deploy`` (which replaces) and ``scale`` send the
  new spec and wait likewise. A node that has not reported within ``WAIT_SECONDS`` raises
  ``ProviderUnavailable``, so the worker retries later instead of failing the instance.
  ``deprovision`` takes the instance off its node.
* ``status`` is the node's last report. While the node is ``unreachable`` (it missed its
  heartbeats) the status is ``unknown`` with the reason, keeping the replicas last reported, so
  the reconciler neither repairs nor restarts anything (that would duplicate containers when the
  node returns); when it reports again the instance is ``running`` again.
* ``logs`` are the lines the node shipped; ``replica_usage`` is each reported replica with the
  usage the node shipped for it (its metric batches), ``usage`` their sum. The batches are stored as
  the instance's usage samples by the control plane itself, so the sampler takes none.

A stop takes the instance off its node (its room is freed; a start places it again). A restart,
an exec and a hard terminate's ``kill`` are ``action_request`` executions the node acts on once
(seed 002's ack and result): the agent restarts the running containers, runs the command in a
replica, or SIGKILLs the replicas, with the Docker provider's own code, and posts the result; no
answer in time is ``ProviderUnavailable`` (for ``kill``: the removal that follows ends it anyway).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol

import anyio

from ctrlplane.provisioning.contract import (
    ExecResult,
    InventoryItem,
    LogLine,
    ProviderHealth,
    ProviderSettings,
    ReplicaUsage,
    RetainedReplicas,
    Strategy,
    Usage,
    WorkloadSpec,
    WorkloadStatus,
    total_usage,
)
from ctrlplane.provisioning.errors import ProviderError, ProviderUnavailable, WorkloadNotFound
from ctrlplane_nodes.placement import DEFAULT_POOL, Candidate, choose, pool_of

WAIT_SECONDS = 120.0
POLL_SECONDS = 0.25
RESTART_SECONDS = 120.0
EXEC_MARGIN_SECONDS = 10.0
RESTART_ACTION = "ctrlplane.instance.restart"
EXEC_ACTION = "ctrlplane.instance.exec"
KILL_ACTION = "ctrlplane.instance.kill"
"""The actions the agent runs for this provider (``ctrlplane.nodes.assignments.INSTANCE_ACTIONS``)."""
KILL_SECONDS = 30.0


class NoNodeAvailable(ProviderUnavailable):
    code = "no_node_available"


class Placement(Protocol):
    @property
    def node_id(self) -> str: ...
    @property
    def node_state(self) -> str: ...
    @property
    def last_heartbeat_at(self) -> datetime | None: ...


class Desired(Protocol):
    @property
    def node_id(self) -> str: ...
    @property
    def generation(self) -> int: ...
    @property
    def replicas(self) -> int: ...
    @property
    def retained(self) -> tuple[RetainedReplicas, ...]: ...
    @property
    def spec(self) -> WorkloadSpec: ...


class NodeDoor(Protocol):
    """What the provider needs of ``ctrlplane.nodes.assignments.NodeAssignments``."""

    async def assign(self, node_id: str, spec: WorkloadSpec, retained: Sequence[RetainedReplicas] = ()) -> int: ...
    async def update(self, node_id: str, spec: WorkloadSpec, retained: Sequence[RetainedReplicas] = ()) -> int: ...
    async def desired(self, instance_id: str) -> Desired | None: ...
    async def reshape(
        self, instance_id: str, *, retained: Sequence[RetainedReplicas], replicas: int | None = None
    ) -> int | None: ...
    async def remove(self, node_id: str, instance_id: str) -> None: ...
    async def placement(self, instance_id: str) -> Placement | None: ...
    async def reported_status(self, instance_id: str) -> WorkloadStatus | None: ...
    async def logs(
        self, instance_id: str, *, tail: int | None = None, since: datetime | None = None
    ) -> Sequence[LogLine]: ...
    async def replica_usage(self, instance_id: str) -> Mapping[tuple[int, int], Usage]: ...
    async def candidates(self, pool: str, tenant_id: str) -> Sequence[Candidate]: ...
    async def execute(self, node_id: str, action: str, parameters: dict[str, object], *, timeout: float) -> Outcome: ...


class Outcome(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def result(self) -> dict[str, object]: ...


def _unsupported(what: str) -> ProviderError:
    return ProviderError(f"{what} is not available for instances on nodes yet", details={"provider": "nodes"})


class NodesProvider:
    name = "nodes"
    samples_usage = True
    """The nodes' metric batches are the instances' usage samples (``SelfSampledProvider``)."""

    def __init__(self, settings: ProviderSettings, *, wait_seconds: float = WAIT_SECONDS) -> None:
        self._default_pool = DEFAULT_POOL
        self._wait_seconds = wait_seconds
        self._door: NodeDoor | None = None

    def bind_node_assignments(self, nodes: NodeDoor) -> None:
        """Take the control plane's node assignments (``build_services`` calls this)."""
        self._door = nodes

    def _nodes(self) -> NodeDoor:
        if self._door is None:
            raise ProviderUnavailable("the nodes provider is not attached to the control plane's node assignments")
        return self._door

    async def ping(self) -> ProviderHealth:
        if self._door is None:
            return ProviderHealth(False, "not attached to the control plane's node assignments")
        return ProviderHealth(True, "nodes: placement through the node assignments")

    async def _place(self, spec: WorkloadSpec, *, beside: bool) -> str:
        """Send ``spec`` to the instance's node (placing it first if it is on none). With ``beside``
        the node keeps what runs of other generations (the previous desired generation and what was
        retained already), as the Docker provider's ``provision`` leaves other generations alone;
        without, it replaces them."""
        nodes = self._nodes()
        placed = await nodes.placement(spec.instance_id)
        if placed is not None and placed.node_state == "draining":
            desired = await nodes.desired(spec.instance_id)
            settled = desired is None or (not desired.retained and desired.generation == spec.generation)
            pool = pool_of(spec, self._default_pool)
            target = choose(spec, await nodes.candidates(pool, spec.tenant_id)) if settled else None
            if target is not None:
                # a drain: stop it on the drained node, then place it on the other one
                await nodes.remove(placed.node_id, spec.instance_id)
                await nodes.assign(target.node_id, spec)
                return target.node_id
        if placed is not None and placed.node_state != "deregistered":
            retained: list[RetainedReplicas] = []
            desired = await nodes.desired(spec.instance_id) if beside else None
            if desired is not None:
                kept = {r.generation: set(r.replicas) for r in desired.retained}
                if desired.generation != spec.generation and desired.replicas:
                    kept.setdefault(desired.generation, set()).update(range(desired.replicas))
                kept.pop(spec.generation, None)
                retained = [RetainedReplicas(generation=g, replicas=sorted(r)) for g, r in sorted(kept.items()) if r]
            await nodes.update(placed.node_id, spec, retained)
            return placed.node_id
        if placed is not None:
            await nodes.remove(placed.node_id, spec.instance_id)
        pool = pool_of(spec, self._default_pool)
        chosen = choose(spec, await nodes.candidates(pool, spec.tenant_id))
        if chosen is None:
            raise NoNodeAvailable(
                f"no ready node of pool {pool!r} has room for instance {spec.instance_id} "
                f"({spec.replicas} x {spec.resources.cpu_millis}m CPU, {spec.resources.memory_mb} MB)",
                details={"provider": "nodes", "pool": pool},
            )
        await nodes.assign(chosen.node_id, spec)
        return chosen.node_id

    async def _send(self, spec: WorkloadSpec, *, beside: bool, only: bool) -> WorkloadStatus:
        """Place ``spec`` (``_place``) and wait for the node's answer (``_wait``)."""
        before = await self._nodes().reported_status(spec.instance_id)
        return await self._wait(spec, await self._place(spec, beside=beside), only=only, before=before)

    async def _wait(
        self, spec: WorkloadSpec, node_id: str, *, only: bool, before: WorkloadStatus | None
    ) -> WorkloadStatus:
        """The node's report once it has started ``spec.replicas`` replicas of ``spec.generation`` (and,
        with ``only``, runs no other generation), as Docker's ``provision`` answers once it started
        them: a replica that exited at once is an answer too, for the caller's gate to judge. An
        exited replica counts only when it was started after ``before`` (the report read before the
        spec was sent), so a stale exit is never taken for the node's answer."""
        deadline = time.monotonic() + self._wait_seconds
        earlier = {(r.generation, r.replica, r.started_at) for r in before.replicas} if before else set()
        while True:
            status = await self._nodes().reported_status(spec.instance_id)
            if status is not None:
                current = [r for r in status.replicas if r.generation == spec.generation]
                if status.state == "failed" and not status.replicas and status.message:
                    # the node could not run it at all (an image it cannot pull, the engine refused)
                    raise ProviderError(f"node {node_id}: {status.message}", details={"node_id": node_id})
                started = sum(
                    r.state == "running"
                    or (r.started_at is not None and (r.generation, r.replica, r.started_at) not in earlier)
                    for r in current
                )
                others = any(r.generation != spec.generation for r in status.replicas)
                if started >= spec.replicas and len(current) == spec.replicas and not (only and others):
                    return status
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    f"node {node_id} has not reported instance {spec.instance_id} running yet",
                    details={"provider": "nodes", "node_id": node_id},
                )
            await anyio.sleep(POLL_SECONDS)

    async def _drain_target(self, instance_id: str) -> str | None:
        """The node an instance on a draining node would move to: None while a deploy keeps other
        generations (it moves once that is over) or when no ready node of its pool has room (it
        stays where it is, running)."""
        nodes = self._nodes()
        desired = await nodes.desired(instance_id)
        if desired is None or desired.retained:
            return None
        spec = desired.spec
        chosen = choose(spec, await nodes.candidates(pool_of(spec, self._default_pool), spec.tenant_id))
        return chosen.node_id if chosen is not None else None

    async def provision(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Run ``spec``'s generation, leaving other generations alone (as Docker's ``provision``
        does): the deploy engine starts a new generation beside the old one this way, and the node
        keeps the old replicas (``retained``) until ``remove_generation`` drops them, after the
        router stopped sending them requests."""
        return await self._send(spec, beside=True, only=False)

    async def deploy(self, spec: WorkloadSpec, strategy: Strategy) -> WorkloadStatus:
        """The agent replaces the running generation with ``spec.generation`` (start the new set,
        then remove the old one) whatever the strategy; health gating stays the caller's."""
        return await self._send(spec, beside=False, only=True)

    async def scale(self, spec: WorkloadSpec) -> WorkloadStatus:
        return await self._send(spec, beside=True, only=False)

    async def deprovision(self, instance_id: str) -> None:
        nodes = self._nodes()
        placed = await nodes.placement(instance_id)
        if placed is not None:
            await nodes.remove(placed.node_id, instance_id)

    async def remove_generation(
        self, instance_id: str, generation: int, replicas: tuple[int, ...] | None = None
    ) -> None:
        """Tell the node to stop keeping these replicas (of a retained generation, or of the desired
        one: its replica count drops to none) and wait until it reports them gone."""
        nodes = self._nodes()
        desired = await nodes.desired(instance_id)
        if desired is None:
            return
        kept = {r.generation: set(r.replicas) for r in desired.retained}
        count: int | None = None
        if generation in kept:
            kept[generation] = set() if replicas is None else kept[generation] - set(replicas)
        elif generation == desired.generation:
            # the generation the node is told to run (a recreate removes it before the new one)
            if replicas is None or set(range(desired.replicas)) <= set(replicas):
                count = 0
            elif max(replicas) == desired.replicas - 1:
                count = min(replicas)
        retained = [RetainedReplicas(generation=g, replicas=sorted(r)) for g, r in sorted(kept.items()) if r]
        await nodes.reshape(instance_id, retained=retained, replicas=count)
        deadline = time.monotonic() + self._wait_seconds
        while True:
            status = await nodes.reported_status(instance_id)
            left = [
                r
                for r in (status.replicas if status else ())
                if r.generation == generation and (replicas is None or r.replica in replicas)
            ]
            if not left:
                return
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    f"node {desired.node_id} has not removed generation {generation} of instance {instance_id} yet",
                    details={"provider": "nodes", "node_id": desired.node_id},
                )
            await anyio.sleep(POLL_SECONDS)

    async def status(self, instance_id: str) -> WorkloadStatus:
        nodes = self._nodes()
        placed = await nodes.placement(instance_id)
        if placed is None:
            # nothing runs: stopped (a stop releases the node); one that should run is repaired,
            # which places it again
            return WorkloadStatus(instance_id=instance_id, state="stopped", message="not placed on any node")
        reported = await nodes.reported_status(instance_id)
        if placed.node_state == "unreachable":
            seen = placed.last_heartbeat_at.isoformat() if placed.last_heartbeat_at else "never"
            return WorkloadStatus(
                instance_id=instance_id,
                state="unknown",
                message=f"node {placed.node_id} is unreachable (last heartbeat: {seen})",
                replicas=reported.replicas if reported else (),
            )
        if placed.node_state == "deregistered":
            return WorkloadStatus(instance_id=instance_id, state="missing", message=f"node {placed.node_id} left")
        if placed.node_state == "draining" and (target := await self._drain_target(instance_id)):
            # nothing is repaired on a draining node: "missing" makes the reconciler's repair
            # provision it, which moves it (``_place``)
            return WorkloadStatus(
                instance_id=instance_id,
                state="missing",
                message=f"node {placed.node_id} is draining: instance moves to node {target}",
            )
        if reported is None:
            return WorkloadStatus(
                instance_id=instance_id, state="missing", message=f"node {placed.node_id} has not reported it yet"
            )
        return reported

    async def inventory(self) -> list[InventoryItem]:
        return []

    def logs(
        self, instance_id: str, *, tail: int | None = None, since: datetime | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        return self._logs(instance_id, tail=tail, since=since, follow=follow)

    async def _logs(
        self, instance_id: str, *, tail: int | None, since: datetime | None, follow: bool
    ) -> AsyncIterator[LogLine]:
        nodes = self._nodes()
        if await nodes.placement(instance_id) is None:
            raise WorkloadNotFound(f"instance {instance_id} is not on any node", details={"instance_id": instance_id})
        last = since
        for line in await nodes.logs(instance_id, tail=tail, since=since):
            last = line.timestamp
            yield line
        while follow:
            await anyio.sleep(1.0)
            for line in await nodes.logs(instance_id, since=last):
                if last is not None and line.timestamp <= last:
                    continue
                last = line.timestamp
                yield line

    async def _reachable(self, instance_id: str) -> Placement:
        """Where the instance is placed: ``WorkloadNotFound`` on no node, ``ProviderUnavailable``
        while its node is unreachable."""
        placed = await self._nodes().placement(instance_id)
        if placed is None or placed.node_state == "deregistered":
            raise WorkloadNotFound(f"instance {instance_id} is not on any node", details={"instance_id": instance_id})
        if placed.node_state == "unreachable":
            raise ProviderUnavailable(
                f"node {placed.node_id} of instance {instance_id} is unreachable",
                details={"provider": "nodes", "node_id": placed.node_id},
            )
        return placed

    async def replica_usage(self, instance_id: str) -> list[ReplicaUsage]:
        """Each replica the node last reported, with the usage the node last shipped for it (its
        metric batches, group ``replica``); a replica that does not run, or whose usage has not
        arrived (or is stale), has none. ``WorkloadNotFound`` when it is on no node or the node
        reported no replica; ``ProviderUnavailable`` while its node is unreachable (what it shipped
        last is not usage now)."""
        nodes = self._nodes()
        placed = await self._reachable(instance_id)
        reported = await nodes.reported_status(instance_id)
        if reported is None or not reported.replicas:
            raise WorkloadNotFound(
                f"node {placed.node_id} reported no replica of instance {instance_id}",
                details={"instance_id": instance_id},
            )
        shipped = await nodes.replica_usage(instance_id)
        found = [
            ReplicaUsage(
                replica=r.replica,
                generation=r.generation,
                name=r.name,
                state=r.state,
                usage=shipped.get((r.generation, r.replica)) if r.state == "running" else None,
            )
            for r in reported.replicas
        ]
        return sorted(found, key=lambda r: (r.generation, r.replica))

    async def usage(self, instance_id: str) -> Usage:
        """The replicas' usage (``replica_usage``) summed. The metrics sampler takes none of it:
        the node's batches are the instance's samples already (``samples_usage``)."""
        return total_usage(r.usage for r in await self.replica_usage(instance_id) if r.usage is not None)

    async def start(self, instance_id: str) -> WorkloadStatus:
        """Never called by ctrlplane for this provider: a start is a ``provision`` (it places again)."""
        raise _unsupported("start without a spec")

    async def stop(self, instance_id: str) -> WorkloadStatus:
        """Take the instance off its node: its containers go and its room on the node is freed; the
        next start places it again (on any ready node of its pool with room)."""
        await self.deprovision(instance_id)
        return WorkloadStatus(instance_id=instance_id, state="stopped", message="stopped; released by its node")

    async def _execute(
        self, instance_id: str, action: str, parameters: dict[str, object], *, timeout: float
    ) -> dict[str, object]:
        """Run ``action`` on the instance's node (an ``action_request`` execution) and give its
        result; the node must be reachable and answer within ``timeout`` (``ProviderUnavailable``)."""
        nodes = self._nodes()
        placed = await self._reachable(instance_id)
        outcome = await nodes.execute(
            placed.node_id, action, {"instance_id": instance_id, **parameters}, timeout=timeout
        )
        details = {"provider": "nodes", "node_id": placed.node_id}
        if outcome.status == "no_answer":
            raise ProviderUnavailable(outcome.reason, details=details)
        if outcome.status == "rejected":
            raise ProviderError(f"node {placed.node_id} refused {action}: {outcome.reason}", details=details)
        if outcome.status == "timeout":
            raise ProviderError(f"{action} on node {placed.node_id} timed out", details=details)
        result = outcome.result
        if outcome.status == "failure" and result.get("exit_code") is None:
            message = str(result.get("stderr") or outcome.reason or "failed")
            if result.get("stdout") == "workload_not_found":
                raise WorkloadNotFound(message, details={"instance_id": instance_id, **details})
            raise ProviderError(f"node {placed.node_id}: {message}", details=details)
        return result

    async def restart(self, instance_id: str, replicas: tuple[int, ...] | None = None) -> WorkloadStatus:
        """The node restarts the running containers (all replicas, or those named) through an
        ``action_request`` execution, acted on once; then the instance's status as reported."""
        parameters: dict[str, object] = {"replicas": list(replicas) if replicas is not None else None}
        await self._execute(instance_id, RESTART_ACTION, parameters, timeout=RESTART_SECONDS)
        return await self.status(instance_id)

    async def kill(self, instance_id: str) -> None:
        """A hard terminate (``KillableProvider``): the node SIGKILLs the running replicas at once
        through an ``action_request`` execution, and starts them no more until their removal, which
        the ``deprovision`` that follows sends. An instance on no node, or on an unreachable node,
        has nothing this can reach: the removal alone ends it (gracefully, when the node is back).
        A node that refuses, or does not answer within ``KILL_SECONDS``, gets the removal too."""
        nodes = self._nodes()
        placed = await nodes.placement(instance_id)
        if placed is None or placed.node_state in ("deregistered", "unreachable"):
            return
        with contextlib.suppress(ProviderError):
            # no answer in time, or the node refused (it no longer runs it): the removal that
            # follows still ends it
            await self._execute(instance_id, KILL_ACTION, {}, timeout=KILL_SECONDS)

    async def exec(
        self,
        instance_id: str,
        command: list[str],
        *,
        timeout: float = 10.0,
        generation: int | None = None,
        replica: int | None = None,
    ) -> ExecResult:
        """Run ``command`` in a replica on the node (an ``action_request`` execution; the agent runs
        it with the Docker provider's ``exec`` and ``timeout``). The node has ``timeout`` plus
        ``EXEC_MARGIN_SECONDS`` (delivery and the answer) to give the result."""
        if not command:
            raise ProviderError("exec needs a command")
        parameters: dict[str, object] = {
            "command": list(command),
            "timeout": timeout,
            "generation": generation,
            "replica": replica,
        }
        result = await self._execute(instance_id, EXEC_ACTION, parameters, timeout=timeout + EXEC_MARGIN_SECONDS)
        exit_code = result.get("exit_code")
        assert isinstance(exit_code, int)
        return ExecResult(exit_code=exit_code, output=str(result.get("stdout") or ""))

    async def close(self) -> None:
        self._door = None
