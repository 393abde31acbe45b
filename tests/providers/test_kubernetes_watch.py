"""The reflector's rules (``ctrlplane_kubernetes/watch.py``) over scripted API answers: what a
relist reports, resuming from the last version seen, and 410 Gone turning into a relist. Whether
the real API server behaves as scripted is shown in ``test_kubernetes_real_watch.py``; here the
410, which a real server gives only when etcd compacted the version, is placed deterministically."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ctrlplane_kubernetes.watch import Reflector

WANTED = {"ctrlplane.managed": "true", "ctrlplane.cluster": "c1"}


def obj(uid: str, instance: str, version: str, cluster: str = "c1") -> dict[str, Any]:
    labels = {"ctrlplane.managed": "true", "ctrlplane.cluster": cluster, "ctrlplane.instance": instance}
    return {"metadata": {"uid": uid, "name": uid, "namespace": "ns", "resourceVersion": version, "labels": labels}}


@dataclass
class Response:
    data: bytes = b""
    lines: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        for line in self.lines:
            yield json.dumps(line).encode() + b"\n"

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


@dataclass
class Server:
    """Answers list calls with ``items`` (at ``version``) and watch calls with the next script."""

    items: list[dict[str, Any]]
    version: str
    watches: list[list[dict[str, Any]]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def list_thing_for_all_namespaces(self, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            return Response(lines=self.watches.pop(0))
        body = {"metadata": {"resourceVersion": self.version}, "items": self.items}
        return Response(data=json.dumps(body).encode())


def reported(reflector: Reflector, server: Server, action: str) -> list[str]:
    found: list[str] = []
    if action == "relist":
        found.extend(sorted(reflector.relist(server.list_thing_for_all_namespaces, 5)))
    else:
        reflector.watch(server.list_thing_for_all_namespaces, 5, found.append)
    return found


def test_the_first_list_reports_nothing_and_a_relist_reports_what_differs() -> None:
    server = Server([obj("a", "inst_a", "10"), obj("b", "inst_b", "11"), obj("x", "inst_x", "12", cluster="c2")], "12")
    reflector = Reflector("things", WANTED)
    assert reported(reflector, server, "relist") == []
    assert reflector.resource_version == "12"
    assert set(reflector.versions) == {"a", "b"}, "another installation's object is not ours"
    server.items, server.version = [obj("a", "inst_a", "10"), obj("b", "inst_b", "20"), obj("c", "inst_c", "21")], "21"
    assert reported(reflector, server, "relist") == ["inst_b", "inst_c"]
    server.items = [obj("c", "inst_c", "21")]
    assert reported(reflector, server, "relist") == ["inst_a", "inst_b"]
    assert server.calls[0]["label_selector"] == "ctrlplane.cluster=c1,ctrlplane.managed=true"


def test_a_watch_resumes_from_the_last_version_and_a_410_makes_the_next_round_relist() -> None:
    server = Server([obj("a", "inst_a", "10")], "10")
    reflector = Reflector("things", WANTED)
    reported(reflector, server, "relist")
    server.watches = [
        [
            {"type": "MODIFIED", "object": obj("a", "inst_a", "15")},
            {"type": "ADDED", "object": obj("a", "inst_a", "15")},  # a replay of what is known: nothing
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "30"}}},
        ],
        [
            {"type": "DELETED", "object": obj("a", "inst_a", "31")},
            {"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "too old resource version"}},
        ],
    ]
    assert reported(reflector, server, "watch") == ["inst_a"]
    assert server.calls[-1]["resource_version"] == "10" and server.calls[-1]["allow_watch_bookmarks"]
    assert reflector.resource_version == "30"
    assert reported(reflector, server, "watch") == ["inst_a"]
    assert server.calls[-1]["resource_version"] == "30"
    assert reflector.resource_version is None, "410: the next round lists again"
    server.items, server.version = [obj("d", "inst_d", "40")], "40"
    assert reported(reflector, server, "relist") == ["inst_d"]
    assert reflector.resource_version == "40" and reflector.relists == 1
