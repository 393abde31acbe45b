"""A Kubernetes API for the provider tests: kmock's ``KubernetesEmulator`` on a loopback port, plus a
stand-in for what a real cluster's controllers and kubelet do to the objects the provider writes.

kmock stores, lists, patches (JSON merge) and deletes objects; nothing else happens by itself. The
``Cluster`` below plays, by patching the emulated objects directly:

* the **Deployment controller**: pods for each Deployment's replicas from its template (Recreate
  and RollingUpdate with maxSurge 1 / maxUnavailable 0), scale-down by ``pod-deletion-cost`` then
  newest first, and the Deployment's status;
* the **Job controller**: one pod per Job from its template (``restartPolicy: Never``, no retry),
  removed with its Job; a test ends the run with ``crash(pod, exit_code)`` (0 for success);
* the **kubelet**: a pending pod starts running (``podIP`` = ``pod_ip``) unless its image is in
  ``missing_images`` (then it waits with ``ErrImageNeverPull`` / ``ImagePullBackOff``); pod logs
  are served from ``logs`` through ``pods/{name}/log`` (tail, since, timestamps, follow);
* **garbage collection**: pods of a deleted Deployment and objects of a deleted namespace go;
* the **quota controller**: a ResourceQuota's ``status.hard`` follows its ``spec.hard``;
* **metrics-server**, when ``metrics`` is on: a ``metrics.k8s.io`` PodMetrics per running pod.

Tests drive failures by patching pod status (``crash``, ``set_waiting``, ``oom``) as a kubelet would.
Two fixes to kmock 0.8 are applied while the emulator runs (``fixed_namespace_paths``): it cannot
parse the cluster-scoped ``/api/v1/namespaces[/{name}]`` paths, and it ignores ``labelSelector`` (the
provider re-checks labels itself, so the second needs no fix; the tests rely on that check).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kmock
from kmock._internal import parsing
from kubernetes import client

DEPLOYMENTS = kmock.resource(group="apps", version="v1", plural="deployments")
PODS = kmock.resource(group="", version="v1", plural="pods")
NAMESPACES = kmock.resource(group="", version="v1", plural="namespaces")
SECRETS = kmock.resource(group="", version="v1", plural="secrets")
SERVICES = kmock.resource(group="", version="v1", plural="services")
JOBS = kmock.resource(group="batch", version="v1", plural="jobs")
RESOURCE_QUOTAS = kmock.resource(group="", version="v1", plural="resourcequotas")
POD_METRICS = kmock.resource(group="metrics.k8s.io", version="v1beta1", plural="pods")
RESOURCES = {
    "v1/namespaces": False,
    "v1/pods": True,
    "v1/services": True,
    "v1/secrets": True,
    "v1/resourcequotas": True,
    "v1/limitranges": True,
    "apps/v1/deployments": True,
    "batch/v1/jobs": True,
    "networking.k8s.io/v1/ingresses": True,
    "networking.k8s.io/v1/networkpolicies": True,
}
TICK_SECONDS = 0.05


def now_iso(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).isoformat().replace("+00:00", "Z")


@contextmanager
def fixed_namespace_paths() -> Iterator[None]:
    original = parsing.parse_path

    def parse_path(path: str) -> parsing.ParsedPath:
        parts = path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
        ):
            return parsing.ParsedPath(
                "", "v1", "namespaces", None, parts[3] if len(parts) > 3 else None, parts[4] if len(parts) > 4 else None
            )
        return original(path)

    parsing.parse_path = parse_path  # type: ignore[assignment]
    try:
        yield
    finally:
        parsing.parse_path = original  # type: ignore[assignment]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def configuration(url: str) -> client.Configuration:
    config = client.Configuration()
    config.host = url.rstrip("/")
    config.retries = 0
    return config


@dataclass
class LogRecord:
    timestamp: str
    message: str


@dataclass
class Cluster:
    """The emulator and the controllers' stand-in; see the module docstring."""

    emulator: kmock.KubernetesEmulator
    url: str
    pod_ip: str | None = None
    """Every pod's IP; by default each pod gets its own loopback address (127.0.0.2, .3, ...), so
    nothing a test does could send traffic off this machine."""
    missing_images: set[str] = field(default_factory=set)
    metrics: bool = True
    logs: dict[str, list[LogRecord]] = field(default_factory=dict)
    paused: bool = False
    _counter: int = 0
    _new_lines: asyncio.Event = field(default_factory=asyncio.Event)

    # -- reading the emulator --------------------------------------------------------------------

    def objects(self, resource: Any, namespace: str | None = None) -> dict[tuple[str | None, str], dict[str, Any]]:
        found = {}
        for (res, ns, name), obj in list(self.emulator.objects.items()):
            if res == resource and not obj.deleted and (namespace is None or ns == namespace):
                found[(ns, name)] = dict(obj.raw)
        return found

    def kinds(self, plural: str, group: str = "", version: str = "v1") -> dict[tuple[str | None, str], dict[str, Any]]:
        return self.objects(kmock.resource(group=group, version=version, plural=plural))

    def deployments(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.objects(DEPLOYMENTS).values() if _has(d, instance_id)]

    def pods(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        return sorted(
            (p for p in self.objects(PODS).values() if _has(p, instance_id)),
            key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]),
        )

    def history(self, resource: Any, namespace: str | None, name: str) -> list[dict[str, Any]]:
        """Every version the emulator kept of one object (creation, each patch)."""
        obj = self.emulator.objects[resource, namespace, name]
        return [dict(version.raw) for version in obj.history if version is not None and version.raw]

    def patch(self, resource: Any, namespace: str | None, name: str, changes: dict[str, Any]) -> None:
        self.emulator.objects[resource, namespace, name].patch(changes)

    # -- kubelet-like failures -------------------------------------------------------------------

    def pod_of(self, instance_id: str, name: str) -> dict[str, Any]:
        return next(p for p in self.pods(instance_id) if p["metadata"]["name"] == name)

    def crash(self, pod: dict[str, Any], exit_code: int, *, reason: str = "Error") -> None:
        started = pod["status"]["containerStatuses"][0]["state"].get("running", {}).get("startedAt")
        self.set_container(
            pod,
            {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now_iso()}},
            ready=False,
            phase="Running",
        )

    def set_waiting(
        self, pod: dict[str, Any], reason: str, message: str = "", last: dict[str, Any] | None = None
    ) -> None:
        self.set_container(
            pod, {"waiting": {"reason": reason, "message": message}}, ready=False, phase="Running", last=last
        )

    def set_container(
        self,
        pod: dict[str, Any],
        state: dict[str, Any],
        *,
        ready: bool,
        phase: str,
        last: dict[str, Any] | None = None,
    ) -> None:
        meta = pod["metadata"]
        current = self.emulator.objects[PODS, meta["namespace"], meta["name"]].raw
        container = dict(current["status"].get("containerStatuses", [{}])[0]) or {"name": "app", "restartCount": 0}
        container.update({"name": "app", "state": state, "ready": ready})
        if last is not None:
            container["lastState"] = last
        self.patch(
            PODS, meta["namespace"], meta["name"], {"status": {"phase": phase, "containerStatuses": [container]}}
        )

    def write_log(self, pod_name: str, message: str) -> None:
        self.logs.setdefault(pod_name, []).append(LogRecord(now_iso(), message))
        self._new_lines.set()

    # -- the controllers -------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            if not self.paused:
                self.tick()
            await asyncio.sleep(TICK_SECONDS)

    def tick(self) -> None:
        namespaces = {name for (_, name) in self.objects(NAMESPACES)}
        for (_res, ns, _name), obj in list(self.emulator.objects.items()):
            if ns is not None and not obj.deleted and ns not in namespaces:
                obj.delete()
        for (ns, name), quota in self.objects(RESOURCE_QUOTAS).items():
            hard = quota.get("spec", {}).get("hard", {})
            if quota.get("status", {}).get("hard") != hard:
                self.patch(RESOURCE_QUOTAS, ns, name, {"status": {"hard": hard}})
        deployments = self.objects(DEPLOYMENTS)
        for (ns, name), pod in self.objects(PODS).items():
            owner = pod["metadata"].get("annotations", {}).get("emulator/owner")
            if owner and (ns, owner) not in deployments:
                self._delete_pod(ns, name)
        for (ns, name), deployment in deployments.items():
            self._reconcile(str(ns), name, deployment)
        jobs = self.objects(JOBS)
        job_pods = {
            (ns, pod["metadata"]["annotations"]["emulator/job"]): name
            for (ns, name), pod in self.objects(PODS).items()
            if "emulator/job" in pod["metadata"].get("annotations", {})
        }
        for (ns, job), name in job_pods.items():
            if (ns, job) not in jobs:
                self._delete_pod(ns, name)
        for (ns, name), job in jobs.items():
            if (ns, name) not in job_pods:
                self._create_job_pod(str(ns), name, job["spec"]["template"])
        for (ns, name), pod in self.objects(PODS).items():
            if not pod.get("status", {}).get("containerStatuses"):
                self._start(str(ns), name, pod)
        if self.metrics:
            pods = self.objects(PODS)
            for (ns, name), pod in pods.items():
                running = "running" in (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
                key = (POD_METRICS, ns, name)
                if running and (key not in self.emulator.objects or self.emulator.objects[key].deleted):
                    self.emulator.objects[key] = {
                        "kind": "PodMetrics",
                        "apiVersion": "metrics.k8s.io/v1beta1",
                        "metadata": {"name": name, "namespace": ns, "labels": pod["metadata"].get("labels", {})},
                        "timestamp": now_iso(),
                        "window": "15s",
                        "containers": [{"name": "app", "usage": {"cpu": "5000000n", "memory": "12Mi"}}],
                    }
            for ns, name in self.objects(POD_METRICS):
                if (ns, name) not in pods:
                    self.emulator.objects[POD_METRICS, ns, name].delete()

    def _delete_pod(self, namespace: str | None, name: str) -> None:
        self.emulator.objects[PODS, namespace, name].delete()

    def _reconcile(self, namespace: str, name: str, deployment: dict[str, Any]) -> None:
        spec = deployment["spec"]
        template = spec["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        desired = int(spec.get("replicas", 1))
        owned = [
            pod
            for (ns, _), pod in self.objects(PODS, namespace).items()
            if pod["metadata"].get("annotations", {}).get("emulator/owner") == name
        ]
        current = [p for p in owned if p["metadata"]["annotations"].get("emulator/template") == digest]
        old = [p for p in owned if p not in current]
        recreate = spec.get("strategy", {}).get("type") == "Recreate"
        if recreate and old:
            for pod in old:
                self._delete_pod(namespace, pod["metadata"]["name"])
            return
        available = len([p for p in owned if _running(p)])
        if old and available > desired:  # maxUnavailable 0: an old pod goes while enough others run
            victim = sorted(old, key=_victim_order)[0]
            self._delete_pod(namespace, victim["metadata"]["name"])
            return
        if len(current) < desired and len(owned) < desired + (0 if recreate else 1):
            self._create_pod(namespace, name, template, digest)
        elif not old and len(current) > desired:
            for pod in sorted(current, key=_victim_order)[: len(current) - desired]:
                self._delete_pod(namespace, pod["metadata"]["name"])
        elif old and not desired:
            for pod in old:
                self._delete_pod(namespace, pod["metadata"]["name"])
        ready = len([p for p in current if _running(p)])
        self.patch(
            DEPLOYMENTS,
            namespace,
            name,
            {
                "status": {
                    "replicas": len(owned),
                    "updatedReplicas": len(current),
                    "readyReplicas": ready,
                    "availableReplicas": ready,
                }
            },
        )

    def _create_pod(self, namespace: str, owner: str, template: dict[str, Any], digest: str) -> None:
        self._counter += 1
        name = f"{owner}-{digest[:6]}-{self._counter:05d}"
        meta = template.get("metadata", {})
        self.emulator.objects[PODS, namespace, name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(meta.get("labels", {})),
                "annotations": {
                    **meta.get("annotations", {}),
                    "emulator/owner": owner,
                    "emulator/template": digest,
                },
                "creationTimestamp": now_iso(),
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }

    def _create_job_pod(self, namespace: str, job: str, template: dict[str, Any]) -> None:
        self._counter += 1
        name = f"{job}-{self._counter:05d}"
        meta = template.get("metadata", {})
        self.emulator.objects[PODS, namespace, name] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(meta.get("labels", {})),
                "annotations": {"emulator/job": job},
                "creationTimestamp": now_iso(),
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }

    def job_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.objects(PODS).values() if "emulator/job" in p["metadata"].get("annotations", {})]

    def _start(self, namespace: str, name: str, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        if container["image"] in self.missing_images:
            reason = "ErrImageNeverPull" if container.get("imagePullPolicy") == "Never" else "ImagePullBackOff"
            state: dict[str, Any] = {"waiting": {"reason": reason, "message": f"image {container['image']} not found"}}
            ready = False
        else:
            state, ready = {"running": {"startedAt": now_iso()}}, True
        self.patch(
            PODS,
            namespace,
            name,
            {
                "status": {
                    "phase": "Running" if ready else "Pending",
                    "podIP": self.pod_ip or _loopback(int(name.rsplit("-", 1)[1])),
                    "startTime": now_iso(),
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "containerStatuses": [{"name": "app", "ready": ready, "restartCount": 0, "state": state}],
                }
            },
        )

    # -- pods/log --------------------------------------------------------------------------------

    def serve_logs(self, request: Any) -> Any:
        match = re.search(r"/namespaces/([^/]+)/pods/([^/]+)/log", str(request.url.path))
        assert match, request.url
        pod = match.group(2)
        params = request.params
        records = list(self.logs.get(pod, []))
        if "sinceSeconds" in params:
            cutoff = (datetime.now(UTC) - timedelta(seconds=int(params["sinceSeconds"]))).isoformat()
            records = [r for r in records if r.timestamp.replace("Z", "+00:00") >= cutoff]
        if "tailLines" in params:
            tail = int(params["tailLines"])
            records = records[-tail:] if tail else []
        stamps = params.get("timestamps") == "true"

        def render(record: LogRecord) -> bytes:
            return (f"{record.timestamp} {record.message}\n" if stamps else f"{record.message}\n").encode()

        if params.get("follow") != "true":
            return b"".join(render(record) for record in records)
        return self._follow(pod, records, render)

    async def _follow(self, pod: str, records: list[LogRecord], render: Any) -> AsyncIterator[bytes]:
        for record in records:
            yield render(record)
        seen = len(self.logs.get(pod, []))
        while True:
            self._new_lines.clear()
            lines = self.logs.get(pod, [])
            for record in lines[seen:]:
                yield render(record)
            seen = len(lines)
            try:
                await asyncio.wait_for(self._new_lines.wait(), timeout=0.5)
            except TimeoutError:
                continue


def _loopback(number: int) -> str:
    return f"127.0.{number // 250 % 250}.{2 + number % 250}"


def _has(obj: dict[str, Any], instance_id: str | None) -> bool:
    return instance_id is None or obj["metadata"].get("labels", {}).get("ctrlplane.instance") == instance_id


def _running(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and "running" in statuses[0].get("state", {})


def _victim_order(pod: dict[str, Any]) -> tuple[int, float]:
    """The ReplicaSet's choice when scaling down: the lowest deletion cost, then the newest pod."""
    cost = int(pod["metadata"].get("annotations", {}).get("controller.kubernetes.io/pod-deletion-cost", "0"))
    created = datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    return cost, -created.timestamp()


@asynccontextmanager
async def start_cluster(*, pod_ip: str | None = None) -> AsyncIterator[Cluster]:
    """The emulator on 127.0.0.1 (a port the OS picks) and its controllers, stopped afterwards."""
    with fixed_namespace_paths():
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for name, namespaced in RESOURCES.items():
                emulator.resources[name].namespaced = namespaced
            cluster = Cluster(emulator, str(server.url), pod_ip=pod_ip)
            emulator.resources["metrics.k8s.io/v1beta1/pods"].namespaced = True
            # The client asks for ``/version/``; kmock serves only ``/version``.
            emulator["get /version/"] << {"major": "1", "minor": "34", "gitVersion": "v1.34.0-kmock"}
            emulator["get", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+/log")] << cluster.serve_logs
            task = asyncio.create_task(cluster.run())
            try:
                yield cluster
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
