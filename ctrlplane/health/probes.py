"""Running one health check against one replica, and what a check's target may name.

A target never names a host: ``http://localhost:8080/healthz`` and ``localhost:8080`` mean port
8080 *inside the instance*. The probe finds the replica's endpoint for that container port (the
provider's ``WorkloadStatus`` maps container ports to host ports) and connects to that host port on
127.0.0.1, and only when the provider published it on the loopback (or on every address); any other
host is refused when the check is created, and a redirect is never followed. A ``command`` runs
inside the replica through the provider's ``exec``, never on the control-plane host.

``runtime_probes`` turns an instance's checks into the probes a runtime that runs them itself
(Kubernetes) is given; see its docstring for which check becomes readiness and which liveness.
"""

from __future__ import annotations

import ipaddress
import math
import shlex
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
import httpx
import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane import httpclients
from ctrlplane.errors import CtrlplaneError, ProviderUnavailable
from ctrlplane.health.repository import HealthRepository
from ctrlplane.provisioning.contract import Probe, Provider, ReplicaStatus
from ctrlplane.redaction import redact

if TYPE_CHECKING:
    from ctrlplane.health.models import HealthCheck

LOOPBACK = "127.0.0.1"
ALLOWED_HOST = "localhost"
TCP_SETTLE_SECONDS = 0.25
"""After a TCP connect, how long an immediate close is waited for: a port publisher (Docker's
proxy) accepts the connection even when nothing listens inside and then closes it at once."""
MAX_MESSAGE = 500
CLOSED_AT_ONCE = "the connection was closed at once: nothing listens on the port"


class Target(msgspec.Struct, frozen=True):
    type: str
    port: int | None = None
    path: str = "/"
    host_header: str = ""
    argv: tuple[str, ...] = ()


class Outcome(msgspec.Struct, frozen=True):
    ok: bool
    latency_ms: float
    message: str


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} must be a number from 1 to 65535")
    return int(text)


def parse_target(type: str, target: str) -> Target:
    """The target of a check of ``type``; ValueError says what is wrong."""
    if any(ord(c) < 32 or ord(c) == 127 for c in target):
        raise ValueError("target must not contain control characters")
    if type == "command":
        try:
            argv = tuple(shlex.split(target))
        except ValueError as exc:
            raise ValueError(f"command is not valid shell-quoted words: {exc}") from None
        if not argv:
            raise ValueError("command must name a program")
        return Target(type=type, argv=argv)
    if type == "http":
        parts = urlsplit(target.strip())
        if parts.scheme != "http":
            raise ValueError("an http target looks like http://localhost:8080/healthz")
        if parts.username is not None or parts.password is not None:
            raise ValueError("an http target carries no credentials")
        host, _, port = parts.netloc.rpartition(":") if ":" in parts.netloc else (parts.netloc, "", "80")
        if host.lower() != ALLOWED_HOST:
            raise ValueError(f"target host must be localhost (a port of the instance itself), not {host or 'empty'!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Target(type=type, port=_port(port), path=path, host_header=f"{ALLOWED_HOST}:{port}")
    if type == "tcp":
        rest = target.strip().removeprefix("tcp://")
        host, _, port = rest.rpartition(":")
        if ":" in rest and host.lower() != ALLOWED_HOST:
            raise ValueError(f"target host must be localhost (a port of the instance itself), not {host or 'empty'!r}")
        return Target(type=type, port=_port(port))
    raise ValueError("type must be http, tcp or command")


READINESS_PREFERENCE = ("http", "command", "tcp")
LIVENESS_PREFERENCE = ("tcp", "command", "http")


def runtime_probes(checks: Sequence[HealthCheck]) -> tuple[Probe, ...]:
    """The probes for a runtime that runs checks itself, from the instance's enabled checks in the
    order given (oldest first). A container has one readiness and one liveness probe, so:

    * one check is both;
    * with several, **readiness** is the first ``http`` check (else ``command``, else ``tcp``): it
      tests the most of the application before traffic is let in; **liveness** is the first ``tcp``
      check (else ``command``, else ``http``): a replica is restarted only when it stops answering
      at all, not when a dependency makes its HTTP endpoint fail for a while.

    Timing follows the check: period = interval, timeout, failure threshold = retries (whole
    seconds, at least 1). The other checks still run in ctrlplane's scheduler and deploy gate."""
    usable = [check for check in checks if check.enabled]
    by_kind = {kind: next((c for c in usable if c.type == kind), None) for kind in READINESS_PREFERENCE}
    readiness = next((by_kind[k] for k in READINESS_PREFERENCE if by_kind[k] is not None), None)
    liveness = next((by_kind[k] for k in LIVENESS_PREFERENCE if by_kind[k] is not None), None)
    if readiness is None or liveness is None:
        return ()
    if readiness is liveness:
        return (_probe(readiness, "both"),)
    return (_probe(readiness, "readiness"), _probe(liveness, "liveness"))


async def runtime_probes_of(session: AsyncSession, instance_id: str) -> tuple[Probe, ...]:
    """``runtime_probes`` of the instance's checks, read now (for its workload spec: ``operations/spec.py``)."""
    return runtime_probes(await HealthRepository(session, None).oldest_first(instance_id))


def _probe(check: HealthCheck, use: str) -> Probe:
    target = parse_target(check.type, check.target)
    return msgspec.convert(
        {
            "kind": check.type,
            "port": target.port,
            "path": target.path,
            "command": target.argv,
            "use": use,
            "period_seconds": max(1, math.ceil(check.interval_seconds)),
            "timeout_seconds": max(1, math.ceil(check.timeout_seconds)),
            "failure_threshold": max(1, check.retries),
        },
        Probe,
    )


def _host_port(replica: ReplicaStatus, port: int) -> int | str:
    """The loopback host port publishing ``port`` of the replica, or why there is none."""
    for endpoint in replica.endpoints:
        if endpoint.container_port != port or endpoint.protocol != "tcp":
            continue
        try:
            address = ipaddress.ip_address(endpoint.host)
        except ValueError:
            return f"port {port} is published on {endpoint.host!r}, not on the loopback"
        if not (address.is_loopback or address.is_unspecified):
            return f"port {port} is published on {endpoint.host}, not on the loopback"
        return endpoint.host_port
    return f"port {port} is not published by replica {replica.replica}"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


async def _http(target: Target, host_port: int, timeout: float) -> tuple[bool, str]:
    url = f"http://{LOOPBACK}:{host_port}{target.path}"
    headers = {"Host": target.host_header, "User-Agent": "ctrlplane-health"}
    async with (
        httpclients.client(timeout=timeout, follow_redirects=False) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        return 200 <= response.status_code < 400, f"HTTP {response.status_code}"


async def _command(
    provider: Provider,
    instance_id: str,
    target: Target,
    replica: ReplicaStatus,
    timeout: float,
    secrets: Sequence[str],
) -> tuple[bool, str]:
    result = await provider.exec(
        instance_id, list(target.argv), timeout=timeout, generation=replica.generation, replica=replica.replica
    )
    output = _clip(redact(result.output, secrets))
    return result.exit_code == 0, f"exit {result.exit_code}" + (f": {output}" if output else "")


async def probe(
    provider: Provider,
    instance_id: str,
    target: Target,
    replica: ReplicaStatus,
    *,
    timeout: float,
    secrets: Sequence[str] = (),
) -> Outcome:
    """Run the check once against ``replica``. ``ProviderUnavailable`` propagates: an unreachable
    runtime says nothing about the application's health. Every message is redacted of ``secrets``
    (``redaction.py``) before it is clipped, so no prefix of a secret survives the cut."""
    started = time.monotonic()

    def outcome(ok: bool, message: str) -> Outcome:
        return Outcome(
            ok=ok, latency_ms=round((time.monotonic() - started) * 1000, 3), message=_clip(redact(message, secrets))
        )

    if replica.state != "running":
        return outcome(False, f"replica {replica.replica} is {replica.state}")
    try:
        with anyio.fail_after(timeout):
            if target.type == "command":
                ok, message = await _command(provider, instance_id, target, replica, timeout, secrets)
                return outcome(ok, message)
            host_port = _host_port(replica, target.port or 0)
            if isinstance(host_port, str):
                return outcome(False, host_port)
            if target.type == "http":
                ok, message = await _http(target, host_port, timeout)
                return outcome(ok, message)
            return await _tcp(host_port, timeout, started)
    except TimeoutError:
        return outcome(False, f"no answer within {timeout:g}s")
    except ProviderUnavailable:
        raise
    except CtrlplaneError as exc:
        return outcome(False, exc.message)
    except httpx.HTTPError as exc:
        return outcome(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    except OSError as exc:
        return outcome(False, exc.strerror or str(exc) or type(exc).__name__)


async def _tcp(host_port: int, timeout: float, started: float) -> Outcome:
    """A TCP probe whose latency is the connect time, not the settle wait after it."""
    stream = await anyio.connect_tcp(LOOPBACK, host_port)
    latency = round((time.monotonic() - started) * 1000, 3)
    async with stream:
        with anyio.move_on_after(min(TCP_SETTLE_SECONDS, max(timeout - latency / 1000, 0))):
            try:
                await stream.receive(1)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return Outcome(ok=False, latency_ms=latency, message=CLOSED_AT_ONCE)
    return Outcome(ok=True, latency_ms=latency, message="connected")


async def run_check(
    provider: Provider,
    instance_id: str,
    generation: int,
    target: Target,
    *,
    timeout: float,
    secrets: Sequence[str] = (),
) -> Outcome:
    """Run the check against every replica of the instance's ``generation`` at once: it passes
    when each of them passes. Latency is the slowest replica's. ``secrets`` (the instance's secret
    values and OTLP token) never appear in a message."""
    try:
        status = await provider.status(instance_id)
    except ProviderUnavailable:
        raise
    except CtrlplaneError as exc:
        message = redact(f"the provider could not observe the instance: {exc}", secrets)
        return Outcome(ok=False, latency_ms=0.0, message=_clip(message))
    replicas = [r for r in status.replicas if r.generation == generation]
    if not replicas:
        return Outcome(ok=False, latency_ms=0.0, message=f"no replica of generation {generation} exists")
    outcomes: dict[int, Outcome] = {}
    unavailable: list[ProviderUnavailable] = []

    async def one(replica: ReplicaStatus) -> None:
        try:
            outcomes[replica.replica] = await probe(
                provider, instance_id, target, replica, timeout=timeout, secrets=secrets
            )
        except ProviderUnavailable as exc:
            unavailable.append(exc)

    async with anyio.create_task_group() as group:
        for replica in replicas:
            group.start_soon(one, replica)
    if unavailable:
        raise unavailable[0]
    ordered = [outcomes[index] for index in sorted(outcomes)]
    message = (
        ordered[0].message
        if len(ordered) == 1
        else "; ".join(f"replica {index}: {outcomes[index].message}" for index in sorted(outcomes))
    )
    return Outcome(ok=all(o.ok for o in ordered), latency_ms=max(o.latency_ms for o in ordered), message=_clip(message))
