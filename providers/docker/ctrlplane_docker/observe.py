"""Reading the engine's answers (container inspect and stats documents) into the neutral Structs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from ctrlplane.provisioning.contract import (
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_REPLICA,
    LABEL_TENANT,
    Endpoint,
    Protocol_,
    ReplicaState,
    ReplicaStatus,
    ReplicaUsage,
    Usage,
    WorkloadStatus,
)

REPLICA_STATES: frozenset[str] = frozenset({"created", "running", "restarting", "exited", "paused", "dead", "removing"})
UNSPECIFIED_HOSTS = frozenset({"", "0.0.0.0", "::"})


def parse_time(value: str | None) -> datetime | None:
    """An engine timestamp (RFC 3339 with nanoseconds); Docker's zero time means "never"."""
    if not value or value.startswith("0001-01-01"):
        return None
    text = value.strip().replace("Z", "+00:00")
    main, _, rest = text.partition(".")
    if rest:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        # Python keeps microseconds; the engine reports nanoseconds.
        text = f"{main}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def label_int(labels: Mapping[str, str], key: str) -> int | None:
    try:
        return int(labels[key])
    except (KeyError, ValueError):
        return None


def _url(protocol: str, host: str, port: int) -> str:
    scheme = "udp" if protocol == "udp" else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def endpoints(attrs: Mapping[str, Any], replica: int, host_address: str) -> tuple[Endpoint, ...]:
    """The published ports of a running container, one Endpoint per container port."""
    ports: Mapping[str, Any] = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    found: list[Endpoint] = []
    for key, bindings in ports.items():
        if not bindings:
            continue
        port_text, _, protocol = key.partition("/")
        binding = bindings[0]
        host = binding.get("HostIp") or ""
        # An engine publishing on every address reports 0.0.0.0; loopback is the one address sure to work.
        if host in UNSPECIFIED_HOSTS:
            host = host_address if host_address not in UNSPECIFIED_HOSTS else "127.0.0.1"
        host_port = int(binding["HostPort"])
        found.append(
            Endpoint(
                container_port=int(port_text),
                protocol=cast(Protocol_, protocol if protocol in ("tcp", "udp") else "tcp"),
                host=host,
                host_port=host_port,
                url=_url(protocol, host, host_port),
                replica=replica,
            )
        )
    return tuple(sorted(found, key=lambda endpoint: (endpoint.container_port, endpoint.protocol)))


def replica_status(attrs: Mapping[str, Any], host_address: str) -> ReplicaStatus:
    """One replica from its container's inspect document."""
    labels: Mapping[str, str] = attrs["Config"].get("Labels") or {}
    state: Mapping[str, Any] = attrs.get("State") or {}
    status = str(state.get("Status", "dead"))
    replica = label_int(labels, LABEL_REPLICA) or 0
    running = status == "running"
    exit_code = state.get("ExitCode")
    return ReplicaStatus(
        replica=replica,
        generation=label_int(labels, LABEL_GENERATION) or 0,
        name=str(attrs.get("Name", "")).lstrip("/"),
        state=cast(ReplicaState, status if status in REPLICA_STATES else "dead"),
        exit_code=None if running or status == "created" or exit_code is None else int(exit_code),
        oom_killed=bool(state.get("OOMKilled", False)),
        error=state.get("Error") or None,
        restart_count=int(attrs.get("RestartCount") or 0),
        started_at=parse_time(state.get("StartedAt")),
        finished_at=None if running else parse_time(state.get("FinishedAt")),
        endpoints=endpoints(attrs, replica, host_address) if running else (),
    )


SIGKILL_EXIT_CODE = 137
OOM_SETTLE_SECONDS = 1.0


def oom_settle_seconds(attrs: Mapping[str, Any], now: datetime) -> float:
    """How much longer a container's OOM flag may still change: for one killed by SIGKILL (exit
    code 137) without the flag, ``OOM_SETTLE_SECONDS`` from its exit; otherwise 0. Docker sets the
    flag from containerd's OOM event, which it can handle just after the exit, so an inspect in
    that moment tells a kill by the kernel's OOM killer from any other SIGKILL only a moment later.
    The exit time is the engine's clock: an exit that seems to lie ahead (a remote engine's clock
    running ahead of ours) counts as just now, so the wait never exceeds ``OOM_SETTLE_SECONDS``."""
    state: Mapping[str, Any] = attrs.get("State") or {}
    if state.get("Status") != "exited" or state.get("ExitCode") != SIGKILL_EXIT_CODE or state.get("OOMKilled"):
        return 0.0
    finished = parse_time(state.get("FinishedAt"))
    if finished is None:
        return 0.0
    return max(0.0, OOM_SETTLE_SECONDS - max(0.0, (now - finished).total_seconds()))


EXIT_CODE = re.compile(r"^Exited \((-?\d+)\)")


def listed_endpoints(summary: Mapping[str, Any], replica: int, host_address: str) -> tuple[Endpoint, ...]:
    """The published ports of a running container as the container list shows them (the first
    binding of each container port, as ``endpoints`` takes from inspect)."""
    found: dict[tuple[int, str], Endpoint] = {}
    for port in summary.get("Ports") or []:
        if not port.get("PublicPort"):
            continue
        protocol = str(port.get("Type") or "tcp")
        key = (int(port["PrivatePort"]), protocol)
        if key in found:
            continue
        host = str(port.get("IP") or "")
        if host in UNSPECIFIED_HOSTS:
            host = host_address if host_address not in UNSPECIFIED_HOSTS else "127.0.0.1"
        host_port = int(port["PublicPort"])
        found[key] = Endpoint(
            container_port=key[0],
            protocol=cast(Protocol_, protocol if protocol in ("tcp", "udp") else "tcp"),
            host=host,
            host_port=host_port,
            url=_url(protocol, host, host_port),
            replica=replica,
        )
    return tuple(sorted(found.values(), key=lambda endpoint: (endpoint.container_port, endpoint.protocol)))


def listed_replica_status(summary: Mapping[str, Any], host_address: str) -> ReplicaStatus:
    """One replica from the container list (no inspect): state, exit code (parsed from the list's
    status text), endpoints; no OOM flag, error or timestamps."""
    labels: Mapping[str, str] = summary.get("Labels") or {}
    status = str(summary.get("State", "dead"))
    replica = label_int(labels, LABEL_REPLICA) or 0
    running = status == "running"
    exited = None if running or status == "created" else EXIT_CODE.match(str(summary.get("Status") or ""))
    names = summary.get("Names") or [summary.get("Id", "")]
    return ReplicaStatus(
        replica=replica,
        generation=label_int(labels, LABEL_GENERATION) or 0,
        name=str(names[0]).lstrip("/"),
        state=cast(ReplicaState, status if status in REPLICA_STATES else "dead"),
        exit_code=int(exited[1]) if exited else None,
        endpoints=listed_endpoints(summary, replica, host_address) if running else (),
    )


def failure(replica: ReplicaStatus) -> str | None:
    """Why a replica that does not run has failed, or None when it simply is not running."""
    who = f"replica {replica.replica} (generation {replica.generation})"
    if replica.oom_killed:
        return f"{who} was OOM-killed (exit code {replica.exit_code})"
    if replica.state == "dead":
        return f"{who} is dead: {replica.error or 'the engine could not stop or remove it'}"
    if replica.state in ("created", "exited") and replica.error:
        return f"{who} failed to start: {replica.error}"
    if replica.state == "exited" and replica.exit_code:
        return f"{who} exited with code {replica.exit_code}"
    return None


def workload_status(
    instance_id: str, replicas: Sequence[ReplicaStatus], *, stopped_by_ctrlplane: bool
) -> WorkloadStatus:
    """The contract's rule: all running → running; some → partial; none → stopped, or failed when a
    replica exited non-zero, was OOM-killed or could not start; no containers → missing.

    Replicas that ctrlplane itself stopped exit non-zero too (SIGTERM, SIGKILL after the grace
    period), so while the instance carries the stopped marker their exit codes are not failures.
    """
    ordered = tuple(sorted(replicas, key=lambda r: (r.generation, r.replica)))
    if not ordered:
        return WorkloadStatus(instance_id=instance_id, state="missing", message="no containers")
    total = len(ordered)
    running = sum(1 for replica in ordered if replica.state == "running")
    failures = [] if stopped_by_ctrlplane else [f for r in ordered if r.state != "running" and (f := failure(r))]
    if running == total:
        return WorkloadStatus(
            instance_id=instance_id, state="running", message=f"{running}/{total} running", replicas=ordered
        )
    if running:
        message = "; ".join([f"{running}/{total} running", *failures])
        return WorkloadStatus(instance_id=instance_id, state="partial", message=message, replicas=ordered)
    if failures:
        return WorkloadStatus(instance_id=instance_id, state="failed", message="; ".join(failures), replicas=ordered)
    message = "stopped" if stopped_by_ctrlplane else f"0/{total} running"
    return WorkloadStatus(instance_id=instance_id, state="stopped", message=message, replicas=ordered)


def cpu_percent(stats: Mapping[str, Any]) -> float:
    """CPU use as ``docker stats`` computes it: the container's share of the host's CPU time between
    two samples, times the number of online CPUs."""
    cpu = stats.get("cpu_stats") or {}
    previous = stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (previous.get("cpu_usage") or {}).get(
        "total_usage", 0
    )
    system_delta = (cpu.get("system_cpu_usage") or 0) - (previous.get("system_cpu_usage") or 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ()) or 1
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return float(cpu_delta) / float(system_delta) * online * 100.0


def memory_used(stats: Mapping[str, Any]) -> int:
    """Memory in use the way ``docker stats`` shows it: usage less the reclaimable page cache."""
    memory = stats.get("memory_stats") or {}
    usage = int(memory.get("usage") or 0)
    detail = memory.get("stats") or {}
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0)) or 0
    return usage - int(inactive) if 0 < inactive < usage else usage


def network_bytes(stats: Mapping[str, Any]) -> tuple[int, int]:
    networks: Mapping[str, Any] = stats.get("networks") or {}
    rx = sum(int(net.get("rx_bytes") or 0) for net in networks.values())
    tx = sum(int(net.get("tx_bytes") or 0) for net in networks.values())
    return rx, tx


def usage(samples: Iterable[Mapping[str, Any]], *, restarts: int) -> Usage:
    """Usage summed over one stats sample per running replica."""
    total_cpu, used, limit, rx, tx = 0.0, 0, 0, 0, 0
    for sample in samples:
        total_cpu += cpu_percent(sample)
        used += memory_used(sample)
        limit += int((sample.get("memory_stats") or {}).get("limit") or 0)
        sample_rx, sample_tx = network_bytes(sample)
        rx, tx = rx + sample_rx, tx + sample_tx
    return Usage(
        cpu_percent=round(total_cpu, 3),
        memory_used_bytes=used,
        memory_limit_bytes=limit,
        network_rx_bytes=rx,
        network_tx_bytes=tx,
        restarts=restarts,
    )


def replica_usage(status: ReplicaStatus, sample: Mapping[str, Any] | None, *, restarts: int) -> ReplicaUsage:
    """One replica's usage from its stats sample; no sample (the replica does not run): no usage."""
    return ReplicaUsage(
        replica=status.replica,
        generation=status.generation,
        name=status.name,
        state=status.state,
        usage=None if sample is None else usage([sample], restarts=restarts),
    )


def inventory_ids(labels: Mapping[str, str]) -> tuple[str | None, str | None, int | None, int | None]:
    """(instance, tenant, generation, replica) as an object's labels name them."""
    return (
        labels.get(LABEL_INSTANCE),
        labels.get(LABEL_TENANT),
        label_int(labels, LABEL_GENERATION),
        label_int(labels, LABEL_REPLICA),
    )
