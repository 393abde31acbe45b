"""List-then-watch of this installation's Deployments and Pods, behind ``KubernetesProvider.changes``
(the reconciler's targeted repairs between its periodic passes).

Each kind has a ``Reflector``. It lists the kind by this cluster's labels, remembering the list's
``resourceVersion`` and each object's, then watches from there (with bookmarks, so the version it
holds stays recent while nothing of ours changes). A watch that ends (the server's own timeout, a
reset connection, an API server restarted) is resumed from the last version seen, so nothing that
happened in between is missed. When the server no longer has that version (``410 Gone``: etcd
compacted it, or a restarted API server's watch cache starts later), the reflector lists again and
reports every instance whose objects differ between the two lists (added, changed or gone).

The reflectors live on the provider, so a ``changes`` that failed (the API server unreachable) and
is called again resumes from them. The first list reports nothing: the reconciler's pass at start-up
reads that state itself. An object whose ``(instance, resourceVersion)`` did not change is not
reported, so a server that replays its objects as ``ADDED`` on every watch (an emulator without
versions) costs no reconcile.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from ctrlplane.provisioning.contract import LABEL_INSTANCE
from ctrlplane_kubernetes import naming, observe

WATCH_SECONDS = 50
"""The server ends a watch after this long; it is then resumed from the last version seen."""

GONE = 410

Lister = Callable[..., Any]


@dataclass
class Reflector:
    """One kind's list-then-watch state: the version to resume from and every object's version."""

    kind: str
    wanted: Mapping[str, str]
    resource_version: str | None = None
    listed: bool = False
    relists: int = 0
    versions: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """uid → (instance, resourceVersion) of every object of ours the server has."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _watch: watch.Watch | None = None

    def _entry(self, obj: Mapping[str, Any]) -> tuple[str, tuple[str, str | None]] | None:
        metadata = observe.meta(dict(obj))
        instance = observe.labels(dict(obj)).get(LABEL_INSTANCE)
        if not instance or not naming.matches(observe.labels(dict(obj)), self.wanted):
            return None
        version = metadata.get("resourceVersion")
        uid = metadata.get("uid") or f"{metadata.get('namespace')}/{metadata.get('name')}"
        return str(uid), (instance, str(version) if version else None)

    def relist(self, lister: Lister, timeout: float) -> set[str]:
        """List the kind; the instances whose objects changed since the last list (none the first time)."""
        response = lister(
            label_selector=naming.selector_string(self.wanted), _preload_content=False, _request_timeout=timeout
        )
        listed = json.loads(response.data)
        current = dict(entry for item in listed.get("items") or [] if (entry := self._entry(item)) is not None)
        changed: set[str] = set()
        if self.listed:
            changed |= {
                instance
                for uid, (instance, version) in current.items()
                if self.versions.get(uid) != (instance, version)
            }
            changed |= {instance for uid, (instance, _) in self.versions.items() if uid not in current}
            self.relists += 1
        self.versions = current
        self.resource_version = str((listed.get("metadata") or {}).get("resourceVersion") or "") or None
        self.listed = True
        return changed

    def watch(self, lister: Lister, timeout: float, emit: Callable[[str], None]) -> None:
        """One watch request from the version held, until the server ends it; ``emit`` is called with
        the instance of every object that changed. A 410 makes the next ``follow`` list again."""
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        with self._lock:
            self._watch = stream
        try:
            # Events are deserialized although only ``raw_object`` is read: with ``deserialize=False``
            # the client (37.0) fails on an ERROR event (it reads ``raw_object``, then absent).
            for event in stream.stream(  # type: ignore[no-untyped-call]
                lister,
                label_selector=naming.selector_string(self.wanted),
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=(timeout, WATCH_SECONDS + timeout),
            ):
                obj = event.get("raw_object") or {}
                version = observe.meta(obj).get("resourceVersion")
                if event.get("type") == "BOOKMARK":
                    self.resource_version = str(version) if version else self.resource_version
                    continue
                entry = self._entry(obj)
                if version:
                    self.resource_version = str(version)
                if entry is None:
                    continue
                uid, value = entry
                if event.get("type") == "DELETED":
                    self.versions.pop(uid, None)
                    emit(value[0])
                elif self.versions.get(uid) != value:
                    self.versions[uid] = value
                    emit(value[0])
        except ApiException as exc:
            if exc.status != GONE:
                raise
            self.resource_version = None
        finally:
            with self._lock:
                self._watch = None

    def follow(
        self, lister: Callable[[], Lister], timeout: float, emit: Callable[[str], None], stop: threading.Event
    ) -> None:
        """List (when there is no version to resume from) and watch, again and again, until ``stop``;
        what cannot be reached raises (the caller reports it and calls again later)."""
        while not stop.is_set():
            if self.resource_version is None:
                for instance in sorted(self.relist(lister(), timeout)):
                    emit(instance)
                continue
            self.watch(lister(), timeout, emit)

    def interrupt(self) -> None:
        """End the watch under way (its socket is shut down), so ``follow`` sees ``stop``."""
        with self._lock:
            if self._watch is not None:
                self._watch.stop()  # type: ignore[no-untyped-call]
