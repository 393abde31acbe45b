"""From Deployments and Pods to ctrlplane's neutral status: replica indices, states and reasons.

Pods of a Deployment have no index of their own, so a replica's index is its rank among the
generation's live pods by creation time (then name), skipping the indices a rolling deploy has
retired (the ``ctrlplane.io/retired`` annotation): a pod that replaces a deleted one takes the
free index, the others keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ctrlplane.provisioning.contract import (
    LABEL_GENERATION,
    Endpoint,
    ReplicaState,
    ReplicaStatus,
    WorkloadState,
    WorkloadStatus,
)
from ctrlplane_kubernetes import naming

Obj = Mapping[str, Any]

IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})
FAILED_WAITING = IMAGE_REASONS | {
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "PreStartHookError",
}


def meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def labels(obj: Obj) -> Mapping[str, str]:
    return meta(obj).get("labels") or {}


def annotations_of(obj: Obj) -> Mapping[str, str]:
    return meta(obj).get("annotations") or {}


def generation_of(obj: Obj) -> int | None:
    raw = labels(obj).get(LABEL_GENERATION)
    return int(raw) if raw and raw.isdigit() else None


def wanted(deployment: Obj) -> int:
    raw = annotations_of(deployment).get(naming.WANTED, "")
    return int(raw) if raw.isdigit() else int((deployment.get("spec") or {}).get("replicas") or 0)


def stopped(deployment: Obj) -> bool:
    return annotations_of(deployment).get(naming.STOPPED) == "true"


def retired(deployment: Obj) -> set[int]:
    raw = annotations_of(deployment).get(naming.RETIRED, "")
    return {int(part) for part in raw.split(",") if part.strip().isdigit()}


def strategy_of(deployment: Obj) -> str:
    return str(((deployment.get("spec") or {}).get("strategy") or {}).get("type") or "RollingUpdate")


def slot_of(obj: Obj) -> str:
    return labels(obj).get(naming.LABEL_SLOT, "")


def parse_time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


def live(pods: Iterable[Obj]) -> list[Obj]:
    """Pods not being deleted, oldest first."""
    kept = [pod for pod in pods if not meta(pod).get("deletionTimestamp")]
    return sorted(kept, key=lambda pod: (meta(pod).get("creationTimestamp") or "", meta(pod).get("name") or ""))


def indexed(deployment: Obj, pods: Iterable[Obj]) -> list[tuple[int, Obj]]:
    """The Deployment's pods of its own generation with their replica indices."""
    generation = generation_of(deployment)
    mine = [pod for pod in live(pods) if generation_of(pod) == generation and slot_of(pod) == slot_of(deployment)]
    free = [index for index in range(wanted(deployment)) if index not in retired(deployment)]
    extra = range(wanted(deployment), wanted(deployment) + len(mine))
    return list(zip([*free, *extra], mine, strict=False))


def surplus(deployments: Iterable[Obj], pods: Iterable[Obj]) -> bool:
    """A Deployment has more live pods of its own than it wants: its ReplicaSet is still scaling one
    down (as after an API server restart, when the controller re-counts and removes the extra)."""
    kept = live(pods)
    for deployment in deployments:
        generation, slot = generation_of(deployment), slot_of(deployment)
        mine = sum(1 for pod in kept if generation_of(pod) == generation and slot_of(pod) == slot)
        if mine > len([index for index in range(wanted(deployment)) if index not in retired(deployment)]):
            return True
    return False


def template_of(obj: Obj) -> str | None:
    """The template hash a Deployment wants (from its template) or a pod was made from."""
    template = (obj.get("spec") or {}).get("template")
    source = template if template is not None else obj
    return annotations_of(source).get(naming.TEMPLATE_HASH)


def stale(deployments: Iterable[Obj], pods: Iterable[Obj]) -> list[Obj]:
    """Live pods of a slot whose Deployment now wants another template: a rollout is under way."""
    wanted = {slot_of(d): template_of(d) for d in deployments}
    return [
        pod
        for pod in live(pods)
        if slot_of(pod) in wanted and wanted[slot_of(pod)] and template_of(pod) != wanted[slot_of(pod)]
    ]


def container_status(pod: Obj) -> Mapping[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == naming.CONTAINER:
            return dict(status)
    return dict(statuses[0]) if statuses else None


def replica_status(index: int, pod: Obj, ports: Iterable[Mapping[str, Any]]) -> ReplicaStatus:
    pod_status = pod.get("status") or {}
    container = container_status(pod)
    state: ReplicaState = "created"
    exit_code: int | None = None
    oom = False
    error: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    restarts = int((container or {}).get("restartCount") or 0)
    if container:
        current = container.get("state") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        if "running" in current:
            state, started = "running", parse_time((current["running"] or {}).get("startedAt"))
        elif "terminated" in current:
            ended = current["terminated"] or {}
            state, exit_code = "exited", int(ended.get("exitCode") or 0)
            oom = ended.get("reason") == "OOMKilled"
            started, finished = parse_time(ended.get("startedAt")), parse_time(ended.get("finishedAt"))
            error = ended.get("reason") if exit_code else None
        elif "waiting" in current:
            waiting = current["waiting"] or {}
            reason = waiting.get("reason") or ""
            if reason in FAILED_WAITING:
                state = "dead" if reason in IMAGE_REASONS or reason.startswith("Create") else "exited"
                message = waiting.get("message") or ""
                error = f"{reason}: {message}" if message else reason
                if last:
                    exit_code = int(last.get("exitCode") or 0)
                    oom = last.get("reason") == "OOMKilled"
                    finished = parse_time(last.get("finishedAt"))
    elif pod_status.get("phase") in ("Failed", "Succeeded"):
        state = "exited"
        error = pod_status.get("reason") or pod_status.get("message")
    if state == "running" and not started:
        started = parse_time(pod_status.get("startTime"))
    endpoints: tuple[Endpoint, ...] = ()
    ip = pod_status.get("podIP")
    if state == "running" and ip:
        endpoints = tuple(
            Endpoint(
                container_port=int(port["containerPort"]),
                protocol="udp" if str(port.get("protocol", "TCP")).upper() == "UDP" else "tcp",
                host=ip,
                host_port=int(port["containerPort"]),
                url=f"http://{ip}:{port['containerPort']}" if str(port.get("protocol", "TCP")).upper() == "TCP" else "",
                replica=index,
            )
            for port in ports
        )
    return ReplicaStatus(
        replica=index,
        generation=generation_of(pod) or 0,
        name=str(meta(pod).get("name")),
        state=state,
        exit_code=exit_code,
        oom_killed=oom,
        error=error,
        restart_count=restarts,
        started_at=started,
        finished_at=finished,
        endpoints=endpoints,
    )


def ports_of(deployment: Obj) -> list[Mapping[str, Any]]:
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    return list(containers[0].get("ports") or []) if containers else []


def deployment_replicas(deployment: Obj, pods: Iterable[Obj]) -> list[ReplicaStatus]:
    generation = generation_of(deployment) or 0
    if stopped(deployment):
        name = str(meta(deployment).get("name"))
        return [
            ReplicaStatus(replica=index, generation=generation, name=f"{name}-{index}", state="exited")
            for index in range(wanted(deployment))
            if index not in retired(deployment)
        ]
    ports = ports_of(deployment)
    return [replica_status(index, pod, ports) for index, pod in indexed(deployment, pods)]


def failure(replica: ReplicaStatus) -> str | None:
    if replica.oom_killed:
        return f"replica {replica.replica} was OOM-killed (exit code {replica.exit_code or 137})"
    if replica.state in ("exited", "dead"):
        if replica.error and replica.exit_code:
            return f"replica {replica.replica}: {replica.error} (exit code {replica.exit_code})"
        if replica.error:
            return f"replica {replica.replica}: {replica.error}"
        return f"replica {replica.replica} exited with code {replica.exit_code}"
    return None


def quota_refusal(deployment: Obj) -> str | None:
    """The ReplicaSet's refusal to create pods because the namespace's ResourceQuota is used up, as
    the Deployment controller reports it (condition ``ReplicaFailure``), else ``None``."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        message = str(condition.get("message") or "")
        if (
            condition.get("type") == "ReplicaFailure"
            and condition.get("status") == "True"
            and "exceeded quota" in message
        ):
            return message
    return None


def workload_status(instance_id: str, deployments: Sequence[Obj], pods: Sequence[Obj]) -> WorkloadStatus:
    if not deployments:
        return WorkloadStatus(instance_id=instance_id, state="missing", message="no Deployment for this instance")
    ordered = sorted(deployments, key=lambda d: generation_of(d) or 0)
    replicas = [replica for deployment in ordered for replica in deployment_replicas(deployment, pods)]
    replicas.sort(key=lambda r: (r.generation, r.replica))
    if all(stopped(deployment) for deployment in ordered):
        return WorkloadStatus(instance_id=instance_id, state="stopped", message="stopped", replicas=tuple(replicas))
    expected = sum(wanted(d) - len(retired(d) & set(range(wanted(d)))) for d in ordered if not stopped(d))
    running = [r for r in replicas if r.state == "running"]
    failures = [reason for reason in map(failure, replicas) if reason]
    if len(running) < expected:
        failures += [f"pods refused: {refusal}" for refusal in map(quota_refusal, ordered) if refusal]
    message = "; ".join(failures)
    state: WorkloadState
    if len(running) == len(replicas) and len(running) >= expected:
        state, message = "running", ""
    elif running:
        state = "partial"
        message = message or f"{len(running)} of {expected} replicas running"
    elif failures:
        state = "failed"
    else:
        state = "partial"
        message = f"0 of {expected} replicas running yet"
    return WorkloadStatus(instance_id=instance_id, state=state, message=message, replicas=tuple(replicas))
