"""The deploy engine: carries a deployment out on the provider, gate by gate.

A **gate** passes when the new replicas run and each passes every enabled health check of the
instance, run against that replica (``ctrlplane/health/gate.py``), or, for an instance without
checks, answers on its first TCP port (an HTTP request gets any answer; with no ports, running is
enough) within ``CTRLPLANE_DEPLOY_HEALTH_TIMEOUT_SECONDS``. A replica that exits fails the gate at
once.

Strategies (the new generation runs beside the old one until the old is retired):

* ``recreate``: remove the old set, start the new set, gate it.
* ``rolling``: for each replica: start new replica *i*, gate it, then retire old replica *i*.
* ``blue_green``: start the whole new set, gate it, switch, retire the old set.
* ``canary``: start one new replica, gate it, watch it for ``CTRLPLANE_CANARY_OBSERVATION_SECONDS``
  (it must stay running), then start the rest, gate them, switch and retire the old set.

Every strategy ends with ``traffic.switched`` when only the new set is left to serve.

The router's rotation follows the gates (``network.traffic.Traffic``): a new replica is admitted
only after its gate, an old one is withdrawn (and drained) before its container is removed, the
canary gets ``CTRLPLANE_CANARY_TRAFFIC_PERCENT`` of the requests while it is observed, and going
back provisions the old set and switches the rotation to it before the new set is removed.

Any failed gate, a provider error (a missing image, say), the progress deadline
(``CTRLPLANE_DEPLOY_DEADLINE_SECONDS``) passing, or a cancel request ends the deployment by going
back: the new generation's containers are removed, the old generation is re-provisioned (replicas
a rolling deploy had retired come back) and the instance's configuration is restored from the
previous release, except its resources and replicas (a scale accepted before the deploy stays).
The outcome is ``rolled_back`` (a gate, a provider call or the deadline failed) or ``cancelled``;
``failed`` only if going back failed too. A deployment found ``running`` when its operation starts
was interrupted by a control-plane crash: it is rolled back the same way, so none stays half-done.

Each step is written as it happens (the deployment's ``steps``) and as events: ``deploy.started``,
``replica.started``, ``health.passed``, ``health.failed``, ``traffic.switched`` and
``deploy.succeeded`` / ``deploy.rolled_back`` / ``deploy.cancelled`` / ``deploy.failed``.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import msgspec
import structlog

from ctrlplane import httpclients
from ctrlplane.deployments.analysis import (
    Analysis,
    AnalysisResult,
    as_record,
    describe,
    judge,
    measure,
    replica_rows,
    window_seconds,
)
from ctrlplane.deployments.models import Deployment
from ctrlplane.errors import CtrlplaneError
from ctrlplane.events.service import append as append_event
from ctrlplane.health.gate import HealthGate
from ctrlplane.instances.models import Instance
from ctrlplane.network.traffic import Traffic
from ctrlplane.operations.spec import RuntimeConfig, runtime_config, spec_for
from ctrlplane.provisioning.contract import Provider, ReplicaStatus, WorkloadSpec, WorkloadStatus
from ctrlplane.releases.models import Release
from ctrlplane.releases.service import restore as restore_release
from ctrlplane.runs.release import abandon_release_phase, run_release_phase
from ctrlplane.secrets.crypto import DecryptionFailed
from ctrlplane.secrets.schemas import WorkloadSecrets
from ctrlplane.secrets.service import for_release as secrets_for_release
from ctrlplane.settings import Settings
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.deploy")

POLL_SECONDS = 0.2
ANALYSIS_POLL_SECONDS = 1.0


class GateFailed(Exception):
    pass


class Cancelled(Exception):
    pass


class DeployEngine:
    def __init__(self, services: AppServices, provider: Provider) -> None:
        self.services = services
        self.provider = provider
        self.settings = services.settings
        self.traffic = Traffic(services.settings, services.router, provider)

    async def run(self, deployment_id: str) -> WorkloadStatus | None:
        async with self.services.db.read() as session:
            deployment = await session.get(Deployment, deployment_id)
            instance = await session.get(Instance, deployment.instance_id) if deployment else None
            previous = (
                await session.get(Release, deployment.previous_release_id)
                if deployment and deployment.previous_release_id
                else None
            )
            config = await runtime_config(session, instance, self.settings) if instance else RuntimeConfig()
            if deployment is None or instance is None or deployment.state not in ("pending", "running"):
                return None
            undecryptable: DecryptionFailed | None = None
            try:
                new_secrets = await secrets_for_release(self.services, deployment.release_id, session)
                old_secrets = await secrets_for_release(self.services, previous.id if previous else None, session)
            except DecryptionFailed as exc:
                undecryptable = exc
        if undecryptable is not None:
            await self._finish(deployment, "failed", undecryptable.message, restore=True)
            return await self.provider.status(instance.id)
        new = msgspec.structs.replace(
            spec_for(
                instance, settings=self.settings, generation=deployment.generation, secrets=new_secrets, config=config
            ),
            release_id=deployment.release_id,
        )
        old = (
            _spec_of(previous, instance, deployment.previous_generation, old_secrets, self.settings, config)
            if previous
            else None
        )
        if deployment.state == "running":
            if abandoned := await abandon_release_phase(self.services, self.provider, deployment):
                await self._update(
                    deployment, step="release phase failed", event="deploy.release_failed", error=abandoned
                )
                await self._go_back(deployment, old, "failed", abandoned)
            else:
                await self._go_back(deployment, old, "rolled_back", _interrupted(deployment))
            return await self.provider.status(instance.id)
        await self._update(deployment, state="running", step="deploy", event="deploy.started")
        # The release phase (ctrlplane/runs/release.py) runs before any replica is touched; when it
        # fails nothing was replaced, so there is nothing to go back from.
        if ended := await run_release_phase(self.services, self.provider, deployment, new, step=self._update):
            await self._finish(deployment, ended.state, ended.reason, restore=True)
            return await self.provider.status(instance.id)
        try:
            await self._strategy(deployment, new, old)
        except GateFailed as exc:
            await self._go_back(deployment, old, "rolled_back", str(exc))
        except Cancelled:
            await self._go_back(deployment, old, "cancelled", "cancelled on request")
        except CtrlplaneError as exc:
            await self._go_back(deployment, old, "rolled_back", exc.message)
        else:
            await self._finish(deployment, "succeeded", None, current_release=deployment.release_id)
        return await self.provider.status(instance.id)

    async def _strategy(self, deployment: Deployment, new: WorkloadSpec, old: WorkloadSpec | None) -> None:
        strategy, replicas = deployment.strategy, new.replicas
        old_generation = deployment.previous_generation
        instance_id = new.instance_id
        analysis = msgspec.convert(deployment.analysis, Analysis) if deployment.analysis else None
        if strategy == "recreate":
            await self._step(deployment, "remove old replicas")
            await self.traffic.withdraw(instance_id, old_generation)
            await self.provider.remove_generation(instance_id, old_generation)
            await self._start_replicas(deployment, new, replicas)
            await self._gate(deployment, new, range(replicas))
        elif strategy == "rolling":
            for index in range(replicas):
                await self._start_replicas(deployment, new, index + 1)
                await self._gate(deployment, new, [index])
                await self.traffic.admit(instance_id, new.generation, [index])
                if analysis is not None:
                    await self._analyse(deployment, new, analysis, label=f"replica {index}")
                await self._step(deployment, f"retire old replica {index}")
                await self.traffic.withdraw(instance_id, old_generation, [index])
                await self.provider.remove_generation(instance_id, old_generation, (index,))
        else:
            first = 1 if strategy == "canary" else replicas
            await self._start_replicas(deployment, new, first)
            await self._gate(deployment, new, range(first))
            if strategy == "canary":
                weights = deployment.canary_steps or [self.settings.canary_traffic_percent]
                for weight in (w for w in weights if w < 100):
                    await self.traffic.canary(instance_id, new.generation, 0, weight)
                    await self._observe_canary(deployment, new, weight, analysis)
                await self._start_replicas(deployment, new, replicas)
                await self._gate(deployment, new, range(1, replicas))
        await self.traffic.switch(instance_id, new.generation)
        await self._update(deployment, step="switch traffic", event="traffic.switched")
        judged_at_full = strategy in ("blue_green", "recreate") or (strategy == "canary" and deployment.canary_steps)
        if analysis is not None and judged_at_full:
            await self._analyse(deployment, new, analysis, label="100%", weight=100 if strategy == "canary" else None)
        await self.provider.remove_generation(instance_id, old_generation)

    async def _start_replicas(self, deployment: Deployment, spec: WorkloadSpec, count: int) -> None:
        await self._check(deployment)
        await self.provider.provision(msgspec.structs.replace(spec, replicas=count))
        await self._update(deployment, step=f"start replicas up to {count}", event="replica.started", count=count)

    async def _gate(self, deployment: Deployment, spec: WorkloadSpec, replicas: Any) -> None:
        wanted = set(replicas)
        if not wanted:
            return
        deadline = time.monotonic() + self.settings.deploy_health_timeout_seconds
        health = await HealthGate.load(self.services.db, self.provider, spec.instance_id)
        async with httpclients.client(timeout=2) as client:

            async def answers(replica: ReplicaStatus) -> bool:
                return await _answers(client, replica.endpoints, spec)

            while True:
                await self._check(deployment)
                status = await self.provider.status(spec.instance_id)
                mine = {r.replica: r for r in status.replicas if r.generation == spec.generation}
                for index in wanted:
                    replica = mine.get(index)
                    if replica is not None and replica.state in ("exited", "dead"):
                        reason = "OOM-killed" if replica.oom_killed else f"exit code {replica.exit_code}"
                        await self._update(
                            deployment, step=f"gate replica {index}", event="health.failed", error=reason
                        )
                        raise GateFailed(f"new replica {index} exited ({reason})")
                ready = [i for i in wanted if i in mine and await health.passes(mine[i], answers)]
                if len(ready) == len(wanted):
                    await self._update(
                        deployment,
                        step=f"gate replicas {sorted(wanted)}",
                        event="health.passed",
                        replicas=sorted(wanted),
                    )
                    return
                if time.monotonic() > deadline:
                    why = health.explain(wanted - set(ready))
                    await self._update(deployment, step="gate", event="health.failed", error=why or "not ready in time")
                    raise GateFailed(
                        f"new replicas {sorted(wanted - set(ready))} not ready within "
                        f"{self.settings.deploy_health_timeout_seconds:g}s" + (f": {why}" if why else "")
                    )
                await anyio.sleep(POLL_SECONDS)

    async def _observe_canary(
        self, deployment: Deployment, spec: WorkloadSpec, weight: int, analysis: Analysis | None
    ) -> None:
        if analysis is not None:
            await self._analyse(deployment, spec, analysis, label=f"{weight}%", weight=weight, canary=True)
            return
        await self._step(deployment, f"observe canary for {self.settings.canary_observation_seconds:g}s")
        until = time.monotonic() + self.settings.canary_observation_seconds
        while time.monotonic() < until:
            await self._check(deployment)
            await self._canary_running(spec)
            await anyio.sleep(POLL_SECONDS)

    async def _canary_running(self, spec: WorkloadSpec) -> None:
        status = await self.provider.status(spec.instance_id)
        canary = [r for r in status.replicas if r.generation == spec.generation and r.replica == 0]
        if not canary or canary[0].state != "running":
            raise GateFailed("the canary stopped running during its observation period")

    async def _analyse(
        self,
        deployment: Deployment,
        spec: WorkloadSpec,
        analysis: Analysis,
        *,
        label: str,
        weight: int | None = None,
        canary: bool = False,
    ) -> None:
        """Observe the new generation's own traffic for the analysis window (then, while fewer than
        ``min_requests`` arrived, until they do or the progress deadline passes) and judge it; a
        failed judgement raises ``GateFailed`` after recording the measurement."""
        window = window_seconds(analysis, self.settings.canary_observation_seconds)
        await self._step(deployment, f"analyse {label} for {window:g}s")
        since = utc_now()
        # the sink stores what it heard every flush: wait one more so the window's end is counted
        until = time.monotonic() + window + self.settings.router_report_flush_seconds
        while True:
            if canary:
                await self._canary_running(spec)
            if time.monotonic() >= until:
                async with self.services.db.read() as session:
                    rows = await replica_rows(
                        session, instance_id=spec.instance_id, generation=spec.generation, since=since, until=utc_now()
                    )
                result = judge(analysis, measure(rows), weight=weight)
                out_of_time = utc_now() > deployment.deadline_at
                if result.outcome == "passed":
                    await self._update(
                        deployment,
                        step=describe(analysis, result),
                        event="deploy.analysis_passed",
                        result=result,
                    )
                    return
                if result.outcome == "failed" or out_of_time:
                    why = describe(analysis, result)
                    await self._update(
                        deployment, step=f"analysis {label}", event="deploy.analysis_failed", error=why, result=result
                    )
                    raise GateFailed(why)
            await self._check(deployment)
            await anyio.sleep(POLL_SECONDS if time.monotonic() < until else ANALYSIS_POLL_SECONDS)

    async def _check(self, deployment: Deployment) -> None:
        async with self.services.db.read() as session:
            current = await session.get(Deployment, deployment.id)
        if current is not None and current.cancel_requested:
            raise Cancelled
        if utc_now() > deployment.deadline_at:
            raise GateFailed("the progress deadline passed")

    async def _go_back(self, deployment: Deployment, old: WorkloadSpec | None, outcome: str, reason: str) -> None:
        log.warning("deploy_going_back", deployment=deployment.id, reason=reason)
        try:
            if old is not None:
                await self.provider.provision(old)
                await self.traffic.switch(deployment.instance_id, old.generation)
            else:
                await self.traffic.withdraw(deployment.instance_id, deployment.generation)
            await self.provider.remove_generation(deployment.instance_id, deployment.generation)
        except CtrlplaneError as exc:
            await self._finish(deployment, "failed", f"{reason}; going back failed too: {exc.message}", restore=True)
            return
        await self._finish(deployment, outcome, reason, restore=True)

    async def _finish(
        self,
        deployment: Deployment,
        state: str,
        error: str | None,
        *,
        current_release: str | None = None,
        restore: bool = False,
    ) -> None:
        async with self.services.db.write() as session, session.begin():
            row = await session.get(Deployment, deployment.id, with_for_update=True, populate_existing=True)
            instance = await session.get(Instance, deployment.instance_id, with_for_update=True)
            if row is None or instance is None:
                return
            row.state, row.error, row.finished_at, row.updated_at = state, error, utc_now(), utc_now()
            row.steps = [*row.steps, _step_record(f"end: {state}", error or "")]
            if current_release is not None:
                instance.current_release_id = current_release
            if restore:
                previous = await session.get(Release, row.previous_release_id) if row.previous_release_id else None
                if previous is not None:
                    _restore_keeping_scale(instance, previous)
                instance.generation = row.previous_generation
            instance.updated_at = utc_now()
            await append_event(
                session,
                tenant_id=row.tenant_id,
                instance_id=row.instance_id,
                type=f"deploy.{state}",
                data={"deployment_id": row.id, "error": error, "release_id": row.release_id},
            )
        await self.services.events.notify()
        log.info("deploy_finished", deployment=deployment.id, state=state, error=error)

    async def _step(self, deployment: Deployment, name: str) -> None:
        await self._update(deployment, step=name)

    async def _update(
        self,
        deployment: Deployment,
        *,
        step: str,
        state: str | None = None,
        event: str | None = None,
        error: str | None = None,
        result: AnalysisResult | None = None,
        **data: Any,
    ) -> None:
        if result is not None:
            data["analysis"] = as_record(result)
        async with self.services.db.write() as session, session.begin():
            row = await session.get(Deployment, deployment.id, with_for_update=True, populate_existing=True)
            if row is None:
                return
            if state is not None:
                row.state = deployment.state = state
            record = _step_record(step, error or "")
            if result is not None:
                record["analysis"] = data["analysis"]
            row.steps = [*row.steps, record]
            row.updated_at = utc_now()
            if event is not None:
                await append_event(
                    session,
                    tenant_id=row.tenant_id,
                    instance_id=row.instance_id,
                    type=event,
                    data={"deployment_id": row.id, "step": step, **({"error": error} if error else {}), **data},
                )
        await self.services.events.notify()


def _interrupted(deployment: Deployment) -> str:
    """Why a deploy found ``running`` on resume goes back: it was cut off after its last recorded step
    (the control plane restarted, or the operation was retried after an error or a lost lease)."""
    last = deployment.steps[-1]["name"] if deployment.steps else "deploy"
    return f"the deploy was interrupted after its step '{last}' (the control plane restarted or retried it)"


def _step_record(name: str, message: str) -> dict[str, Any]:
    now = utc_now().isoformat()
    return {"name": name, "state": "done", "started_at": now, "finished_at": now, "message": message}


async def _answers(client: httpx.AsyncClient, endpoints: Any, spec: WorkloadSpec) -> bool:
    tcp = [e for e in endpoints if e.protocol == "tcp"]
    if not spec.ports:
        return True
    if not tcp:
        return False
    try:
        await client.get(tcp[0].url + "/")
    except httpx.HTTPError:
        return False
    return True


def _restore_keeping_scale(instance: Instance, release: Release) -> None:
    """Going back after a deploy puts the previous release's image, env, labels and ports back but
    keeps the instance's resources and replicas: a scale accepted before the deploy (scales are
    refused while one runs) was not part of the deploy and is not undone with it."""
    scale = (instance.cpu_millis, instance.memory_mb, instance.replicas)
    restore_release(instance, release)
    instance.cpu_millis, instance.memory_mb, instance.replicas = scale


def _spec_of(
    release: Release,
    instance: Instance,
    generation: int,
    secrets: WorkloadSecrets,
    settings: Settings,
    config: RuntimeConfig,
) -> WorkloadSpec:
    restored = Instance(
        **{
            c: getattr(instance, c)
            for c in (
                "id",
                "tenant_id",
                "name",
                "pull_policy",
                "cpu_millis",
                "memory_mb",
                "replicas",
                "read_only_root_fs",
            )
        }
    )
    _restore_keeping_scale(restored, release)
    restored.current_release_id = release.id
    return spec_for(restored, settings=settings, generation=generation, secrets=secrets, config=config)
