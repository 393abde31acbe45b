"""The Docker provider's network gate: removing a tenant's network waits for its users."""

from __future__ import annotations

import threading

from ctrlplane_docker.gate import NetworkGate


def test_removal_waits_until_nobody_uses_the_tenants_network() -> None:
    gate = NetworkGate()
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def user() -> None:
        with gate.using("t1"):
            order.append("using")
            inside.set()
            release.wait(5)
            order.append("done")

    def remover() -> None:
        with gate.removing("t1"):
            order.append("removing")

    first = threading.Thread(target=user)
    first.start()
    assert inside.wait(5)
    second = threading.Thread(target=remover)
    second.start()
    second.join(0.2)
    assert second.is_alive(), "removal went ahead while the network was in use"
    release.set()
    first.join(5)
    second.join(5)
    assert order == ["using", "done", "removing"]


def test_other_tenants_are_not_held_up() -> None:
    gate = NetworkGate()
    with gate.using("t1"):
        done = threading.Event()

        def remover() -> None:
            with gate.removing("t2"):
                done.set()

        thread = threading.Thread(target=remover)
        thread.start()
        assert done.wait(5), "removing another tenant's network waited for t1's users"
        thread.join(5)


def test_nested_and_concurrent_users_count() -> None:
    gate = NetworkGate()
    with gate.using("t1"), gate.using("t1"):
        pass
    with gate.removing("t1"):  # nobody left: does not wait
        pass


def test_a_removal_in_progress_holds_up_its_tenants_users_only() -> None:
    gate = NetworkGate()
    entered: list[str] = []

    def use(tenant_id: str) -> None:
        with gate.using(tenant_id):
            entered.append(tenant_id)

    with gate.removing("t1"):
        other = threading.Thread(target=use, args=("t2",))
        other.start()
        other.join(5)
        assert entered == ["t2"], "another tenant's user waited for t1's removal"
        same = threading.Thread(target=use, args=("t1",))
        same.start()
        same.join(0.2)
        assert same.is_alive(), "a user of t1 went ahead during t1's removal"
    same.join(5)
    assert entered == ["t2", "t1"]
