"""An in-memory provider for unit and API tests: the whole contract, deterministic, no I/O.

It behaves observably like the Docker provider: replicas named ``cp-{instance}-g{generation}-r{replica}``
with Docker's states, endpoints on 127.0.0.1 with fake host ports (a new one at every start, as an
engine may), one network per tenant that goes with the tenant's last replica, generations side by
side, "stopped" told from "failed" the same way. Helpers simulate what happens to a runtime from
outside: ``crash``, ``remove_container``, ``emit_log``, ``set_available``, ``fail_next``,
``missing_images``. Never registered as a plugin, so no server can load it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import anyio

from ctrlplane.provisioning.contract import (
    Endpoint,
    ExecResult,
    InventoryItem,
    LogLine,
    Observation,
    ProviderHealth,
    ReplicaState,
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
from ctrlplane.provisioning.errors import ImageNotFound, ProviderError, ProviderUnavailable, WorkloadNotFound

HOST = "127.0.0.1"
FIRST_HOST_PORT = 40000
MIB = 1024 * 1024
STOP_EXIT_CODE = 143
"""What a replica stopped by ``stop`` exits with, as an application dying of SIGTERM does."""


class FakeClock:
    """Time that moves one second per reading, so every event has a distinct, predictable time."""

    def __init__(self, start: datetime = datetime(2025, 1, 1, tzinfo=UTC)) -> None:
        self._now = start

    def __call__(self) -> datetime:
        self._now += timedelta(seconds=1)
        return self._now


@dataclass
class FakeReplica:
    """One fake container; tests may read it (``FakeProvider.replicas``) to check what ran."""

    spec: WorkloadSpec
    generation: int
    replica: int
    resources: Resources
    state: ReplicaState = "created"
    exit_code: int | None = None
    oom_killed: bool = False
    restart_count: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    host_ports: dict[tuple[int, str], int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"cp-{self.spec.instance_id}-g{self.generation}-r{self.replica}"

    @property
    def tenant_id(self) -> str:
        return self.spec.tenant_id

    @property
    def app_env(self) -> dict[str, str]:
        """The env the instance was given, without the OTEL_* variables ctrlplane adds."""
        return {k: v for k, v in self.spec.env.items() if not k.startswith("OTEL_")}


@dataclass
class FakeRun:
    spec: RunSpec
    started_at: datetime
    state: Literal["running", "exited"] = "running"
    exit_code: int | None = None
    finished_at: datetime | None = None
    output: str = ""


class FakeProvider:
    name = "fake"

    def __init__(self, *, available: bool = True, clock: Callable[[], datetime] | None = None) -> None:
        self.available = available
        self.closed = False
        self.clock = clock or FakeClock()
        self.missing_images: set[str] = set()
        """Images the fake engine lacks and cannot pull; every other image is present."""
        self.exec_handler: Callable[[FakeReplica, list[str]], ExecResult | Awaitable[ExecResult]] | None = None
        """Answers ``exec`` instead of the built-in ``echo``/``true``/``false``/``sh -c 'exit N'``
        (it may be a coroutine function, to simulate a command that takes time)."""
        self.calls: list[tuple[str, str | None]] = []
        """Every contract call as (method, instance_id), in order."""
        self._replicas: dict[str, dict[tuple[int, int], FakeReplica]] = {}
        self._networks: set[str] = set()
        self._stopped: set[str] = set()
        self._logs: dict[str, list[LogLine]] = {}
        self._failures: dict[str, list[Exception]] = {}
        self._log_changed: anyio.Event | None = None
        self._next_port = FIRST_HOST_PORT
        self.runs: dict[str, FakeRun] = {}
        """One-shot runs by run ID: ``echo``/``true``/``false``/``env``/``sh -c 'exit N'`` exit at once,
        anything else (``sleep 60``) runs until ``finish_run`` or ``remove_run``."""

    # -- simulation helpers ----------------------------------------------------------------------

    def set_available(self, available: bool) -> None:
        """While unavailable, every call but ``ping`` raises ProviderUnavailable."""
        self.available = available

    def fail_next(self, method: str, error: Exception) -> None:
        """Make the next call of ``method`` (e.g. ``"deploy"``) raise ``error``."""
        self._failures.setdefault(method, []).append(error)

    def crash(
        self,
        instance_id: str,
        replica: int,
        exit_code: int | None = None,
        oom: bool = False,
        generation: int | None = None,
    ) -> None:
        """The replica's process dies by itself: exit code 1, or 137 (SIGKILL) when OOM-killed."""
        target = self._find(instance_id, replica, generation)
        target.state = "exited"
        target.exit_code = exit_code if exit_code is not None else 137 if oom else 1
        target.oom_killed = oom
        target.finished_at = self.clock()
        target.host_ports = {}
        self._notify()

    def remove_container(self, instance_id: str, replica: int, generation: int | None = None) -> None:
        """Someone removed the replica's container behind ctrlplane's back."""
        target = self._find(instance_id, replica, generation)
        del self._replicas[instance_id][(target.generation, target.replica)]
        self._notify()

    def emit_log(
        self, instance_id: str, message: str, replica: int = 0, stream: Literal["stdout", "stderr"] = "stdout"
    ) -> None:
        """The replica's application writes a line."""
        self._find(instance_id, replica, None)
        line = LogLine(timestamp=self.clock(), replica=replica, stream=stream, message=message)
        self._logs.setdefault(instance_id, []).append(line)
        self._notify()

    def replicas(self, instance_id: str) -> list[FakeReplica]:
        """The instance's fake containers, oldest generation first."""
        return [self._replicas.get(instance_id, {})[key] for key in sorted(self._replicas.get(instance_id, {}))]

    @property
    def networks(self) -> set[str]:
        """Tenant IDs that have a network."""
        return set(self._networks)

    # -- internals -------------------------------------------------------------------------------

    def _enter(self, method: str, instance_id: str | None) -> None:
        self.calls.append((method, instance_id))
        if not self.available:
            raise ProviderUnavailable("fake provider is down", details={"provider": self.name})
        if queued := self._failures.get(method):
            raise queued.pop(0)

    def _notify(self) -> None:
        if self._log_changed is not None:
            self._log_changed.set()
            self._log_changed = None

    def _find(self, instance_id: str, replica: int, generation: int | None) -> FakeReplica:
        matches = [r for r in self.replicas(instance_id) if r.replica == replica]
        if generation is not None:
            matches = [r for r in matches if r.generation == generation]
        if not matches:
            raise WorkloadNotFound(f"instance {instance_id} has no replica {replica}")
        return matches[-1]

    def _required(self, instance_id: str) -> list[FakeReplica]:
        found = self.replicas(instance_id)
        if not found:
            raise WorkloadNotFound(
                f"instance {instance_id} has no containers on the fake provider", details={"instance_id": instance_id}
            )
        return found

    def _ensure_image(self, spec: WorkloadSpec) -> None:
        if spec.image not in self.missing_images:
            return
        if spec.pull_policy == "Never":
            raise ImageNotFound(f"image {spec.image!r} is not on the fake engine and its pull policy is Never")
        raise ImageNotFound(f"image {spec.image!r} is not on the fake engine and pulling it failed: no registry")

    def _start(self, replica: FakeReplica) -> None:
        if replica.state == "running":
            return
        replica.state = "running"
        replica.exit_code = None
        replica.oom_killed = False
        replica.started_at = self.clock()
        replica.finished_at = None
        replica.host_ports = {}
        for port in replica.spec.ports:
            replica.host_ports[(port.container_port, port.protocol)] = self._next_port
            self._next_port += 1

    def _stop(self, replica: FakeReplica) -> None:
        if replica.state != "running":
            return
        replica.state = "exited"
        replica.exit_code = STOP_EXIT_CODE
        replica.finished_at = self.clock()
        replica.host_ports = {}

    def _remove(self, replica: FakeReplica) -> None:
        self._replicas.get(replica.spec.instance_id, {}).pop((replica.generation, replica.replica), None)
        if not any(r.tenant_id == replica.tenant_id for group in self._replicas.values() for r in group.values()):
            self._networks.discard(replica.tenant_id)

    def _ensure(
        self, spec: WorkloadSpec, generation: int, indexes: Iterable[int], *, start_new: bool, start_existing: bool
    ) -> list[FakeReplica]:
        group = self._replicas.setdefault(spec.instance_id, {})
        self._networks.add(spec.tenant_id)
        ensured: list[FakeReplica] = []
        for index in indexes:
            existing = group.get((generation, index))
            if existing is None:
                existing = group[(generation, index)] = FakeReplica(spec, generation, index, spec.resources)
                start = start_new
            else:
                start = start_existing
            if start:
                self._start(existing)
            ensured.append(existing)
        return ensured

    def _replica_status(self, replica: FakeReplica) -> ReplicaStatus:
        endpoints = tuple(
            Endpoint(
                container_port=port,
                protocol="udp" if protocol == "udp" else "tcp",
                host=HOST,
                host_port=host_port,
                url=f"{'udp' if protocol == 'udp' else 'http'}://{HOST}:{host_port}",
                replica=replica.replica,
            )
            for (port, protocol), host_port in sorted(replica.host_ports.items())
        )
        return ReplicaStatus(
            replica=replica.replica,
            generation=replica.generation,
            name=replica.name,
            state=replica.state,
            exit_code=replica.exit_code,
            oom_killed=replica.oom_killed,
            restart_count=replica.restart_count,
            started_at=replica.started_at,
            finished_at=replica.finished_at,
            endpoints=endpoints if replica.state == "running" else (),
        )

    def _status(self, instance_id: str) -> WorkloadStatus:
        replicas = tuple(self._replica_status(r) for r in self.replicas(instance_id))
        if not replicas:
            return WorkloadStatus(instance_id=instance_id, state="missing", message="no containers")
        total = len(replicas)
        running = sum(1 for r in replicas if r.state == "running")
        stopped = instance_id in self._stopped
        failures: list[str] = []
        for r in replicas:
            if stopped or r.state == "running":
                continue
            who = f"replica {r.replica} (generation {r.generation})"
            if r.oom_killed:
                failures.append(f"{who} was OOM-killed (exit code {r.exit_code})")
            elif r.state == "exited" and r.exit_code:
                failures.append(f"{who} exited with code {r.exit_code}")
        if running == total:
            return WorkloadStatus(
                instance_id=instance_id, state="running", message=f"{running}/{total} running", replicas=replicas
            )
        if running:
            message = "; ".join([f"{running}/{total} running", *failures])
            return WorkloadStatus(instance_id=instance_id, state="partial", message=message, replicas=replicas)
        if failures:
            return WorkloadStatus(
                instance_id=instance_id, state="failed", message="; ".join(failures), replicas=replicas
            )
        message = "stopped" if stopped else f"0/{total} running"
        return WorkloadStatus(instance_id=instance_id, state="stopped", message=message, replicas=replicas)

    # -- the contract ----------------------------------------------------------------------------

    async def ping(self) -> ProviderHealth:
        return ProviderHealth(self.available, "fake provider" if self.available else "fake provider is down")

    async def provision(self, spec: WorkloadSpec) -> WorkloadStatus:
        self._enter("provision", spec.instance_id)
        self._ensure_image(spec)
        self._ensure(spec, spec.generation, range(spec.replicas), start_new=True, start_existing=True)
        self._stopped.discard(spec.instance_id)
        return self._status(spec.instance_id)

    async def deprovision(self, instance_id: str) -> None:
        self._enter("deprovision", instance_id)
        for run_id in [r for r, run in self.runs.items() if run.spec.workload.instance_id == instance_id]:
            del self.runs[run_id]
        for replica in self.replicas(instance_id):
            self._remove(replica)
        self._replicas.pop(instance_id, None)
        self._stopped.discard(instance_id)
        self._logs.pop(instance_id, None)
        self._notify()

    async def kill(self, instance_id: str) -> None:
        self._enter("kill", instance_id)

    async def start(self, instance_id: str) -> WorkloadStatus:
        self._enter("start", instance_id)
        for replica in self._required(instance_id):
            self._start(replica)
        self._stopped.discard(instance_id)
        return self._status(instance_id)

    async def stop(self, instance_id: str) -> WorkloadStatus:
        self._enter("stop", instance_id)
        replicas = self._required(instance_id)
        self._stopped.add(instance_id)
        for replica in replicas:
            self._stop(replica)
        self._notify()
        return self._status(instance_id)

    async def restart(self, instance_id: str, replicas: tuple[int, ...] | None = None) -> WorkloadStatus:
        self._enter("restart", instance_id)
        found = self._required(instance_id)
        chosen = found if replicas is None else [r for r in found if r.replica in set(replicas)]
        if not chosen:
            raise WorkloadNotFound(f"instance {instance_id} has no replica {', '.join(map(str, replicas or ()))}")
        for replica in chosen:
            self._stop(replica)
            self._start(replica)
        if len(chosen) == len(found):
            self._stopped.discard(instance_id)
        return self._status(instance_id)

    async def scale(self, spec: WorkloadSpec) -> WorkloadStatus:
        self._enter("scale", spec.instance_id)
        found = self._required(spec.instance_id)
        generation = max(r.generation for r in found)
        for replica in found:
            if replica.generation == generation and replica.replica >= spec.replicas:
                self._remove(replica)
        for replica in self.replicas(spec.instance_id):
            replica.resources = spec.resources
        if sum(1 for r in self.replicas(spec.instance_id) if r.generation == generation) < spec.replicas:
            self._ensure_image(spec)
        running = spec.instance_id not in self._stopped
        self._ensure(spec, generation, range(spec.replicas), start_new=running, start_existing=False)
        return self._status(spec.instance_id)

    async def deploy(self, spec: WorkloadSpec, strategy: Strategy) -> WorkloadStatus:
        self._enter("deploy", spec.instance_id)
        self._ensure_image(spec)
        old = [r for r in self.replicas(spec.instance_id) if r.generation != spec.generation]
        surplus = [
            r for r in self.replicas(spec.instance_id) if r.generation == spec.generation and r.replica >= spec.replicas
        ]
        if strategy == "rolling":
            for index in range(spec.replicas):
                self._ensure(spec, spec.generation, [index], start_new=True, start_existing=True)
                for replica in old:
                    if replica.replica == index:
                        self._remove(replica)
        else:
            if strategy == "recreate":
                for replica in old:
                    self._remove(replica)
            self._ensure(spec, spec.generation, range(spec.replicas), start_new=True, start_existing=True)
        for replica in [*old, *surplus]:
            self._remove(replica)
        self._stopped.discard(spec.instance_id)
        self._notify()
        return self._status(spec.instance_id)

    async def remove_generation(
        self, instance_id: str, generation: int, replicas: tuple[int, ...] | None = None
    ) -> None:
        self._enter("remove_generation", instance_id)
        for replica in self.replicas(instance_id):
            if replica.generation == generation and (replicas is None or replica.replica in replicas):
                self._remove(replica)
        self._notify()

    async def status(self, instance_id: str) -> WorkloadStatus:
        self._enter("status", instance_id)
        return self._status(instance_id)

    def logs(
        self, instance_id: str, *, tail: int | None = None, since: datetime | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        return self._read_logs(instance_id, tail=tail, since=since, follow=follow)

    async def _read_logs(
        self, instance_id: str, *, tail: int | None, since: datetime | None, follow: bool
    ) -> AsyncIterator[LogLine]:
        self._enter("logs", instance_id)
        self._required(instance_id)
        written = self._logs.get(instance_id, [])
        seen = len(written)
        lines = [line for line in written if since is None or line.timestamp >= since]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        for line in lines:
            yield line
        if not follow:
            return
        while True:
            current = self._logs.get(instance_id, [])
            for line in current[seen:]:
                yield line
            seen = len(current)
            # Like an engine's log stream, a follow ends once no replica runs any more.
            if not any(r.state == "running" for r in self.replicas(instance_id)):
                return
            if self._log_changed is None:
                self._log_changed = anyio.Event()
            await self._log_changed.wait()

    async def usage(self, instance_id: str) -> Usage:
        self._enter("usage", instance_id)
        found = self._required(instance_id)
        running = [r for r in found if r.state == "running"]
        return Usage(
            cpu_percent=1.0 * len(running),
            memory_used_bytes=8 * MIB * len(running),
            memory_limit_bytes=sum(r.resources.memory_mb * MIB for r in running),
            network_rx_bytes=1000 * len(running),
            network_tx_bytes=500 * len(running),
            restarts=sum(r.restart_count for r in found),
        )

    async def replica_usage(self, instance_id: str) -> list[ReplicaUsage]:
        self._enter("replica_usage", instance_id)
        return [
            ReplicaUsage(
                replica=r.replica,
                generation=r.generation,
                name=r.name,
                state=r.state,
                usage=Usage(
                    cpu_percent=1.0,
                    memory_used_bytes=8 * MIB,
                    memory_limit_bytes=r.resources.memory_mb * MIB,
                    network_rx_bytes=1000,
                    network_tx_bytes=500,
                    restarts=r.restart_count,
                )
                if r.state == "running"
                else None,
            )
            for r in self._required(instance_id)
        ]

    async def exec(
        self,
        instance_id: str,
        command: list[str],
        *,
        timeout: float = 10.0,
        generation: int | None = None,
        replica: int | None = None,
    ) -> ExecResult:
        self._enter("exec", instance_id)
        if not command:
            raise ProviderError("exec needs a command")
        running = [
            r
            for r in self._required(instance_id)
            if r.state == "running"
            and (generation is None or r.generation == generation)
            and (replica is None or r.replica == replica)
        ]
        if not running:
            raise WorkloadNotFound(f"instance {instance_id} has no running replica to run a command in")
        target = min(running, key=lambda r: (-r.generation, r.replica))
        if self.exec_handler is not None:
            answer = self.exec_handler(target, list(command))
            return await answer if inspect.isawaitable(answer) else answer
        match command:
            case ["echo", *words]:
                return ExecResult(exit_code=0, output=" ".join(words) + "\n")
            case ["env"]:
                return ExecResult(exit_code=0, output="".join(f"{k}={v}\n" for k, v in target.spec.env.items()))
            case ["true"]:
                return ExecResult(exit_code=0, output="")
            case ["false"]:
                return ExecResult(exit_code=1, output="")
            case ["sh", "-c", script] if exit_match := re.fullmatch(r"exit (\d+)", script.strip()):
                return ExecResult(exit_code=int(exit_match[1]), output="")
            case _:
                return ExecResult(exit_code=127, output=f"{command[0]}: not found\n")

    # -- one-shot runs ---------------------------------------------------------------------------

    def finish_run(self, run_id: str, exit_code: int, output: str = "") -> None:
        """The run's command ends by itself with ``exit_code`` after writing ``output``."""
        run = self.runs[run_id]
        run.output += output
        run.state, run.exit_code, run.finished_at = "exited", exit_code, self.clock()
        self._notify()

    async def start_run(self, spec: RunSpec) -> RunStatus:
        self._enter("start_run", spec.workload.instance_id)
        self._ensure_image(spec.workload)
        if not spec.command:
            raise ProviderError("a run needs a command")
        run = self.runs.get(spec.run_id)
        if run is None:
            run = self.runs[spec.run_id] = FakeRun(spec=spec, started_at=self.clock())
            self._networks.add(spec.workload.tenant_id)
            match list(spec.command):
                case ["echo", *words]:
                    self.finish_run(spec.run_id, 0, " ".join(words) + "\n")
                case ["env"]:
                    self.finish_run(spec.run_id, 0, "".join(f"{k}={v}\n" for k, v in spec.workload.env.items()))
                case ["true"]:
                    self.finish_run(spec.run_id, 0)
                case ["false"]:
                    self.finish_run(spec.run_id, 1)
                case ["sh", "-c", script] if exit_match := re.fullmatch(r"exit (\d+)", script.strip()):
                    self.finish_run(spec.run_id, int(exit_match[1]))
        return self._run_status(spec.run_id)

    def _run_status(self, run_id: str) -> RunStatus:
        run = self.runs.get(run_id)
        if run is None:
            return RunStatus(run_id=run_id, state="missing")
        return RunStatus(
            run_id=run_id,
            state=run.state,
            exit_code=run.exit_code,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )

    async def run_status(self, instance_id: str, run_id: str) -> RunStatus:
        self._enter("run_status", instance_id)
        return self._run_status(run_id)

    def run_logs(
        self, instance_id: str, run_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        return self._run_lines(instance_id, run_id, tail=tail, follow=follow)

    async def _run_lines(
        self, instance_id: str, run_id: str, *, tail: int | None, follow: bool
    ) -> AsyncIterator[LogLine]:
        self._enter("run_logs", instance_id)
        seen = 0
        while True:
            run = self.runs.get(run_id)
            if run is None:
                return
            lines = run.output.splitlines()
            fresh = lines[seen:] if seen or tail is None else lines[-tail:] if tail > 0 else []
            for message in fresh:
                yield LogLine(timestamp=self.clock(), replica=0, stream="stdout", message=message)
            seen = len(lines)
            if not follow or run.state == "exited":
                return
            if self._log_changed is None:
                self._log_changed = anyio.Event()
            await self._log_changed.wait()

    async def remove_run(self, instance_id: str, run_id: str) -> None:
        self._enter("remove_run", instance_id)
        if self.runs.pop(run_id, None) is not None:
            self._notify()

    async def observe(self) -> Observation:
        """Every object and every instance's status in one call, exactly what ``status`` answers."""
        self._enter("observe", None)
        return Observation(
            items=tuple(self._inventory()),
            workloads={
                instance_id: self._status(instance_id) for instance_id in self._replicas if self._replicas[instance_id]
            },
            exact=True,
        )

    async def inventory(self) -> list[InventoryItem]:
        self._enter("inventory", None)
        return self._inventory()

    def _inventory(self) -> list[InventoryItem]:
        items = [
            InventoryItem(
                kind="container",
                name=r.name,
                instance_id=r.spec.instance_id,
                tenant_id=r.tenant_id,
                generation=r.generation,
                replica=r.replica,
                state=r.state,
            )
            for group in self._replicas.values()
            for r in group.values()
        ]
        items += [
            InventoryItem(kind="network", name=f"cp-tenant-{tenant}", instance_id=None, tenant_id=tenant)
            for tenant in self._networks
        ]
        return sorted(items, key=lambda item: (item.kind, item.name))

    async def close(self) -> None:
        self.closed = True
