"""A run's output for ``GET /v1/runs/{id}/logs``: from its container while it exists, from the
stored tail once it has ended; secret values redacted either way."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy import select

from ctrlplane.errors import CtrlplaneError
from ctrlplane.instances.models import Instance
from ctrlplane.provisioning.contract import RunProvider
from ctrlplane.runs import schemas
from ctrlplane.runs.executor import redactor
from ctrlplane.runs.models import Run
from ctrlplane.runs.service import ACTIVE, to_schema
from ctrlplane.secrets.service import for_release as secrets_for_release
from ctrlplane.telemetry.otlp import instance_token
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

WAIT_SECONDS = 0.25
HEARTBEAT_SECONDS = 10.0


async def _load(services: AppServices, run_id: str) -> tuple[Run, str] | None:
    async with services.db.read() as session:
        row = (
            await session.execute(
                select(Run, Instance.provider_name)
                .join(Instance, Instance.id == Run.instance_id)
                .where(Run.id == run_id)
            )
        ).first()
        if row is None:
            return None
        session.expunge(row[0])
        return row[0], row[1]


def _provider(services: AppServices, name: str) -> RunProvider | None:
    try:
        provider = services.providers.get(name)
    except CtrlplaneError:
        return None
    return provider if isinstance(provider, RunProvider) else None


def _stored(run: Run) -> list[schemas.RunLogLine]:
    stamp = run.finished_at or run.updated_at
    return [schemas.RunLogLine(timestamp=stamp, stream="stdout", message=m) for m in run.output.splitlines()]


async def read(services: AppServices, run: Run, *, tail: int) -> schemas.RunLogs:
    """The run's lines now: its container's while it runs, else the stored tail."""
    loaded = await _load(services, run.id)
    if loaded is None:
        return schemas.RunLogs(run_id=run.id, items=[])
    run, provider_name = loaded
    provider = _provider(services, provider_name)
    if run.state in ACTIVE and provider is not None:
        redact = redactor(
            await secrets_for_release(services, run.release_id),
            token=instance_token(services.settings, run.instance_id),
        )
        try:
            lines = [line async for line in provider.run_logs(run.instance_id, run.id, tail=tail)]
        except CtrlplaneError:
            lines = []
        if lines:
            return schemas.RunLogs(
                run_id=run.id,
                items=[schemas.RunLogLine(timestamp=ln.timestamp, stream=ln.stream, message=redact(ln.message))
                       for ln in lines],
            )  # fmt: skip
    return schemas.RunLogs(run_id=run.id, items=_stored(run)[-tail:])


async def follow(services: AppServices, run_id: str) -> AsyncIterator[tuple[str, Any]]:
    """("line", RunLogLine) as the command writes them, ("heartbeat", None) while quiet, and
    finally ("end", Run) once the run has ended. Waits for a pending run to start."""
    streamed = 0
    followed = False
    quiet_since = anyio.current_time()
    while True:
        loaded = await _load(services, run_id)
        if loaded is None:
            return
        run, provider_name = loaded
        if run.state not in ACTIVE:
            if streamed == 0:
                for line in _stored(run):
                    yield "line", line
            yield "end", to_schema(run)
            return
        provider = _provider(services, provider_name)
        if run.state == "running" and run.started_at is not None and provider is not None and not followed:
            followed = True
            redact = redactor(
                await secrets_for_release(services, run.release_id),
                token=instance_token(services.settings, run.instance_id),
            )
            lines = provider.run_logs(run.instance_id, run.id, follow=True)
            try:
                async for written in lines:
                    streamed += 1
                    yield (
                        "line",
                        schemas.RunLogLine(
                            timestamp=written.timestamp, stream=written.stream, message=redact(written.message)
                        ),
                    )
            except CtrlplaneError:
                pass
            finally:
                closer = getattr(lines, "aclose", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        await closer()
            continue
        if anyio.current_time() - quiet_since > HEARTBEAT_SECONDS:
            quiet_since = anyio.current_time()
            yield "heartbeat", utc_now()
        await services.events.wait(WAIT_SECONDS)
