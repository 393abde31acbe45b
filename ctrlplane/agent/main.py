"""The node agent: ``ctrlplane agent --url URL --token TOKEN [--state-dir DIR]`` (also ``ctrlplane-agent``).

It joins a control plane once with a bootstrap token and then runs what the control plane assigns
to this node on the local Docker engine, reaching out only (it accepts no connection). Its tasks:

* **events**: on every (re)connect it pulls ``GET .../state`` (the full desired state), then
  follows ``GET .../events`` from that state's ``last_event_id``; each event is verified
  (``events.open_event``) before it changes the desired state; a refused one is logged and dropped.
  A dropped stream is reopened with exponential back-off (1 s doubling to 30 s).
* **converge**: one task, woken by events and by a timer (``--reconcile-interval``); the timer and a
  heartbeat answer ``{"reconcile": true}`` pull the full state first and also remove unknown
  containers. Corrections go to ``POST .../drift``, instances' statuses to ``POST .../report``.
* **heartbeat** every ``--heartbeat-interval``; ``rotate_keys`` (event or heartbeat answer) moves
  the node to a new X25519 key and credential.
* **telemetry** every ``--telemetry-interval``: each instance's usage as a gzip'd JSON metrics
  batch and its new log lines as a gzip'd NDJSON log batch.

Containers outlive the agent: stopping or killing it leaves them running, and the next start
adopts them (state pull + converge, keyed by ctrlplane IDs), never duplicating one.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup

from ctrlplane.agent.client import NodeApiError, NodeClient
from ctrlplane.agent.events import RefusedEvent, open_event
from ctrlplane.agent.options import AgentOptions, add_arguments, options_from_args
from ctrlplane.agent.runtime import INSTANCE_ACTIONS, KILL_ACTION, Runtime, load_docker_provider, node_cluster_name
from ctrlplane.agent.state import Identity, StateDir
from ctrlplane.nodes.contract import (
    INSTANCE_REPORT_PREFIX,
    ActionRequest,
    BinaryInfo,
    Capabilities,
    DriftReport,
    ExecutionAck,
    HeartbeatRequest,
    KeyRotateRequest,
    LogRecord,
    MetricRecord,
    NodeCapacity,
    NodeSecretsUpdated,
    NodeState,
    NodeWorkload,
    RegisterRequest,
    ReportBatch,
    ReportEntry,
    RotateKeys,
    SigningKeyRotated,
    SigningKeys,
    WorkloadAssigned,
    WorkloadRemoved,
    decrypt_secret,
    merge_secrets,
    public_key_text,
)
from ctrlplane.provisioning.contract import Provider, ReplicaUsage, Usage, WorkloadSpec, WorkloadStatus, total_usage
from ctrlplane.provisioning.errors import ProviderError, WorkloadNotFound

log = structlog.get_logger("ctrlplane.agent")

AGENT_VERSION = "0.1.0"
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
EXECUTIONS_REMEMBERED = 1000
LOG_BATCH_LINES = 1000
ROTATION_QUIET_SECONDS = 10.0


def _capacity(options: AgentOptions) -> NodeCapacity:
    cpu = options.cpu_millis if options.cpu_millis is not None else (os.cpu_count() or 1) * 1000
    if options.memory_mb is not None:
        memory = options.memory_mb
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return NodeCapacity(cpu_millis=cpu, memory_mb=memory)


class Agent:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.state = StateDir(options.state_dir)
        self.client = NodeClient(options.url)
        self.identity: Identity | None = None
        self.runtime: Runtime | None = None
        self._tasks: TaskGroup | None = None
        self._executions: dict[str, None] = {}
        """The executions acted on (insertion-ordered, the newest ``EXECUTIONS_REMEMBERED``)."""
        self.desired: dict[str, NodeWorkload] = {}
        self.removed: set[str] = set()
        self.rerolled: set[str] = set()
        self._fresh_state = False
        """Instances whose secrets changed under an unchanged spec: their containers are recreated."""
        self.last_event_id = 0
        self._wake = anyio.Event()
        self._full = True
        self._nsk = b""
        self._secrets: dict[tuple[str, int], bytes] = {}
        self._reported: dict[str, bytes] = {}
        self._log_cursor: dict[str, datetime] = {}
        self._started = time.monotonic()
        self._rotation_lock = anyio.Lock()
        self._rotated_at = -ROTATION_QUIET_SECONDS

    # -- identity ---------------------------------------------------------------------------

    async def join(self) -> Identity:
        """The stored identity, or a new one from ``POST /v1/register`` with the bootstrap token."""
        self.state.prepare()
        identity = self.state.identity()
        if identity is None:
            if not self.options.token:
                raise SystemExit("this node has not joined yet: pass --token (a bootstrap token)")
            key = self.state.key()
            answer = await self.client.register(
                RegisterRequest(
                    token=self.options.token,
                    public_key=public_key_text(key),
                    hostname=self.options.hostname,
                    metadata={
                        "os": platform.system().lower(),
                        "arch": platform.machine(),
                        "kernel": platform.release(),
                    },
                    capabilities=Capabilities(
                        binary=BinaryInfo(version=AGENT_VERSION), capacity=_capacity(self.options)
                    ),
                )
            )
            identity = Identity(
                url=self.options.url,
                node_id=answer.node_id,
                hostname=self.options.hostname,
                credential=answer.credential,
                credential_expires_at=answer.credential_expires_at,
                sealed_node_secret_key=answer.node_secret_key,
                signing_keys=SigningKeys(current=answer.signing_public_key),
            )
            self.state.save(identity)
            log.info("node_registered", node_id=identity.node_id, hostname=identity.hostname)
        self.identity = identity
        self.client.credential = identity.credential
        self._nsk = self.state.node_secret_key(identity)
        return identity

    def _save(self, identity: Identity) -> None:
        self.state.save(identity)
        self.identity = identity

    async def rotate_keys(self) -> None:
        """Move to a new X25519 key and credential; a rotation asked for twice at once (event and
        heartbeat) runs once."""
        async with self._rotation_lock:
            if time.monotonic() - self._rotated_at < ROTATION_QUIET_SECONDS:
                return
            await self._rotate_keys()
            self._rotated_at = time.monotonic()

    async def _rotate_keys(self) -> None:
        identity = self._require_identity()
        new_key = self.state.next_key()
        answer = await self.client.rotate_keys(
            KeyRotateRequest(node_id=identity.node_id, new_public_key=public_key_text(new_key))
        )
        self._save(
            msgspec.structs.replace(
                identity,
                credential=answer.credential,
                credential_expires_at=answer.credential_expires_at,
                sealed_node_secret_key=answer.node_secret_key,
            )
        )
        self.state.promote_next_key()
        self.client.credential = answer.credential
        self._nsk = self.state.node_secret_key(self._require_identity())
        self._secrets.clear()
        log.info("node_keys_rotated", node_id=identity.node_id)

    def _require_identity(self) -> Identity:
        if self.identity is None:
            raise RuntimeError("the agent has not joined")
        return self.identity

    # -- running ----------------------------------------------------------------------------

    async def run(self, provider: Provider | None = None) -> None:
        identity = await self.join()
        provider = provider or load_docker_provider(identity.node_id, host_address=self.options.host_address)
        self.runtime = Runtime(provider)
        log.info("agent_started", node_id=identity.node_id, cluster=node_cluster_name(identity.node_id))
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._follow_events)
                tasks.start_soon(self._converge_loop)
                tasks.start_soon(self._heartbeat_loop)
                tasks.start_soon(self._telemetry_loop)
        finally:
            with anyio.CancelScope(shield=True):
                await provider.close()
                await self.client.close()

    def _request(self, *, full: bool = False) -> None:
        self._full = self._full or full
        self._wake.set()

    def _apply_state(self, state: NodeState) -> bool:
        """Take a pulled state as the desired one, unless events newer than it were applied already."""
        if state.last_event_id < self.last_event_id:
            return False
        self.desired = {workload.instance_id: workload for workload in state.workloads}
        self.removed.clear()
        self.last_event_id = state.last_event_id
        identity = self._require_identity()
        if state.signing_keys != identity.signing_keys:
            self._save(msgspec.structs.replace(identity, signing_keys=state.signing_keys))
        return True

    async def _follow_events(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            node_id = self._require_identity().node_id
            try:
                if self._apply_state(await self.client.state(node_id)):
                    self._fresh_state = True  # the converge it wakes also removes what is not assigned
                self._request(full=False)
                async for event in self.client.events(node_id, self.last_event_id):
                    delay = BACKOFF_FIRST
                    if event.data:
                        await self._on_event(event.data)
            except Exception as exc:  # noqa: BLE001 - reconnect whatever broke the stream
                delay = max(delay, getattr(exc, "retry_after", 0.0))
                log.warning("event_stream_lost", error=str(exc), kind=type(exc).__name__, retry_in=delay)
            else:
                log.info("event_stream_ended", retry_in=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _on_event(self, data: str) -> None:
        identity = self._require_identity()
        try:
            envelope, payload = open_event(data, node_id=identity.node_id, keys=identity.signing_keys)
        except RefusedEvent as exc:
            log.error("event_refused", reason=str(exc))
            if exc.unknown_key:
                self._request(full=True)
            return
        if isinstance(payload, ActionRequest):
            # not in the desired state, so a state pull that raced ahead of the stream (and moved
            # ``last_event_id`` past it) must not hide it: each execution is run once by its ID
            if payload.execution_id in self._executions:
                return
            self._executions[payload.execution_id] = None
            while len(self._executions) > EXECUTIONS_REMEMBERED:
                del self._executions[next(iter(self._executions))]
            self.last_event_id = max(self.last_event_id, envelope.event_id)
            log.info("event_received", event_id=envelope.event_id, type=envelope.type)
            await self._on_action(payload)
            return
        if envelope.event_id <= self.last_event_id:
            return
        self.last_event_id = envelope.event_id
        log.info("event_received", event_id=envelope.event_id, type=envelope.type)
        if isinstance(payload, WorkloadAssigned):
            workload = payload.workload
            known = self.desired.get(workload.instance_id)
            if known is None or known.revision <= workload.revision:
                self.desired[workload.instance_id] = workload
                self.removed.discard(workload.instance_id)
                self._request()
        elif isinstance(payload, WorkloadRemoved):
            known = self.desired.get(payload.instance_id)
            if known is None or known.revision <= payload.revision:
                self.desired.pop(payload.instance_id, None)
                self.removed.add(payload.instance_id)
                self._request()
        elif isinstance(payload, RotateKeys):
            await self._rotate_quietly()
        elif isinstance(payload, SigningKeyRotated):
            keys = SigningKeys(
                current=payload.signing_public_key,
                previous=identity.signing_keys.current,
                transition_expires=payload.transition_expires,
            )
            self._save(msgspec.structs.replace(identity, signing_keys=keys))
            log.info("signing_key_rotated", key_id=payload.key_id)
        elif isinstance(payload, NodeSecretsUpdated):
            changed = {ref.key for ref in payload.secrets}
            self._secrets = {k: v for k, v in self._secrets.items() if k[0] not in changed}
            self.rerolled.update(i for i, w in self.desired.items() if w.secret.key in changed)
            self._request()

    async def _on_action(self, request: ActionRequest) -> None:
        """Run one of the control plane's instance actions (restart, exec, kill) on an instance placed on
        this node, once: ack it, run it beside the event stream, post the result. Anything else is
        refused: the agent runs no ad-hoc actions."""
        node_id = self._require_identity().node_id
        instance_id = request.parameters.get("instance_id")
        reason = ""
        if request.action not in INSTANCE_ACTIONS:
            reason = "this agent runs no ad-hoc actions; instances are managed through the control plane"
        elif instance_id not in self.desired:
            reason = f"instance {instance_id} is not placed on this node"
        ack = ExecutionAck(
            execution_id=request.execution_id, status="rejected" if reason else "accepted", reason=reason
        )
        await self._quietly(self.client.ack(node_id, ack))
        if reason or self.runtime is None:
            return
        runtime = self.runtime
        if request.action == KILL_ACTION:
            runtime.hold(str(instance_id), self.desired[str(instance_id)].revision)

        async def run() -> None:
            result = await runtime.run_action(request)
            await self._quietly(self.client.result(node_id, result))
            if request.action == INSTANCE_ACTIONS[0]:
                self._request()  # report the restarted replicas

        if self._tasks is not None:
            self._tasks.start_soon(run)
        else:
            await run()

    async def _quietly(self, call: Awaitable[None]) -> None:
        try:
            await call
        except NodeApiError as exc:
            log.warning("node_api_call_failed", error=str(exc))

    async def _rotate_quietly(self) -> None:
        try:
            await self.rotate_keys()
        except NodeApiError as exc:
            log.error("key_rotation_failed", error=str(exc))

    async def _spec_for(self, workload: NodeWorkload) -> WorkloadSpec:
        identity = self._require_identity()
        ref = workload.secret
        plaintext = self._secrets.get((ref.key, ref.version))
        if plaintext is None:
            try:
                sealed = await self.client.secret(identity.node_id, ref.key)
            except NodeApiError as exc:
                raise ProviderError(f"cannot fetch the secrets of {workload.instance_id}: {exc}") from exc
            plaintext = decrypt_secret(self._nsk, sealed, node_id=identity.node_id)
            self._secrets = {k: v for k, v in self._secrets.items() if k[0] != ref.key}
            self._secrets[(ref.key, sealed.version)] = plaintext
            self._secrets[(ref.key, ref.version)] = plaintext
        return merge_secrets(workload.spec, plaintext)

    async def _converge_loop(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            timed_out = True
            with anyio.move_on_after(self.options.reconcile_interval):
                await self._wake.wait()
                timed_out = False
            self._wake = anyio.Event()
            full, self._full = self._full or timed_out, False
            try:
                await self.converge(full=full)
                delay = BACKOFF_FIRST
            except Exception as exc:  # noqa: BLE001 - the agent outlives any one failed pass
                delay = max(delay, getattr(exc, "retry_after", 0.0))
                log.warning("converge_failed", error=str(exc), kind=type(exc).__name__, retry_in=delay)
                self._full = True
                await anyio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                self._wake.set()

    async def converge(self, *, full: bool) -> None:
        """One pass: (with ``full``) pull the state, then make the engine match; report the result."""
        runtime = self.runtime
        assert runtime is not None
        identity = self._require_identity()
        applied = False
        if full:
            applied = self._apply_state(await self.client.state(identity.node_id))
        for instance_id in sorted(self.removed):
            await runtime.remove(instance_id)
        removed, self.removed = set(self.removed), set()
        for instance_id in sorted(self.rerolled & set(self.desired)):
            await runtime.recreate(self.desired[instance_id])
        self.rerolled = set()
        remove_unknown, self._fresh_state = applied or self._fresh_state, False
        corrections, statuses = await runtime.converge(
            dict(self.desired), self._spec_for, remove_unknown=remove_unknown
        )
        if corrections:
            log.info("drift_corrected", corrections=[c.type for c in corrections])
            await self.client.drift(identity.node_id, DriftReport(timestamp=datetime.now(UTC), corrections=corrections))
        gone = [i for i in self._reported if i not in self.desired] + [i for i in removed if i not in self._reported]
        await self._report(statuses, gone)

    async def _report(self, statuses: dict[str, WorkloadStatus], gone: list[str]) -> None:
        version = time.time_ns() // 1000
        now = datetime.now(UTC)
        entries = []
        for instance_id, status in sorted(statuses.items()):
            encoded = msgspec.json.encode(status)
            if self._reported.get(instance_id) == encoded:
                continue
            entries.append(
                ReportEntry(
                    key=INSTANCE_REPORT_PREFIX + instance_id,
                    payload=msgspec.to_builtins(status),
                    version=version,
                    updated_at=now,
                )
            )
        if not entries and not gone:
            return
        await self.client.report(
            self._require_identity().node_id,
            ReportBatch(entries=entries, deleted=sorted({INSTANCE_REPORT_PREFIX + i for i in gone})),
        )
        for instance_id in gone:
            self._reported.pop(instance_id, None)
        for entry in entries:
            instance_id = entry.key.removeprefix(INSTANCE_REPORT_PREFIX)
            self._reported[instance_id] = msgspec.json.encode(statuses[instance_id])

    async def _heartbeat_loop(self) -> None:
        while True:
            identity = self._require_identity()
            try:
                answer = await self.client.heartbeat(
                    identity.node_id,
                    HeartbeatRequest(
                        node_id=identity.node_id,
                        timestamp=datetime.now(UTC),
                        uptime=f"{int(time.monotonic() - self._started)}s",
                    ),
                )
            except Exception as exc:  # noqa: BLE001 - the next heartbeat retries
                log.warning("heartbeat_failed", error=str(exc), kind=type(exc).__name__)
            else:
                if answer.reconcile:
                    self._request(full=True)
                if answer.rotate_keys:
                    await self._rotate_quietly()
            await anyio.sleep(self.options.heartbeat_interval)

    async def _telemetry_loop(self) -> None:
        while True:
            await anyio.sleep(self.options.telemetry_interval)
            try:
                await self.ship_telemetry()
            except Exception as exc:  # noqa: BLE001 - telemetry is best effort; the next batch retries
                log.warning("telemetry_failed", error=str(exc), kind=type(exc).__name__)

    async def ship_telemetry(self) -> None:
        runtime = self.runtime
        assert runtime is not None
        node_id = self._require_identity().node_id
        now = datetime.now(UTC)
        metrics: list[MetricRecord] = []
        lines: list[LogRecord] = []
        for instance_id in sorted(self.desired):
            try:
                replicas = await runtime.provider.replica_usage(instance_id)
            except WorkloadNotFound:
                continue
            metrics += usage_records(instance_id, now, replicas)
            since = self._log_cursor.get(instance_id, now - timedelta(seconds=self.options.telemetry_interval))
            newest = since
            async for line in runtime.provider.logs(instance_id, since=since, tail=LOG_BATCH_LINES):
                if line.timestamp <= since:
                    continue
                newest = max(newest, line.timestamp)
                lines.append(
                    LogRecord(
                        timestamp=line.timestamp,
                        message=line.message,
                        source=line.stream,
                        hostname=self.options.hostname,
                        instance_id=instance_id,
                        replica=line.replica,
                    )
                )
            self._log_cursor[instance_id] = newest
        if metrics:
            await self.client.metrics(node_id, metrics)
        if lines:
            await self.client.logs(node_id, lines)


def usage_data(usage: Usage) -> dict[str, float | int]:
    return {
        "cpu_percent": usage.cpu_percent,
        "memory_used": usage.memory_used_bytes,
        "memory_total": usage.memory_limit_bytes,
        "network_rx_bytes": usage.network_rx_bytes,
        "network_tx_bytes": usage.network_tx_bytes,
        "restarts": usage.restarts,
    }


def usage_records(instance_id: str, at: datetime, replicas: Sequence[ReplicaUsage]) -> list[MetricRecord]:
    """One engine sample per running replica, shipped twice over: the instance's sum (group
    ``instance``, its usage sample) and each replica's own (group ``replica``, with its generation),
    which the instance's resources on the control plane show. One stats round serves both."""
    samples = [(r, r.usage) for r in replicas if r.usage is not None]
    total = total_usage(u for _, u in samples)
    records = [MetricRecord(timestamp=at, group="instance", instance_id=instance_id, data=usage_data(total))]
    records += [
        MetricRecord(
            timestamp=at,
            group="replica",
            instance_id=instance_id,
            replica=replica.replica,
            data={**usage_data(usage), "generation": replica.generation},
        )
        for replica, usage in samples
    ]
    return records


def run_agent(options: AgentOptions) -> int:
    from ctrlplane.logs import configure_logging
    from ctrlplane.settings import Settings

    configure_logging(Settings())
    agent = Agent(options)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        log.info("agent_stopping")
                        tasks.cancel_scope.cancel()
                        return

            tasks.start_soon(stop_on_signal)
            await agent.run()

    try:
        anyio.run(main)
    except NodeApiError as exc:
        print(f"ctrlplane agent: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctrlplane-agent", description="ctrlplane's node agent")
    add_arguments(parser)
    return run_agent(options_from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
