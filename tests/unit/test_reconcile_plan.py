"""The reconciler's diff logic (``plan``): what runs, compared in memory with an instance's row."""

from __future__ import annotations

from typing import Any

import msgspec

from ctrlplane.operations.reconciler import Seen, missing, plan
from ctrlplane.provisioning.contract import Endpoint, ReplicaStatus, WorkloadStatus

ENDPOINT = Endpoint(
    container_port=8080, protocol="tcp", host="127.0.0.1", host_port=40001, url="http://127.0.0.1:40001"
)


def replica(n: int = 0, state: str = "running", generation: int = 1, **extra: Any) -> ReplicaStatus:
    return ReplicaStatus(
        replica=n,
        generation=generation,
        name=f"cp-i-g{generation}-r{n}",
        state=state,  # type: ignore[arg-type]
        endpoints=(msgspec.structs.replace(ENDPOINT, replica=n),) if state == "running" else (),
        **extra,
    )


def running(*replicas: ReplicaStatus) -> WorkloadStatus:
    replicas = replicas or (replica(),)
    total = len(replicas)
    up = sum(1 for r in replicas if r.state == "running")
    return WorkloadStatus(
        instance_id="inst_1",
        state="running" if up == total else "partial",
        message=f"{up}/{total} running",
        replicas=replicas,
    )


def seen(status: WorkloadStatus | None = None, **overrides: Any) -> Seen:
    status = status or running()
    values: dict[str, Any] = {
        "id": "inst_1",
        "version": 3,
        "state": "running",
        "desired_state": "running",
        "status_message": status.message,
        "endpoints": [msgspec.to_builtins(e) for e in status.endpoints],
        "generation": 1,
        "replicas": len(status.replicas) or 1,
        "restart_policy": "always",
    }
    values.update(overrides)
    return Seen(**values)


def test_an_instance_that_runs_as_recorded_needs_nothing() -> None:
    assert plan(seen(), running()) is None


def test_new_endpoints_are_recorded() -> None:
    moved = running(msgspec.structs.replace(replica(), endpoints=(msgspec.structs.replace(ENDPOINT, host_port=40002),)))
    decision = plan(seen(), moved)
    assert decision is not None
    assert (decision.action, decision.version, decision.status) == ("record", 3, moved)


def test_a_missing_replica_is_repaired() -> None:
    decision = plan(seen(replicas=2), running())
    assert decision is not None
    assert (decision.action, decision.reason) == ("repair", "1 of 2 replicas exist")
    gone = plan(seen(), missing("inst_1"))
    assert gone is not None and gone.action == "repair"


def test_an_exited_replica_is_restarted_as_the_policy_says() -> None:
    crashed = running(replica(0), replica(1, "exited", exit_code=137))
    decision = plan(seen(replicas=2, restart_policy="on-failure"), crashed)
    assert decision is not None
    assert decision.action == "restart"
    assert [r.replica for r in decision.replicas] == [1]
    clean_exit = running(replica(0), replica(1, "exited", exit_code=0))
    assert plan(seen(replicas=2, restart_policy="on-failure"), clean_exit).action == "record"  # type: ignore[union-attr]
    assert plan(seen(replicas=2, restart_policy="never"), crashed).action == "record"  # type: ignore[union-attr]


def test_replicas_of_an_old_generation_do_not_count() -> None:
    decision = plan(seen(generation=2), running(replica(generation=1)))
    assert decision is not None and decision.action == "repair"


def test_a_stopped_instance_that_runs_is_stopped_and_one_that_does_not_is_left_alone() -> None:
    assert plan(seen(desired_state="stopped", state="stopped"), running()).action == "stop"  # type: ignore[union-attr]
    stopped = WorkloadStatus(
        instance_id="inst_1", state="stopped", message="stopped", replicas=(replica(state="exited", exit_code=143),)
    )
    row = seen(stopped, desired_state="stopped", state="stopped")
    assert plan(row, stopped) is None


def test_failed_or_transitional_instances_are_left_alone() -> None:
    for state in ("failed", "provisioning", "destroying", "destroyed"):
        assert plan(seen(state=state), missing("inst_1")) is None


def test_an_unknown_status_is_recorded_but_never_repaired_or_restarted() -> None:
    out_of_touch = WorkloadStatus(
        instance_id="inst_1", state="unknown", message="node node_1 is unreachable", replicas=(replica(0, "exited"),)
    )
    decision = plan(seen(replicas=2), out_of_touch)
    assert decision is not None
    assert decision.action == "record"
    recorded = seen(out_of_touch, state="unknown", replicas=2)
    assert plan(recorded, out_of_touch) is None
    back = plan(recorded, running(replica(0), replica(1)))
    assert back is not None and back.action == "record"
