"""Desired against actual on the node's Docker engine, through the Docker provider's own code.

The agent loads the ``docker`` provider from the ``ctrlplane.providers`` entry points (ctrlplane
never imports a provider) with ``ProviderSettings.cluster_name`` set to the node's cluster name
(``node-`` and the node ID), so every object the agent makes carries ``ctrlplane.cluster=node-...``:
two agents on one engine, or an agent beside a control plane's own Docker provider, never see or
reap each other's containers, and an administrator tells them apart by that label.

``converge`` is the only place that changes the engine, and the agent runs it from one task at a
time, so a timer, an event and a reconnect can never race into creating one replica twice. Every
provider call is idempotent and keyed by ctrlplane IDs; a converge cut short by a SIGKILL is
finished by the next one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import entry_points

import anyio
import structlog

from ctrlplane.errors import CtrlplaneError
from ctrlplane.nodes.contract import ActionRequest, ContractError, DriftCorrection, ExecutionResult, NodeWorkload
from ctrlplane.provisioning.contract import KillableProvider, Provider, ProviderSettings, WorkloadSpec, WorkloadStatus
from ctrlplane.provisioning.errors import WorkloadNotFound
from ctrlplane.provisioning.registry import ENTRY_POINT_GROUP, ProviderFactory

log = structlog.get_logger("ctrlplane.agent")

INSTANCE_ACTIONS = ("ctrlplane.instance.restart", "ctrlplane.instance.exec", "ctrlplane.instance.kill")
"""The actions the control plane's nodes provider sends (``action_request``): restart the
instance's containers, run a command in a replica, SIGKILL its replicas (a hard terminate, before
its removal). Anything else is refused."""
KILL_ACTION = INSTANCE_ACTIONS[2]
OUTPUT_LIMIT = 65536

SpecFor = Callable[[NodeWorkload], Awaitable[WorkloadSpec]]
"""The workload's spec with its secrets merged in (fetched and decrypted on demand)."""


def node_cluster_name(node_id: str) -> str:
    """A valid ``CTRLPLANE_CLUSTER_NAME`` that names the node (its ID, lowercased, ``_`` as ``-``)."""
    return ("node-" + node_id.lower().replace("_", "-"))[:63].rstrip("-")


def load_docker_provider(node_id: str, *, host_address: str = "127.0.0.1") -> Provider:
    """The Docker provider under the node's cluster name, publishing ports on ``host_address``
    (its ``CTRLPLANE_DOCKER_HOST_ADDRESS``; the other ``CTRLPLANE_DOCKER_*`` keep their defaults)."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if "docker" not in found:
        raise RuntimeError("the agent needs the ctrlplane-docker provider installed (entry point 'docker')")
    settings = ProviderSettings(
        cluster_name=node_cluster_name(node_id), environ={"CTRLPLANE_DOCKER_HOST_ADDRESS": host_address}
    )
    factory: ProviderFactory = found["docker"].load()
    return factory(settings)


class Runtime:
    """What runs on this node for its assigned workloads."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._applied: dict[str, int] = {}
        """Revision last applied per instance (memory only: after a restart every workload is
        compared with the engine from scratch)."""
        self._killed: dict[str, int] = {}
        """Instances a hard terminate killed, with their revision then: nothing starts them again
        (their removal follows) unless a newer revision comes."""

    def hold(self, instance_id: str, revision: int) -> None:
        """Keep the converge from starting this revision of the instance again (it is being killed)."""
        self._killed[instance_id] = revision

    async def converge(
        self, desired: dict[str, NodeWorkload], spec_for: SpecFor, *, remove_unknown: bool
    ) -> tuple[list[DriftCorrection], dict[str, WorkloadStatus]]:
        """Make the engine run ``desired``: create what is missing, replace other generations, start
        stopped replicas, apply a changed revision's resources and replica count; with
        ``remove_unknown`` (only after a full state pull) remove this node's instances that are not
        desired. Returns what was corrected and each desired instance's status."""
        corrections: list[DriftCorrection] = []
        statuses: dict[str, WorkloadStatus] = {}
        for instance_id, workload in sorted(desired.items()):
            if self._killed.get(instance_id, -1) >= workload.revision:
                continue  # killed by a hard terminate: its removal is on its way
            try:
                corrected, status = await self._converge_one(workload, spec_for)
            except (CtrlplaneError, ContractError) as exc:
                # one workload that cannot run (image missing, engine refusal, a secret that does
                # not open) never stops the others; its report says why
                message = exc.message if isinstance(exc, CtrlplaneError) else str(exc)
                log.warning("workload_not_converged", instance=instance_id, error=message)
                corrections.append(DriftCorrection(type="workload_failed", detail=message, instance_id=instance_id))
                statuses[instance_id] = WorkloadStatus(instance_id=instance_id, state="failed", message=message)
                continue
            corrections.extend(corrected)
            statuses[instance_id] = status
        if remove_unknown:
            running = {item.instance_id for item in await self.provider.inventory() if item.instance_id}
            for instance_id in sorted(running - set(desired)):
                await self.provider.deprovision(instance_id)
                self._applied.pop(instance_id, None)
                corrections.append(
                    DriftCorrection(
                        type="workload_removed", detail="not assigned to this node", instance_id=instance_id
                    )
                )
        return corrections, statuses

    async def recreate(self, workload: NodeWorkload) -> None:
        """Remove the workload's current containers so that the converge that follows creates them
        with its new secrets (same generation, so same names: they cannot run side by side)."""
        await self.provider.remove_generation(workload.instance_id, workload.spec.generation)

    async def run_action(self, request: ActionRequest) -> ExecutionResult:
        """Carry out one of ``INSTANCE_ACTIONS`` with the Docker provider: the result to post.
        A command's own exit code is ``exit_code`` (``success`` only for 0); a call that could not
        run says why in ``stderr`` with no exit code (``stdout`` ``workload_not_found`` when no
        replica matched)."""
        started = time.monotonic()
        parameters = request.parameters
        timeout = float(parameters.get("timeout") or 10.0)
        instance_id = str(parameters.get("instance_id"))

        def result(status: str, *, exit_code: int | None = None, stdout: str = "", stderr: str = "") -> ExecutionResult:
            return ExecutionResult(
                execution_id=request.execution_id,
                status=status,  # type: ignore[arg-type]
                exit_code=exit_code,
                stdout=stdout[-OUTPUT_LIMIT:],
                stderr=stderr[-OUTPUT_LIMIT:],
                duration=f"{time.monotonic() - started:.3f}s",
                finished_at=datetime.now(UTC),
            )

        try:
            if request.action == KILL_ACTION:
                if isinstance(self.provider, KillableProvider):
                    await self.provider.kill(instance_id)
                else:
                    await self.provider.stop(instance_id)
                return result("success", exit_code=0)
            if request.action == INSTANCE_ACTIONS[0]:
                replicas = parameters.get("replicas")
                await self.provider.restart(instance_id, tuple(replicas) if replicas is not None else None)
                return result("success", exit_code=0)
            command = [str(part) for part in parameters.get("command") or []]
            generation, replica = parameters.get("generation"), parameters.get("replica")
            with anyio.fail_after(timeout + 5):
                answer = await self.provider.exec(
                    instance_id,
                    command,
                    timeout=timeout,
                    generation=int(generation) if generation is not None else None,
                    replica=int(replica) if replica is not None else None,
                )
            return result(
                "success" if answer.exit_code == 0 else "failure", exit_code=answer.exit_code, stdout=answer.output
            )
        except TimeoutError:
            return result("timeout", stderr="the command did not finish in time")
        except WorkloadNotFound as exc:
            return result("failure", stdout="workload_not_found", stderr=exc.message)
        except CtrlplaneError as exc:
            timed_out = request.action == INSTANCE_ACTIONS[1] and time.monotonic() - started >= timeout
            return result("timeout" if timed_out else "failure", stderr=exc.message)

    async def remove(self, instance_id: str) -> None:
        await self.provider.deprovision(instance_id)
        self._applied.pop(instance_id, None)
        self._killed.pop(instance_id, None)

    async def _converge_one(
        self, workload: NodeWorkload, spec_for: SpecFor
    ) -> tuple[list[DriftCorrection], WorkloadStatus]:
        instance_id = workload.instance_id
        wanted = workload.spec
        status = await self.provider.status(instance_id)
        generations = {replica.generation for replica in status.replicas}
        current = [r for r in status.replicas if r.generation == wanted.generation]
        corrections: list[DriftCorrection] = []

        def corrected(kind: str, detail: str) -> None:
            corrections.append(DriftCorrection(type=kind, detail=detail, instance_id=instance_id))

        kept = {r.generation: set(r.replicas) for r in workload.retained}
        if not status.replicas:
            if instance_id in self._applied:
                corrected("workload_created", "its containers were missing")
            status = await self.provider.provision(await spec_for(workload))
        elif wanted.generation not in generations and not kept:
            status = await self.provider.deploy(await spec_for(workload), "rolling")
        else:
            # a gated deploy in progress keeps the retained replicas of other generations (the
            # control plane drops them once the router no longer sends them requests)
            for generation in sorted(generations - {wanted.generation}):
                present = {r.replica for r in status.replicas if r.generation == generation}
                if generation not in kept:
                    await self.provider.remove_generation(instance_id, generation)
                elif doomed := present - kept[generation]:
                    await self.provider.remove_generation(instance_id, generation, tuple(sorted(doomed)))
            newest = wanted.generation >= max(generations | set(kept))
            resized = self._applied.get(instance_id) not in (None, workload.revision)
            if current and (resized or len(current) > wanted.replicas):
                if newest:
                    # Docker's scale works on the newest generation: only when it is the wanted one
                    status = await self.provider.scale(await spec_for(workload))
                elif surplus := [r.replica for r in current if r.replica >= wanted.replicas]:
                    await self.provider.remove_generation(instance_id, wanted.generation, tuple(sorted(surplus)))
            missing = len(current) < wanted.replicas or any(r.state != "running" for r in current)
            if missing:
                if instance_id in self._applied and current:
                    running = sum(r.state == "running" for r in current)
                    corrected("replicas_started", f"{wanted.replicas - running} of {wanted.replicas} were not running")
                status = await self.provider.provision(await spec_for(workload))
            elif kept or generations != {wanted.generation}:
                status = await self.provider.status(instance_id)
        self._applied[instance_id] = workload.revision
        return corrections, status
