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


def _removal_waits(gate: NetworkGate, tenant_id: str) -> threading.Thread:
    """A removal started on another thread; alive while it waits for the tenant's users."""

    def remove() -> None:
        with gate.removing(tenant_id):
            pass

    removal = threading.Thread(target=remove)
    removal.start()
    removal.join(0.2)
    return removal


def test_nested_and_concurrent_users_count() -> None:
    gate = NetworkGate()
    # nested: leaving the inner block leaves one user, so a removal still waits
    with gate.using("t1"):
        with gate.using("t1"):
            pass
        removal = _removal_waits(gate, "t1")
        assert removal.is_alive(), "a removal went ahead while the outer user was still inside"
    removal.join(5)
    assert not removal.is_alive(), "the removal did not go ahead once the last user left"

    # concurrent: two threads use the network; the removal waits for the second to leave too
    gate = NetworkGate()
    inside = threading.Barrier(3)
    leave = [threading.Event(), threading.Event()]

    def user(index: int) -> None:
        with gate.using("t1"):
            inside.wait(5)
            leave[index].wait(5)

    users = [threading.Thread(target=user, args=(index,)) for index in range(2)]
    for thread in users:
        thread.start()
    inside.wait(5)
    removal = _removal_waits(gate, "t1")
    leave[0].set()
    users[0].join(5)
    removal.join(0.2)
    assert removal.is_alive(), "a removal went ahead while one of two users was still inside"
    leave[1].set()
    users[1].join(5)
    removal.join(5)
    assert not removal.is_alive(), "the removal did not go ahead once both users left"


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
