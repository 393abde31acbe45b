"""What the agent ships of an instance's usage (ctrlplane/agent/main.py, ``usage_records``): one
engine sample per running replica serves both the instance's sample (group ``instance``, the sum)
and each replica's own (group ``replica``, with its generation), which the control plane shows
per replica as on Docker."""

from __future__ import annotations

from datetime import UTC, datetime

from ctrlplane.agent.main import usage_records
from ctrlplane.provisioning.contract import ReplicaUsage, Usage

AT = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)


def usage(cpu: float, memory: int) -> Usage:
    return Usage(
        cpu_percent=cpu,
        memory_used_bytes=memory,
        memory_limit_bytes=1000,
        network_rx_bytes=10,
        network_tx_bytes=20,
        restarts=1,
    )


def test_each_running_replica_is_shipped_beside_the_instances_sum() -> None:
    replicas = [
        ReplicaUsage(replica=0, generation=3, name="cp-a-g3-r0", state="running", usage=usage(1.25, 100)),
        ReplicaUsage(replica=1, generation=3, name="cp-a-g3-r1", state="exited", usage=None),
        ReplicaUsage(replica=0, generation=4, name="cp-a-g4-r0", state="running", usage=usage(2.5, 300)),
    ]
    total, *each = usage_records("inst_a", AT, replicas)
    assert (total.group, total.instance_id, total.timestamp) == ("instance", "inst_a", AT)
    assert total.data == {
        "cpu_percent": 3.75,
        "memory_used": 400,
        "memory_total": 2000,
        "network_rx_bytes": 20,
        "network_tx_bytes": 40,
        "restarts": 2,
    }
    assert [(r.group, r.replica, r.data["generation"], r.data["cpu_percent"]) for r in each] == [
        ("replica", 0, 3, 1.25),
        ("replica", 0, 4, 2.5),
    ]
    assert each[1].data["memory_used"] == 300 and each[1].data["memory_total"] == 1000
