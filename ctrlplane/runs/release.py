"""The release phase: a deployment's release command, run once before any new replica starts.

``DeploymentService`` plans it (``service.plan_release``) in the deploy's transaction when the
release has a ``release_command``: always for a deploy, for a rollback only with
``run_release: true``. The deploy engine calls ``run_release_phase`` right after
``deploy.started``: the command runs in a one-shot container of the **new** release (its image,
env, secrets and files, the tenant's network) while the old replicas keep serving. Steps and
events: ``release phase`` (``deploy.release_started`` with the run's ID, which the CLI follows),
then ``deploy.release_succeeded``, or ``deploy.release_failed`` with the exit code and the last
lines of output. A failure (non-zero exit, timeout, crash, provider error) ends the deployment
``failed`` before any replica was replaced; a cancel or the deadline ends it ``cancelled`` /
``failed`` the same way.

A control plane killed during the release phase leaves the deployment ``running``; when its
operation is taken over, ``abandon_release_phase`` kills the release container and marks the run
failed, and the deployment ends ``failed`` (the command is not rerun: it may have half-applied a
migration, which a person should look at).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy import select

from ctrlplane.deployments.models import Deployment
from ctrlplane.provisioning.contract import Provider, RunProvider, WorkloadSpec
from ctrlplane.runs.executor import RunExecutor
from ctrlplane.runs.models import Run
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

Step = Callable[..., Awaitable[None]]


class ReleaseOutcome(msgspec.Struct, frozen=True):
    """Why the deployment ends without replacing anything: ``state`` is the deployment's end state."""

    state: str
    reason: str


async def _release_run(services: AppServices, deployment_id: str) -> Run | None:
    async with services.db.read() as session:
        run = (
            (
                await session.execute(
                    select(Run).where(Run.deployment_id == deployment_id, Run.kind == "release").order_by(Run.id.desc())
                )
            )
            .scalars()
            .first()
        )
        if run is not None:
            session.expunge(run)
        return run


async def run_release_phase(
    services: AppServices, provider: Provider, deployment: Deployment, new: WorkloadSpec, *, step: Step
) -> ReleaseOutcome | None:
    """Run the deployment's release phase, if it has one; None when the strategy may proceed."""
    run = await _release_run(services, deployment.id)
    if run is None or run.state == "succeeded":
        return None

    async def stop_when() -> str | None:
        async with services.db.read() as session:
            cancel = (
                await session.execute(select(Deployment.cancel_requested).where(Deployment.id == deployment.id))
            ).scalar_one_or_none()
        if cancel:
            return "cancelled on request"
        if utc_now() > deployment.deadline_at:
            return "the progress deadline passed"
        return None

    await step(deployment, step=f"release phase: {' '.join(run.command)}"[:200], event="deploy.release_started",
               run_id=run.id, release_id=new.release_id)  # fmt: skip
    final = await RunExecutor(services).execute(run, provider, stop_when=stop_when)
    if final.state == "succeeded":
        await step(deployment, step="release phase succeeded", event="deploy.release_succeeded", run_id=run.id,
                   exit_code=0)  # fmt: skip
        return None
    cancelled = final.state == "cancelled"
    reason = final.error or final.state
    message = f"release phase {'was cancelled' if cancelled else 'failed'}: {reason}"
    data: dict[str, Any] = {"run_id": run.id, "exit_code": final.exit_code, "output": final.output}
    await step(deployment, step="release phase failed", event="deploy.release_failed",
               error=_with_output(message, final.output), **data)  # fmt: skip
    if cancelled:
        return ReleaseOutcome("cancelled" if reason == "cancelled on request" else "failed", message)
    return ReleaseOutcome("failed", message)


async def abandon_release_phase(services: AppServices, provider: Provider, deployment: Deployment) -> str | None:
    """After a crash: kill an unfinished release phase and mark it failed; its reason, or None when
    the deployment had none unfinished (the crash came later, during the strategy)."""
    run = await _release_run(services, deployment.id)
    if run is None or run.state not in ("pending", "running"):
        return None
    if isinstance(provider, RunProvider):
        await RunExecutor(services)._safe_remove(provider, run)
    reason = "the control plane restarted during the release phase; it was stopped and not rerun"
    await RunExecutor(services)._finish(run, "failed", None, reason)
    return reason


def _with_output(message: str, output: str) -> str:
    last = output.splitlines()[-10:]
    return message + ("\n" + "\n".join(last) if last else "")
