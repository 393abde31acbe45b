"""The Kubernetes provider, on the official ``kubernetes`` client. Its configuration comes from the
pod's service account when ctrlplane runs in the cluster, otherwise from ``KUBECONFIG`` (or
``~/.kube/config``). The client blocks, so every call runs in a worker thread, never on the event loop.

What an instance is on Kubernetes (docs/kubernetes.md has the whole mapping and the RBAC):

* **Tenant**: a namespace ``{cluster}-{tenant_id}`` labelled with ctrlplane's labels, with a
  ResourceQuota and a LimitRange from the tenant's quota (when the spec carries it) and a
  NetworkPolicy that lets in only the namespace's own pods and the ingress controller's. It is the
  tenant's "network" in the inventory, created on demand and deleted with its last instance.
* **Replicas**: a Deployment per *slot* (``{instance_id}-a`` / ``-b``): one slot normally, two while
  a deploy runs a new generation beside the old. Pods carry ctrlplane's labels; a pod is a
  "container" in the inventory and its replica index is observed (see ``observe``).
* **Stop** scales the Deployment to zero and marks it stopped (``ctrlplane.io/stopped``), keeping the
  wanted count (``ctrlplane.io/replicas``); **start** scales it back. Kubernetes has no stopped pod,
  so a stopped replica is reported from the Deployment, not from a pod.
* **Environment and files**: a Secret per generation; env through ``secretKeyRef``, files through a
  read-only secret volume (mode 0400).
* **Ports**: a ClusterIP Service selecting the instance's pods; **routes**: an Ingress.
* **Endpoints** are pod IPs and container ports: the deploy gate reaches them when the control
  plane runs in the cluster (or has a route to the pod network).

404 on delete and 409 on create are expected: a delete of what is gone is done, a create of what
exists adopts (and patches) it. Lists are label-selected and the labels are checked again here.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ctrlplane.provisioning.contract import (
    LABEL_CLUSTER,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_RUN,
    LABEL_TENANT,
    ExecResult,
    InventoryItem,
    LogLine,
    Observation,
    ProviderHealth,
    ProviderSettings,
    ReplicaUsage,
    RunSpec,
    RunStatus,
    Strategy,
    Usage,
    WorkloadSpec,
    WorkloadStatus,
)
from ctrlplane.provisioning.errors import (
    ImageNotFound,
    ProviderError,
    ProviderUnavailable,
    WorkloadNotFound,
    pull_failed,
)
from ctrlplane_kubernetes import manifests, naming, observe
from ctrlplane_kubernetes.errors import ClusterQuotaExceeded, UsageUnavailable, api_errors, api_message, quota_exceeded
from ctrlplane_kubernetes.settings import KubernetesSettings
from ctrlplane_kubernetes.watch import Reflector

T = TypeVar("T")
Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
POLL_SECONDS = 0.2
RETIRE_COST = "-1000"
CONFLICT_ATTEMPTS = 8


@dataclass
class Observed:
    deployments: list[Obj]
    pods: list[Obj]

    @property
    def status_inputs(self) -> tuple[list[Obj], list[Obj]]:
        return self.deployments, self.pods

    def by_generation(self, generation: int) -> Obj | None:
        return next((d for d in self.deployments if observe.generation_of(d) == generation), None)

    def latest(self) -> Obj | None:
        return max(self.deployments, key=lambda d: observe.generation_of(d) or 0, default=None)

    def namespaces(self) -> set[str]:
        return {str(observe.meta(obj).get("namespace")) for obj in [*self.deployments, *self.pods]}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class KubernetesProvider:
    name = "kubernetes"

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        configuration: client.Configuration | None = None,
        kube: KubernetesSettings | None = None,
    ) -> None:
        self.cluster = settings.cluster_name
        self.kube = kube or KubernetesSettings.from_env(settings.variables())
        self._configuration = configuration
        self._api: client.ApiClient | None = None
        self._lock = threading.Lock()
        managed = {LABEL_MANAGED: "true", LABEL_CLUSTER: self.cluster}
        self.reflectors = {"deployments": Reflector("deployments", managed), "pods": Reflector("pods", managed)}
        self._watching = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------

    def _client(self) -> client.ApiClient:
        with self._lock:
            if self._api is None:
                configuration = self._configuration
                if configuration is None:
                    configuration = client.Configuration()
                    try:
                        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                    except ConfigException:
                        try:
                            # KUBECONFIG is read now, not when the client was imported.
                            config.load_kube_config(  # type: ignore[no-untyped-call]
                                config_file=os.environ.get("KUBECONFIG") or None,
                                client_configuration=configuration,
                            )
                        except (ConfigException, OSError) as exc:
                            raise ProviderUnavailable(
                                f"no Kubernetes configuration (not in a cluster, no usable KUBECONFIG): {exc}",
                                details={"provider": "kubernetes"},
                            ) from exc
                    self._configuration = configuration
                self._api = client.ApiClient(configuration)
            return self._api

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._client())

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self._client())

    @property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self._client())

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self._client())

    async def _run(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            with api_errors(action):
                return fn(*args)

        return await anyio.to_thread.run_sync(call)

    def _raw(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        response = method(*args, _preload_content=False, _request_timeout=self.kube.request_timeout_seconds, **kwargs)
        data = response.data
        return dict(json.loads(data)) if data else {}

    def _get(self, method: Callable[..., Any], *args: Any) -> Obj | None:
        try:
            return self._raw(method, *args)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete(self, method: Callable[..., Any], *args: Any) -> None:
        try:
            self._raw(method, *args, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _patch(self, method: Callable[..., Any], *args: Any) -> Obj:
        return self._raw(method, *args, _content_type=MERGE_PATCH)

    def _items(self, method: Callable[..., Any], wanted: Mapping[str, str], *args: Any) -> list[Obj]:
        listed = self._raw(method, *args, label_selector=naming.selector_string(wanted))
        return [item for item in listed.get("items") or [] if naming.matches(observe.labels(item), wanted)]

    def _create_or_patch(
        self,
        create: Callable[..., Any],
        patch: Callable[..., Any],
        namespace: str | None,
        manifest: Obj,
        changes: Callable[[Obj], Obj] | None = None,
    ) -> Obj:
        """Create ``manifest``; when it exists (409), patch it to match (``changes`` computes the
        patch from the existing object; the default is the manifest itself), as an update of the
        version read (see ``_update``)."""
        name = manifest["metadata"]["name"]
        args = (namespace,) if namespace is not None else ()
        if namespace is not None:
            manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                return self._raw(create, *args, _without_nulls(manifest))
            except ApiException as exc:
                # Quota admission runs before the API server looks for an existing object: with
                # the quota used up, creating one that exists is refused (403), not a 409.
                refused = exc.status == 403 and quota_exceeded(api_message(exc), "create") is not None
                if exc.status != 409 and not (refused and self._get(_reader(create), name, *args) is not None):
                    raise
            updated = self._update(_reader(create), patch, name, args, changes or (lambda _existing: manifest))
            if updated is not None:
                return updated
            # Deleted between the create and the read: create it again.
        raise self._conflict(name)

    def _update(
        self,
        read: Callable[..., Any],
        patch: Callable[..., Any],
        name: str,
        args: tuple[str, ...],
        changes: Callable[[Obj], Obj],
        current: Obj | None = None,
    ) -> Obj | None:
        """Patch object ``name`` with ``changes(current)``, carrying ``current``'s resourceVersion, so
        the API server refuses it (409) when someone else changed the object since it was read; then
        the object is read again and the patch computed again from what is there now, never written
        over it blindly. ``None``: the object is gone."""
        for _ in range(CONFLICT_ATTEMPTS):
            if current is None:
                current = self._get(read, name, *args)
                if current is None:
                    return None
            body = dict(changes(current))
            version = observe.meta(current).get("resourceVersion")
            if version:
                body["metadata"] = {**(body.get("metadata") or {}), "resourceVersion": version}
            try:
                return self._patch(patch, name, *args, body)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status != 409:
                    raise
            current = None
        raise self._conflict(name)

    @staticmethod
    def _conflict(name: str) -> ProviderError:
        return ProviderError(
            f"{name} kept changing under ctrlplane ({CONFLICT_ATTEMPTS} conflicting writes in a row); try again",
            details={"provider": "kubernetes", "status": 409},
        )

    # -- observation -----------------------------------------------------------------------------

    def _observe(self, instance_id: str) -> Observed:
        wanted = {LABEL_MANAGED: "true", **naming.selector(self.cluster, instance_id)}
        deployments = self._items(self.apps.list_deployment_for_all_namespaces, wanted)
        pods = self._items(self.core.list_pod_for_all_namespaces, wanted)
        return Observed(deployments, pods)

    def _status(self, instance_id: str) -> WorkloadStatus:
        return observe.workload_status(instance_id, *self._observe(instance_id).status_inputs)

    async def _wait(
        self, instance_id: str, done: Callable[[Observed, WorkloadStatus], bool], action: str
    ) -> tuple[Observed, WorkloadStatus]:
        deadline = anyio.current_time() + self.kube.rollout_timeout_seconds
        while True:
            observed = await self._run(action, self._observe, instance_id)
            status = observe.workload_status(instance_id, *observed.status_inputs)
            if done(observed, status) or anyio.current_time() >= deadline:
                return observed, status
            await anyio.sleep(POLL_SECONDS)

    async def _settle(self, instance_id: str) -> WorkloadStatus:
        """Wait until every wanted replica runs from its Deployment's current template (no rollout
        under way, no extra pod being scaled down), or one has failed, or the rollout timeout passes;
        then report what is seen."""

        def done(observed: Observed, status: WorkloadStatus) -> bool:
            if status.state in ("running", "stopped", "missing"):
                return not (
                    observe.stale(observed.deployments, observed.pods)
                    or observe.surplus(observed.deployments, observed.pods)
                )
            refused = any(observe.quota_refusal(d) for d in observed.deployments)
            return refused or any(observe.failure(r) for r in status.replicas)

        _, status = await self._wait(instance_id, done, "observe the rollout")
        return status

    # -- health ----------------------------------------------------------------------------------

    async def ping(self) -> ProviderHealth:
        try:
            version = await self._run(
                "read the server version", lambda: self._raw(client.VersionApi(self._client()).get_code)
            )
        except ProviderError as exc:
            return ProviderHealth(False, exc.message)
        return ProviderHealth(True, f"Kubernetes {version.get('gitVersion', 'unknown version')} answers")

    # -- provision -------------------------------------------------------------------------------

    async def provision(self, spec: WorkloadSpec) -> WorkloadStatus:
        await self._run("create the tenant namespace", self._ensure_tenant, spec)
        try:
            await self._run("apply the instance", self._apply_generation, spec, None)
        except ClusterQuotaExceeded:
            # Nothing half-made keeps using the quota: the generation goes (as for ImageNotFound).
            await self.remove_generation(spec.instance_id, spec.generation)
            raise
        return await self._settle_generation(spec)

    async def _settle_generation(self, spec: WorkloadSpec) -> WorkloadStatus:
        status = await self._settle(spec.instance_id)
        image_failure = next(
            (
                r.error
                for r in status.replicas
                if r.generation == spec.generation and r.error and r.error.split(":")[0] in observe.IMAGE_REASONS
            ),
            None,
        )
        if image_failure:
            await self.remove_generation(spec.instance_id, spec.generation)
            raise pull_failed(spec.image, image_failure)
        if status.state != "running":
            observed = await self._run("observe the rollout", self._observe, spec.instance_id)
            deployment = observed.by_generation(spec.generation)
            refusal = observe.quota_refusal(deployment) if deployment is not None else None
            refused = quota_exceeded(refusal, "run the replicas") if refusal else None
            if refused is not None:
                await self.remove_generation(spec.instance_id, spec.generation)
                raise refused
        return status

    def _ensure_tenant(self, spec: WorkloadSpec) -> str:
        namespace = naming.namespace_name(self.cluster, spec.tenant_id)
        self._await_namespace_deletion(namespace)
        manifest = manifests.namespace(self.cluster, spec.tenant_id, self.kube)
        self._create_or_patch(
            self.core.create_namespace,
            self.core.patch_namespace,
            None,
            manifest,
            lambda existing: {"metadata": {"labels": manifest["metadata"]["labels"]}},
        )
        self._create_or_patch(
            self.networking.create_namespaced_network_policy,
            self.networking.patch_namespaced_network_policy,
            namespace,
            manifests.network_policy(self.cluster, spec.tenant_id, self.kube),
        )
        if spec.tenant_quota is not None:
            quota = self._create_or_patch(
                self.core.create_namespaced_resource_quota,
                self.core.patch_namespaced_resource_quota,
                namespace,
                manifests.resource_quota(self.cluster, spec.tenant_id, spec.tenant_quota),
            )
            self._await_quota_status(namespace, quota)
            self._create_or_patch(
                self.core.create_namespaced_limit_range,
                self.core.patch_namespaced_limit_range,
                namespace,
                manifests.limit_range(self.cluster, spec.tenant_id, spec.tenant_quota),
            )
        return namespace

    def _await_namespace_deletion(self, namespace: str) -> None:
        """A namespace being deleted (its last instance went) accepts no new object until the
        namespace controller has emptied and removed it: wait for that, then it is created anew."""
        deadline = time.monotonic() + self.kube.rollout_timeout_seconds
        while True:
            existing = self._get(self.core.read_namespace, namespace)
            if existing is None or not observe.meta(existing).get("deletionTimestamp"):
                return
            if time.monotonic() >= deadline:
                raise ProviderUnavailable(
                    f"namespace {namespace} is still being deleted; try again",
                    details={"provider": "kubernetes", "namespace": namespace},
                )
            time.sleep(POLL_SECONDS)

    def _await_quota_status(self, namespace: str, quota: Obj) -> None:
        """Until the quota controller has recorded a new or changed ResourceQuota's limits in its
        status, quota admission refuses every object it covers ("status unknown for quota"): wait
        for that (quickly done) before the objects are created."""
        name = str(observe.meta(quota).get("name"))
        deadline = time.monotonic() + self.kube.rollout_timeout_seconds
        while True:
            hard = (quota.get("spec") or {}).get("hard") or {}
            if _same_quantities(hard, (quota.get("status") or {}).get("hard") or {}):
                return
            if time.monotonic() >= deadline:
                raise ProviderUnavailable(
                    f"the quota controller has not counted ResourceQuota {name} in {namespace} yet; try again",
                    details={"provider": "kubernetes", "namespace": namespace},
                )
            time.sleep(POLL_SECONDS / 4)
            quota = self._get(self.core.read_namespaced_resource_quota, name, namespace) or quota

    def _slot_for(self, observed: Observed, spec: WorkloadSpec) -> str:
        existing = observed.by_generation(spec.generation)
        if existing is not None:
            return observe.slot_of(existing)
        used = {observe.slot_of(d) for d in observed.deployments}
        free = [slot for slot in naming.SLOTS if slot not in used]
        if not free:
            raise ProviderError(
                f"instance {spec.instance_id} already runs generations "
                f"{sorted(observe.generation_of(d) or 0 for d in observed.deployments)}; remove one first",
                details={"provider": "kubernetes"},
            )
        return free[0]

    def _apply_generation(
        self,
        spec: WorkloadSpec,
        slot: str | None,
        *,
        strategy: Strategy = "rolling",
        replicas: int | None = None,
        keep_stopped: bool = False,
    ) -> str:
        """Create or patch the Secret, Deployment, Service and Ingress of ``spec``'s generation in
        ``slot`` (by default the slot that holds that generation, or a free one). Replica counts
        follow ``spec`` (``replicas`` overrides how many run now), clearing stop and retirement."""
        namespace = naming.namespace_name(self.cluster, spec.tenant_id)
        observed = self._observe(spec.instance_id)
        slot = slot or self._slot_for(observed, spec)
        current = next((d for d in observed.deployments if observe.slot_of(d) == slot), None)
        secret = manifests.secret(self.cluster, spec)
        self._create_or_patch(
            self.core.create_namespaced_secret,
            self.core.patch_namespaced_secret,
            namespace,
            secret,
            lambda existing: {
                **secret,
                "data": {
                    **{key: None for key in (existing.get("data") or {}) if key not in secret["data"]},
                    **secret["data"],
                },
            },
        )
        if (pull := manifests.pull_secret(self.cluster, spec)) is not None:
            self._create_or_patch(
                self.core.create_namespaced_secret, self.core.patch_namespaced_secret, namespace, pull
            )
        else:
            self._delete(
                self.core.delete_namespaced_secret,
                naming.pull_secret_name(spec.instance_id, spec.generation),
                namespace,
            )

        def desired(existing: Obj | None) -> Obj:
            """The Deployment, keeping the stop mark and restart stamp of ``existing`` (the version a
            patch is computed from: a conflict computes it again from the newer one)."""
            is_stopped = keep_stopped and existing is not None and observe.stopped(existing)
            running = 0 if is_stopped else (spec.replicas if replicas is None else replicas)
            template = ((existing or {}).get("spec") or {}).get("template") or {}
            restarted_at = observe.annotations_of(template).get(naming.RESTARTED_AT)
            manifest = manifests.deployment(
                self.cluster, spec, slot, self.kube, replicas=running, strategy=strategy, restarted_at=restarted_at
            )
            annotations = manifest["metadata"]["annotations"]
            annotations.update({naming.STOPPED: "true" if is_stopped else None, naming.RETIRED: None})
            if replicas is not None and not is_stopped:
                # a step that runs fewer (the canary's one pod) wants that many until the next step:
                # the settle after it ends when they run, not at the rollout timeout
                annotations[naming.WANTED] = str(replicas)
            if existing is None:
                manifest["metadata"]["annotations"] = {k: v for k, v in annotations.items() if v is not None}
            else:
                # a merge patch keeps what it does not name: a spec without credentials drops them
                manifest["spec"]["template"]["spec"].setdefault("imagePullSecrets", None)
            if existing is not None and strategy == "recreate":
                # A merge patch keeps what it does not name, and the API server refuses a Recreate
                # Deployment that still has the RollingUpdate parameters.
                manifest["spec"]["strategy"]["rollingUpdate"] = None
            return manifest

        manifest = desired(current)
        self._create_or_patch(
            self.apps.create_namespaced_deployment,
            self.apps.patch_namespaced_deployment,
            namespace,
            manifest,
            lambda existing: desired(existing or None),
        )
        self._apply_front(spec, namespace)
        return slot

    def _apply_front(self, spec: WorkloadSpec, namespace: str, *, pin: str | bool | None = False) -> None:
        """The Service (pinned to a slot with ``pin``; ``None`` unpins; ``False`` keeps the pin) and
        the Ingress of the instance; without ports or routes, any there is removed."""
        service_name = naming.service_name(spec.instance_id)
        existing = self._get(self.core.read_namespaced_service, service_name, namespace)
        if not spec.ports:
            if existing is not None:
                self._delete(self.core.delete_namespaced_service, service_name, namespace)
        else:
            pinned = observe.annotations_of(existing or {}).get(naming.PINNED_SLOT) if pin is False else pin
            manifest = manifests.service(self.cluster, spec, pinned if isinstance(pinned, str) and pinned else None)
            if existing is not None and not pinned:
                # A merge patch merges the selector map: the slot key must be removed explicitly.
                manifest["metadata"]["annotations"] = {naming.PINNED_SLOT: None}
                manifest["spec"]["selector"] = {**manifest["spec"]["selector"], naming.LABEL_SLOT: None}
            self._create_or_patch(
                self.core.create_namespaced_service, self.core.patch_namespaced_service, namespace, manifest
            )
        ingress = manifests.ingress(self.cluster, spec, self.kube)
        ingress_name = naming.ingress_name(spec.instance_id)
        if ingress is None:
            self._delete(self.networking.delete_namespaced_ingress, ingress_name, namespace)
        else:
            self._create_or_patch(
                self.networking.create_namespaced_ingress,
                self.networking.patch_namespaced_ingress,
                namespace,
                ingress,
            )

    # -- deprovision -----------------------------------------------------------------------------

    async def deprovision(self, instance_id: str) -> None:
        await self._run("remove the instance", self._deprovision, instance_id)

    def _deprovision(self, instance_id: str) -> None:
        wanted = {LABEL_MANAGED: "true", **naming.selector(self.cluster, instance_id)}
        observed = self._observe(instance_id)
        namespaces = observed.namespaces()
        for deployment in observed.deployments:
            self._delete(self.apps.delete_namespaced_deployment, *_key(deployment))
        for pod in observed.pods:
            self._delete(self.core.delete_namespaced_pod, *_key(pod))
        for lister, deleter in (
            (self.core.list_secret_for_all_namespaces, self.core.delete_namespaced_secret),
            (self.core.list_service_for_all_namespaces, self.core.delete_namespaced_service),
            (self.networking.list_ingress_for_all_namespaces, self.networking.delete_namespaced_ingress),
        ):
            for obj in self._items(lister, wanted):
                namespaces.add(_key(obj)[1])
                self._delete(deleter, *_key(obj))
        runs = {
            LABEL_MANAGED: "true",
            LABEL_CLUSTER: self.cluster,
            naming.LABEL_RUN_INSTANCE: naming.label_value(instance_id),
        }
        self._remove_runs(runs)
        for namespace in namespaces:
            self._drop_namespace_if_empty(namespace)

    def _drop_namespace_if_empty(self, namespace: str) -> None:
        managed = {LABEL_MANAGED: "true", LABEL_CLUSTER: self.cluster}
        left = self._items(self.apps.list_namespaced_deployment, managed, namespace)
        if not left:
            self._delete(self.core.delete_namespace, namespace)

    # -- lifecycle -------------------------------------------------------------------------------

    async def _require(self, instance_id: str, action: str) -> Observed:
        observed = await self._run(action, self._observe, instance_id)
        if not observed.deployments:
            raise WorkloadNotFound(f"instance {instance_id} has no Deployment", details={"instance_id": instance_id})
        return observed

    def _scale(self, deployment: Obj, changes: Callable[[Obj], tuple[int, Mapping[str, str | None]]]) -> None:
        """Set replicas and annotations computed from the Deployment as it is (a conflict recomputes)."""

        def body(current: Obj) -> Obj:
            replicas, annotations = changes(current)
            return {"metadata": {"annotations": dict(annotations)}, "spec": {"replicas": replicas}}

        name, namespace = _key(deployment)
        self._update(
            self.apps.read_namespaced_deployment,
            self.apps.patch_namespaced_deployment,
            name,
            (namespace,),
            body,
            deployment,
        )

    async def start(self, instance_id: str) -> WorkloadStatus:
        observed = await self._require(instance_id, "start the instance")

        def start() -> None:
            for deployment in observed.deployments:
                self._scale(
                    deployment, lambda now: (observe.wanted(now) - len(observe.retired(now)), {naming.STOPPED: None})
                )

        await self._run("start the instance", start)
        return await self._settle(instance_id)

    async def stop(self, instance_id: str) -> WorkloadStatus:
        observed = await self._require(instance_id, "stop the instance")

        def stop() -> None:
            for deployment in observed.deployments:
                self._scale(deployment, lambda _now: (0, {naming.STOPPED: "true"}))

        await self._run("stop the instance", stop)
        _, status = await self._wait(instance_id, lambda seen, _: not observe.live(seen.pods), "stop the instance")
        return status

    async def restart(self, instance_id: str, replicas: tuple[int, ...] | None = None) -> WorkloadStatus:
        observed = await self._require(instance_id, "restart the instance")
        if any(observe.stopped(d) for d in observed.deployments):
            await self.start(instance_id)
            observed = await self._require(instance_id, "restart the instance")
        if replicas is None:
            stamp = _now()

            def rollout() -> None:
                for deployment in observed.deployments:
                    self._patch(
                        self.apps.patch_namespaced_deployment,
                        *_key(deployment),
                        {"spec": {"template": {"metadata": {"annotations": {naming.RESTARTED_AT: stamp}}}}},
                    )

            await self._run("restart the instance", rollout)

            def restarted(seen: Observed, status: WorkloadStatus) -> bool:
                fresh = all(
                    observe.annotations_of(pod).get(naming.RESTARTED_AT) == stamp for pod in observe.live(seen.pods)
                )
                return fresh and status.state in ("running", "failed")

            _, status = await self._wait(instance_id, restarted, "restart the instance")
            return status
        named = set(replicas)
        doomed = [
            str(observe.meta(pod).get("name"))
            for deployment in observed.deployments
            for index, pod in observe.indexed(deployment, observed.pods)
            if index in named
        ]
        pods = {str(observe.meta(pod).get("name")): pod for pod in observed.pods}

        def delete() -> None:
            for name in doomed:
                self._delete(self.core.delete_namespaced_pod, *_key(pods[name]))

        await self._run("restart replicas", delete)

        def replaced(seen: Observed, status: WorkloadStatus) -> bool:
            names = {str(observe.meta(pod).get("name")) for pod in observe.live(seen.pods)}
            return not names & set(doomed) and status.state in ("running", "failed")

        _, status = await self._wait(instance_id, replaced, "restart replicas")
        return status

    async def scale(self, spec: WorkloadSpec) -> WorkloadStatus:
        observed = await self._require(spec.instance_id, "scale the instance")
        target = observed.by_generation(spec.generation) or observed.latest()
        assert target is not None
        generation = observe.generation_of(target) or spec.generation
        scaled = spec if generation == spec.generation else _with(spec, generation=generation)
        await self._run(
            "scale the instance",
            partial(self._apply_generation, scaled, observe.slot_of(target), keep_stopped=True),
        )
        return await self._settle(spec.instance_id)

    async def configure(self, spec: WorkloadSpec) -> WorkloadStatus:
        """Re-apply the tenant's ResourceQuota and LimitRange, the Deployment of the generation that
        runs (its probes; an unchanged template rolls nothing) and the Service and Ingress, by the
        same idempotent create-or-patch as a provision. No Deployment: nothing is touched."""
        observed = await self._run("configure the instance", self._observe, spec.instance_id)
        if not observed.deployments:
            return observe.workload_status(spec.instance_id, *observed.status_inputs)
        namespace = await self._run("apply the tenant's quota", self._ensure_tenant, spec)
        current = observed.by_generation(spec.generation)
        if current is None:
            await self._run("apply the Service and Ingress", partial(self._apply_front, spec, namespace))
            return await self.status(spec.instance_id)
        strategy: Strategy = "recreate" if observe.strategy_of(current) == "Recreate" else "rolling"
        await self._run(
            "configure the instance",
            partial(self._apply_generation, spec, observe.slot_of(current), strategy=strategy, keep_stopped=True),
        )
        return await self._settle(spec.instance_id)

    # -- deploy ----------------------------------------------------------------------------------

    async def deploy(self, spec: WorkloadSpec, strategy: Strategy) -> WorkloadStatus:
        observed = await self._run("deploy", self._observe, spec.instance_id)
        current = observed.latest()
        namespace = naming.namespace_name(self.cluster, spec.tenant_id)
        if current is None or observe.generation_of(current) == spec.generation:
            await self._run("create the tenant namespace", self._ensure_tenant, spec)
            await self._run("deploy", partial(self._apply_generation, spec, None, strategy=strategy))
            status = await self._settle_generation(spec)
            if current is None:
                return status
            # The new generation is there already: a deploy that was interrupted (the API server
            # went away, the worker died) is retried. Finish its hand-over instead of starting anew:
            # the older generations go, the Service is unpinned, only the new Secret is kept.
            for other in observed.deployments:
                if other is not current:
                    await self.remove_generation(spec.instance_id, observe.generation_of(other) or 0)
            await self._run("unpin the Service", partial(self._apply_front, spec, namespace, pin=None))
            await self._run(
                "remove the old Secrets", self._drop_other_secrets, namespace, spec.instance_id, spec.generation
            )
            return await self._settle(spec.instance_id)
        old_generation = observe.generation_of(current) or 0
        old_slot = observe.slot_of(current)
        for other in observed.deployments:
            if other is not current:
                await self.remove_generation(spec.instance_id, observe.generation_of(other) or 0)
        if strategy in ("rolling", "recreate"):
            # In place: the slot's Deployment gets the new template and Kubernetes replaces the pods
            # by its own RollingUpdate (maxSurge 1, maxUnavailable 0) or Recreate strategy.
            await self._run("deploy", partial(self._apply_generation, spec, old_slot, strategy=strategy))
            status = await self._settle(spec.instance_id)
            await self._run("remove the old Secret", self._drop_secret, namespace, spec.instance_id, old_generation)
            return status
        if strategy == "blue_green":
            await self._run("pin the Service", partial(self._apply_front, spec, namespace, pin=old_slot))
            try:
                new_slot = await self._run("deploy", partial(self._apply_generation, spec, None, strategy=strategy))
                await self._settle_generation(spec)
            except ProviderError:
                await self._run("unpin the Service", partial(self._apply_front, spec, namespace, pin=None))
                raise
            await self._run("switch the Service", partial(self._apply_front, spec, namespace, pin=new_slot))
        else:
            await self._run("deploy the canary", partial(self._apply_generation, spec, None, replicas=1))
            await self._settle_generation(spec)
            await self._run("deploy", partial(self._apply_generation, spec, None))
            await self._settle_generation(spec)
        await self.remove_generation(spec.instance_id, old_generation)
        await self._run("unpin the Service", partial(self._apply_front, spec, namespace, pin=None))
        return await self._settle(spec.instance_id)

    async def remove_generation(
        self, instance_id: str, generation: int, replicas: tuple[int, ...] | None = None
    ) -> None:
        remaining = await self._run("remove a generation", self._remove_generation, instance_id, generation, replicas)
        if remaining is not None:
            await self._wait(
                instance_id,
                lambda seen, _: (
                    len([p for p in observe.live(seen.pods) if observe.generation_of(p) == generation]) <= remaining
                ),
                "remove a generation",
            )

    def _remove_generation(self, instance_id: str, generation: int, replicas: tuple[int, ...] | None) -> int | None:
        observed = self._observe(instance_id)
        deployment = observed.by_generation(generation)
        if deployment is None:
            return None
        namespace = _key(deployment)[1]
        if replicas is not None:
            index_of = {index: pod for index, pod in observe.indexed(deployment, observed.pods)}
            retired = observe.retired(deployment)
            newly = {index for index in replicas if index < observe.wanted(deployment)} - retired
            for index in sorted(newly):
                if index in index_of:
                    self._patch(
                        self.core.patch_namespaced_pod,
                        *_key(index_of[index]),
                        {"metadata": {"annotations": {naming.DELETION_COST: RETIRE_COST}}},
                    )
            left = observe.wanted(deployment) - len(retired | newly)
            if left > 0:

                def retire(now: Obj) -> tuple[int, Mapping[str, str | None]]:
                    # Recomputed from the Deployment as it is now: a concurrent retirement is kept.
                    merged = observe.retired(now) | {i for i in replicas if i < observe.wanted(now)}
                    count = max(observe.wanted(now) - len(merged), 0)
                    return (0 if observe.stopped(now) else count), {naming.RETIRED: ",".join(map(str, sorted(merged)))}

                self._scale(deployment, retire)
                return left
        self._delete(self.apps.delete_namespaced_deployment, *_key(deployment))
        for pod in observed.pods:
            if observe.generation_of(pod) == generation and observe.slot_of(pod) == observe.slot_of(deployment):
                self._delete(self.core.delete_namespaced_pod, *_key(pod))
        self._drop_secret(namespace, instance_id, generation)
        service = self._get(self.core.read_namespaced_service, naming.service_name(instance_id), namespace)
        pinned = observe.annotations_of(service or {}).get(naming.PINNED_SLOT)
        if service is not None and pinned == observe.slot_of(deployment):
            self._patch(
                self.core.patch_namespaced_service,
                naming.service_name(instance_id),
                namespace,
                {
                    "metadata": {"annotations": {naming.PINNED_SLOT: None}},
                    "spec": {"selector": {**naming.selector(self.cluster, instance_id), naming.LABEL_SLOT: None}},
                },
            )
        return 0

    def _drop_other_secrets(self, namespace: str, instance_id: str, generation: int) -> None:
        wanted = {LABEL_MANAGED: "true", **naming.selector(self.cluster, instance_id)}
        keep = {naming.secret_name(instance_id, generation), naming.pull_secret_name(instance_id, generation)}
        for secret in self._items(self.core.list_namespaced_secret, wanted, namespace):
            if observe.meta(secret).get("name") not in keep:
                self._delete(self.core.delete_namespaced_secret, *_key(secret))

    def _drop_secret(self, namespace: str, instance_id: str, generation: int) -> None:
        self._delete(self.core.delete_namespaced_secret, naming.secret_name(instance_id, generation), namespace)
        self._delete(self.core.delete_namespaced_secret, naming.pull_secret_name(instance_id, generation), namespace)

    # -- observation calls -----------------------------------------------------------------------

    async def status(self, instance_id: str) -> WorkloadStatus:
        return await self._run("read the instance's status", self._status, instance_id)

    async def inventory(self) -> list[InventoryItem]:
        return await self._run("list ctrlplane's objects", self._inventory)

    async def observe(self) -> Observation:
        """``inventory`` and every instance's status from one list per kind (Deployments and Pods
        across namespaces, by this cluster's labels); the same lists ``status`` reads, so exact."""
        return await self._run("list ctrlplane's objects", self._observation)

    def _observation(self) -> Observation:
        managed = {LABEL_MANAGED: "true", LABEL_CLUSTER: self.cluster}
        deployments = self._items(self.apps.list_deployment_for_all_namespaces, managed)
        pods = self._items(self.core.list_pod_for_all_namespaces, managed)
        items = self._inventory(deployments, pods)
        by_instance: dict[str, tuple[list[Obj], list[Obj]]] = {}
        for deployment in deployments:
            if instance_id := _instance(deployment):
                by_instance.setdefault(instance_id, ([], []))[0].append(deployment)
        for pod in pods:
            if (instance_id := _instance(pod)) in by_instance:
                by_instance[str(instance_id)][1].append(pod)
        workloads = {
            instance_id: observe.workload_status(instance_id, found, instance_pods)
            for instance_id, (found, instance_pods) in by_instance.items()
        }
        return Observation(items=tuple(items), workloads=workloads, exact=True)

    def _inventory(self, deployments: list[Obj] | None = None, pods: list[Obj] | None = None) -> list[InventoryItem]:
        managed = {LABEL_MANAGED: "true", LABEL_CLUSTER: self.cluster}
        items: list[InventoryItem] = []
        for namespace in self._items(self.core.list_namespace, managed):
            if not observe.meta(namespace).get("deletionTimestamp"):  # being deleted: already gone for ctrlplane
                items.append(_item("network", namespace))
        if deployments is None:
            deployments = self._items(self.apps.list_deployment_for_all_namespaces, managed)
        if pods is None:
            pods = self._items(self.core.list_pod_for_all_namespaces, managed)
        for deployment in deployments:
            items.append(_item("deployment", deployment, generation=observe.generation_of(deployment)))
            instance_pods = [p for p in pods if observe.labels(p).get(LABEL_INSTANCE) == _instance(deployment)]
            for index, pod in observe.indexed(deployment, instance_pods):
                replica = observe.replica_status(index, pod, [])
                items.append(_item("container", pod, generation=replica.generation, replica=index, state=replica.state))
        for kind, lister in (
            ("service", self.core.list_service_for_all_namespaces),
            ("secret", self.core.list_secret_for_all_namespaces),
            ("ingress", self.networking.list_ingress_for_all_namespaces),
        ):
            items.extend(_item(kind, obj) for obj in self._items(lister, managed))
        return items

    # -- changes ---------------------------------------------------------------------------------

    def changes(self) -> AsyncGenerator[str, None]:
        """IDs of this cluster's instances whose Deployments or Pods change, from a list-then-watch
        of each kind (``watch.py``: resumed from the last resourceVersion, listed again after a
        410), until closed. Raises ``ProviderUnavailable`` when the API server cannot be reached;
        a later call resumes where this one stopped."""
        return self._changes()

    async def _changes(self) -> AsyncGenerator[str, None]:
        if not self._watching.acquire(blocking=False):
            raise ProviderError("the Kubernetes changes are already being watched", details={"provider": "kubernetes"})
        found: queue.Queue[str | BaseException] = queue.Queue()
        stop = threading.Event()
        listers: dict[str, Callable[[], Callable[..., Any]]] = {
            "deployments": lambda: self.apps.list_deployment_for_all_namespaces,
            "pods": lambda: self.core.list_pod_for_all_namespaces,
        }

        def follow(reflector: Reflector) -> None:
            try:
                reflector.follow(listers[reflector.kind], self.kube.request_timeout_seconds, found.put, stop)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                found.put(exc)

        threads = [threading.Thread(target=follow, args=(r,), daemon=True) for r in self.reflectors.values()]
        for thread in threads:
            thread.start()
        try:
            while True:
                item = await anyio.to_thread.run_sync(_next_change, found, abandon_on_cancel=True)
                if isinstance(item, BaseException):
                    with api_errors("watch the instances' Deployments and Pods"):
                        raise item
                elif isinstance(item, str):
                    yield item
        finally:
            stop.set()
            for reflector in self.reflectors.values():
                reflector.interrupt()
            await anyio.to_thread.run_sync(_join, threads)
            self._watching.release()

    # -- logs ------------------------------------------------------------------------------------

    def logs(
        self, instance_id: str, *, tail: int | None = None, since: datetime | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        return self._logs(instance_id, tail=tail, since=since, follow=follow)

    def _log_targets(self, instance_id: str) -> list[tuple[int, str, str]]:
        observed = self._observe(instance_id)
        targets: list[tuple[int, str, str]] = []
        for deployment in observed.deployments:
            for index, pod in observe.indexed(deployment, observed.pods):
                if observe.container_status(pod):
                    name, namespace = _key(pod)
                    targets.append((index, name, namespace))
        return targets

    def _read_log(self, target: tuple[int, str, str], tail: int | None, since: datetime | None) -> list[LogLine]:
        index, name, namespace = target
        kwargs: dict[str, Any] = {"container": naming.CONTAINER, "timestamps": True}
        if tail is not None:
            kwargs["tail_lines"] = tail
        if since is not None:
            kwargs["since_seconds"] = max(1, math.ceil((datetime.now(UTC) - since).total_seconds()) + 1)
        try:
            response: Any = self.core.read_namespaced_pod_log(
                name, namespace, _preload_content=False, _request_timeout=self.kube.request_timeout_seconds, **kwargs
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # the container is not running (yet) or is gone
                return []
            raise
        lines = [_log_line(index, raw) for raw in response.data.decode("utf-8", "replace").splitlines()]
        return [line for line in lines if line and (since is None or line.timestamp >= since)]

    async def _logs(
        self, instance_id: str, *, tail: int | None, since: datetime | None, follow: bool
    ) -> AsyncGenerator[LogLine, None]:
        targets = await self._run("find the instance's pods", self._log_targets, instance_id)
        history: list[LogLine] = []
        for target in targets:
            history.extend(await self._run("read logs", self._read_log, target, tail, since))
        history.sort(key=lambda line: line.timestamp)
        if tail is not None:
            history = history[-tail:] if tail > 0 else []
        for line in history:
            yield line
        if not follow:
            return
        last = {
            target[0]: max((ln.timestamp for ln in history if ln.replica == target[0]), default=since)
            for target in targets
        }
        lines: queue.Queue[LogLine | None] = queue.Queue(maxsize=1000)
        responses: list[Any] = []
        stop = threading.Event()

        def pump(target: tuple[int, str, str]) -> None:
            index, name, namespace = target
            after = last.get(index)
            kwargs: dict[str, Any] = {"container": naming.CONTAINER, "timestamps": True, "follow": True}
            if after is not None:
                kwargs["since_seconds"] = max(1, math.ceil((datetime.now(UTC) - after).total_seconds()) + 1)
            else:
                kwargs["tail_lines"] = 0
            try:
                response: Any = self.core.read_namespaced_pod_log(name, namespace, _preload_content=False, **kwargs)
                responses.append(response)
                while not stop.is_set():
                    raw = response.readline()
                    if not raw:
                        break
                    line = _log_line(index, raw.decode("utf-8", "replace").rstrip("\n"))
                    if line is not None and (after is None or line.timestamp > after):
                        lines.put(line)
            except Exception:  # noqa: BLE001 - a closed or failed stream ends this pod's part
                pass
            finally:
                lines.put(None)

        pumps = [threading.Thread(target=pump, args=(target,), daemon=True) for target in targets]
        for thread in pumps:
            thread.start()
        try:
            ended = 0
            while ended < len(pumps):
                item: object = await anyio.to_thread.run_sync(_next_line, lines, abandon_on_cancel=True)
                if item is None:
                    ended += 1
                elif isinstance(item, LogLine):
                    yield item
        finally:
            stop.set()
            for response in responses:
                try:
                    response.shutdown()
                    response.release_conn()
                except Exception:  # noqa: BLE001 - best effort: the stream is being abandoned
                    pass

    # -- usage and exec --------------------------------------------------------------------------

    async def usage(self, instance_id: str) -> Usage:
        observed = await self._require(instance_id, "read usage")
        replicas = await self._run("read usage from metrics.k8s.io", self._replica_usage, observed)
        running = [r.usage for r in replicas if r.usage is not None]
        return Usage(
            cpu_percent=round(sum(u.cpu_percent for u in running), 3),
            memory_used_bytes=sum(u.memory_used_bytes for u in running),
            memory_limit_bytes=sum(u.memory_limit_bytes for u in running),
            network_rx_bytes=0,
            network_tx_bytes=0,
            restarts=sum(u.restarts for u in running),
        )

    async def replica_usage(self, instance_id: str) -> list[ReplicaUsage]:
        """Each pod's usage from ``metrics.k8s.io`` (none for a pod that does not run), ordered by
        generation and replica. Kubernetes keeps no network counters there: those are 0."""
        observed = await self._require(instance_id, "read usage")
        replicas = await self._run("read usage from metrics.k8s.io", self._replica_usage, observed)
        return sorted(replicas, key=lambda r: (r.generation, r.replica))

    def _replica_usage(self, observed: Observed) -> list[ReplicaUsage]:
        pods: list[tuple[Obj, int, Mapping[str, Any], bool]] = []
        for deployment in observed.deployments:
            for index, pod in observe.indexed(deployment, observed.pods):
                running = (observe.container_status(pod) or {}).get("state", {}).get("running") is not None
                pods.append((deployment, index, pod, running))
        by_pod: dict[tuple[str, str], Obj] = {}
        if any(running for *_, running in pods):
            metrics = client.CustomObjectsApi(self._client())
            for namespace in {_key(pod)[1] for _, _, pod, running in pods if running}:
                try:
                    listed = self._raw(
                        metrics.list_namespaced_custom_object, "metrics.k8s.io", "v1beta1", namespace, "pods"
                    )
                except ApiException as exc:
                    if exc.status in (404, 503):
                        raise UsageUnavailable(
                            "usage is unavailable: this cluster does not serve metrics.k8s.io (install metrics-server)",
                            details={"provider": "kubernetes"},
                        ) from exc
                    raise
                for item in listed.get("items") or []:
                    by_pod[(str(observe.meta(item).get("name")), namespace)] = item
        found: list[ReplicaUsage] = []
        for deployment, index, pod, running in pods:
            status = observe.replica_status(index, pod, observe.ports_of(deployment))
            usage: Usage | None = None
            if running:
                sample = by_pod.get(_key(pod))
                if sample is None:
                    raise UsageUnavailable(
                        f"usage is unavailable: metrics.k8s.io has no sample for pod {_key(pod)[0]} yet",
                        details={"provider": "kubernetes"},
                    )
                containers = sample.get("containers") or []
                cores = sum(_cpu_cores(str((c.get("usage") or {}).get("cpu", "0"))) for c in containers)
                usage = Usage(
                    cpu_percent=round(cores * 100, 3),
                    memory_used_bytes=sum(_bytes(str((c.get("usage") or {}).get("memory", "0"))) for c in containers),
                    memory_limit_bytes=_memory_limit(deployment),
                    network_rx_bytes=0,
                    network_tx_bytes=0,
                    restarts=int((observe.container_status(pod) or {}).get("restartCount") or 0),
                )
            found.append(
                ReplicaUsage(
                    replica=status.replica,
                    generation=status.generation,
                    name=status.name,
                    state=status.state,
                    usage=usage,
                )
            )
        return found

    async def exec(
        self,
        instance_id: str,
        command: list[str],
        *,
        timeout: float = 10.0,
        generation: int | None = None,
        replica: int | None = None,
    ) -> ExecResult:
        observed = await self._require(instance_id, "exec in the instance")
        target: Mapping[str, Any] | None = None
        for deployment in sorted(observed.deployments, key=lambda d: -(observe.generation_of(d) or 0)):
            if generation is not None and observe.generation_of(deployment) != generation:
                continue
            for index, pod in observe.indexed(deployment, observed.pods):
                if replica is not None and index != replica:
                    continue
                if (observe.container_status(pod) or {}).get("state", {}).get("running") is not None:
                    target = pod
                    break
            if target is not None:
                break
        if target is None:
            raise WorkloadNotFound(
                f"instance {instance_id} has no running replica to exec in"
                + (f" (generation {generation})" if generation is not None else "")
                + (f" (replica {replica})" if replica is not None else ""),
                details={"instance_id": instance_id},
            )
        name, namespace = _key(target)
        return await self._run("exec in the pod", self._exec, name, namespace, command, timeout)

    def _exec(self, name: str, namespace: str, command: list[str], timeout: float) -> ExecResult:
        from kubernetes.stream import stream

        # ``stream`` swaps the ApiClient's transport while it runs: a client of its own keeps the
        # calls of other threads off the websocket.
        own = client.CoreV1Api(client.ApiClient(self._client().configuration))
        try:
            session = stream(
                own.connect_get_namespaced_pod_exec,
                name,
                namespace,
                command=command,
                container=naming.CONTAINER,
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _preload_content=False,
            )
        except Exception as exc:  # the websocket handshake fails as ApiException(0) or the library's own errors
            if isinstance(exc, ApiException) and exc.status not in (0, None):
                raise
            raise ProviderError(
                f"Kubernetes refused pods/exec on {name}: {exc}", details={"provider": "kubernetes"}
            ) from exc
        try:
            session.run_forever(timeout=timeout)
            output = session.read_all()
            try:
                code = session.returncode
            except (TypeError, KeyError, ValueError) as exc:
                # The API server closed the stream without the exit status on the error channel:
                # it could not reach the node's kubelet (seen with kwok's node, which runs none).
                raise ProviderError(
                    f"pods/exec on {name} ended without an exit status: the node's kubelet did not run it",
                    details={"provider": "kubernetes"},
                ) from exc
        finally:
            session.close()
        if code is None:
            raise ProviderError(
                f"exec in {name} did not finish within {timeout:g}s", details={"provider": "kubernetes"}
            )
        return ExecResult(exit_code=int(code), output=output)

    # -- one-shot runs (RunProvider) --------------------------------------------------------------

    def _remove_runs(self, wanted: Mapping[str, str]) -> None:
        listers: list[tuple[Callable[..., Any], Callable[..., Any]]] = [
            (self.batch.list_job_for_all_namespaces, self.batch.delete_namespaced_job),
            (self.core.list_pod_for_all_namespaces, self.core.delete_namespaced_pod),
            (self.core.list_secret_for_all_namespaces, self.core.delete_namespaced_secret),
        ]
        for lister, deleter in listers:
            for obj in self._items(lister, wanted):
                self._delete(deleter, *_key(obj))

    def _run_selector(self, run_id: str) -> dict[str, str]:
        return {LABEL_MANAGED: "true", LABEL_CLUSTER: self.cluster, LABEL_RUN: naming.label_value(run_id)}

    def _run_pod(self, run_id: str) -> Obj | None:
        pods = self._items(self.core.list_pod_for_all_namespaces, self._run_selector(run_id))
        return max(pods, key=lambda p: observe.meta(p).get("creationTimestamp", ""), default=None)

    def _run_status(self, run_id: str) -> RunStatus:
        jobs = self._items(self.batch.list_job_for_all_namespaces, self._run_selector(run_id))
        if not jobs:
            return RunStatus(run_id=run_id, state="missing")
        pod = self._run_pod(run_id)
        container = observe.container_status(pod) if pod is not None else None
        state = (container or {}).get("state") or {}
        if "terminated" in state:
            done = state["terminated"]
            return RunStatus(
                run_id=run_id,
                state="exited",
                exit_code=int(done.get("exitCode", 1)),
                oom_killed=done.get("reason") == "OOMKilled",
                started_at=_time(done.get("startedAt")),
                finished_at=_time(done.get("finishedAt")) or datetime.now(UTC),
            )
        if "running" in state:
            return RunStatus(run_id=run_id, state="running", started_at=_time(state["running"].get("startedAt")))
        waiting = (state.get("waiting") or {}).get("reason", "")
        if waiting in ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            raise ImageNotFound(f"the run's image cannot be pulled ({waiting})", details={"run_id": run_id})
        return RunStatus(run_id=run_id, state="created")

    async def start_run(self, spec: RunSpec) -> RunStatus:
        """A Secret (the env and files) and a ``Job`` of one pod that never restarts, both named
        after the run, in the tenant's namespace (so its network policy and quota apply); an existing
        Job is adopted, never created twice."""
        if not spec.command:
            raise ProviderError("a run needs a command")

        def start() -> RunStatus:
            namespace = self._ensure_tenant(spec.workload)
            self._create_or_patch(
                self.core.create_namespaced_secret,
                self.core.patch_namespaced_secret,
                namespace,
                manifests.run_secret(self.cluster, spec),
            )
            if (pull := manifests.run_pull_secret(self.cluster, spec)) is not None:
                self._create_or_patch(
                    self.core.create_namespaced_secret, self.core.patch_namespaced_secret, namespace, pull
                )
            job = manifests.run_job(self.cluster, spec, self.kube)
            job["metadata"]["namespace"] = namespace
            try:
                self._raw(self.batch.create_namespaced_job, namespace, _without_nulls(job))
            except ApiException as exc:
                if exc.status != 409:
                    raise
            return self._run_status(spec.run_id)

        return await self._run(f"start run {spec.run_id}", start)

    async def run_status(self, instance_id: str, run_id: str) -> RunStatus:
        """The run's Job and its pod now."""
        return await self._run(f"read run {run_id}", self._run_status, run_id)

    def run_logs(
        self, instance_id: str, run_id: str, *, tail: int | None = None, follow: bool = False
    ) -> AsyncIterator[LogLine]:
        """The run pod's log; with ``follow``, new lines every poll until the container ends."""
        return self._run_logs(run_id, tail=tail, follow=follow)

    async def _run_logs(self, run_id: str, *, tail: int | None, follow: bool) -> AsyncIterator[LogLine]:
        def read() -> list[LogLine]:
            pod = self._run_pod(run_id)
            if pod is None or observe.container_status(pod) is None:
                return []
            name, namespace = _key(pod)
            return self._read_log((0, name, namespace), None, None)

        seen = 0
        first = True
        while True:
            lines = await self._run(f"read the output of run {run_id}", read)
            fresh = lines[seen:]
            if first and tail is not None:
                fresh = fresh[-tail:] if tail > 0 else []
            first = False
            for line in fresh:
                yield line
            seen = len(lines)
            if not follow:
                return
            status = await self.run_status("", run_id)
            if status.state in ("exited", "missing"):
                lines = await self._run(f"read the output of run {run_id}", read)
                for line in lines[seen:]:
                    yield line
                return
            await anyio.sleep(POLL_SECONDS)

    async def remove_run(self, instance_id: str, run_id: str) -> None:
        """Delete the run's Job (its pod with it) and Secret; no-op when gone."""

        def remove() -> None:
            self._remove_runs(self._run_selector(run_id))

        await self._run(f"remove run {run_id}", remove)

    async def close(self) -> None:
        with self._lock:
            api, self._api = self._api, None
        if api is not None:
            await anyio.to_thread.run_sync(api.close)


_IDLE = object()


def _next_line(lines: queue.Queue[LogLine | None]) -> object:
    try:
        return lines.get(timeout=0.5)
    except queue.Empty:
        return _IDLE


def _next_change(found: queue.Queue[str | BaseException]) -> object:
    try:
        return found.get(timeout=0.5)
    except queue.Empty:
        return _IDLE


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=5)


def _same_quantities(wanted: Mapping[str, Any], recorded: Mapping[str, Any]) -> bool:
    """The same resource limits, as quantities (the API server writes ``2`` for ``2000m``)."""
    if set(wanted) != set(recorded):
        return False
    return all(math.isclose(_quantity(str(wanted[key])), _quantity(str(recorded[key]))) for key in wanted)


def _without_nulls(value: Any) -> Any:
    """A manifest to create: ``None`` means "remove" in a merge patch and nothing in a new object."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _reader(create: Callable[..., Any]) -> Callable[..., Any]:
    owner = create.__self__  # type: ignore[attr-defined]
    return getattr(owner, create.__name__.replace("create_", "read_", 1))  # type: ignore[no-any-return]


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = observe.meta(obj)
    return str(metadata.get("name")), str(metadata.get("namespace"))


def _instance(obj: Obj) -> str | None:
    return observe.labels(obj).get(LABEL_INSTANCE)


def _item(kind: str, obj: Mapping[str, Any], **extra: Any) -> InventoryItem:
    labels = observe.labels(obj)
    return InventoryItem(
        kind=kind,
        name=str(observe.meta(obj).get("name")),
        instance_id=labels.get(LABEL_INSTANCE),
        tenant_id=labels.get(LABEL_TENANT),
        **extra,
    )


def _with(spec: WorkloadSpec, **changes: Any) -> WorkloadSpec:
    import msgspec

    return msgspec.structs.replace(spec, **changes)


LOG_LINE = re.compile(r"^(\S+) ?(.*)$")


def _time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def _log_line(index: int, raw: str) -> LogLine | None:
    match = LOG_LINE.match(raw)
    if not match:
        return None
    try:
        timestamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    except ValueError:
        return None
    return LogLine(timestamp=timestamp, replica=index, stream="stdout", message=match.group(2))


QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
DECIMAL = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _quantity(raw: str) -> float:
    match = QUANTITY.match(raw.strip())
    if not match:
        return 0.0
    number, suffix = float(match.group(1)), match.group(2)
    if suffix in BINARY:
        return number * BINARY[suffix]
    return number * DECIMAL.get(suffix, 1)


def _cpu_cores(raw: str) -> float:
    return _quantity(raw)


def _bytes(raw: str) -> int:
    return int(_quantity(raw))


def _memory_limit(deployment: Obj) -> int:
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    limit = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory", "0") if containers else "0"
    return _bytes(str(limit))
