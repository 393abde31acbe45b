"""The provider conformance suite: what every provider must do, whatever its runtime.

A provider's test module subclasses ``ProviderConformance`` (its name starting with ``Test``) and
supplies the fixtures ``provider``, ``unavailable_provider``, ``image`` and ``missing_image`` and the
hooks ``crash``, ``remove_replica``, ``limits`` and ``write_log``: how to do from outside the
runtime what ctrlplane never does itself. A subclass that leaves one out fails at import instead of
silently running no test.

Every test names its instances and tenants afresh (``inst_`` / ``ten_`` + random hex), and the
``workloads`` fixture deprovisions them all afterwards, so suites may run side by side on one engine.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import pytest

from ctrlplane.provisioning.contract import (
    InventoryItem,
    LogLine,
    ObservingProvider,
    PortSpec,
    Provider,
    Resources,
    SecretFile,
    Strategy,
    WorkloadSpec,
    WorkloadStatus,
)
from ctrlplane.provisioning.errors import ImageNotFound, ProviderUnavailable, WorkloadNotFound
from tests.waiting import eventually

T = TypeVar("T")

WAIT_SECONDS = 10.0
SMALL = Resources(cpu_millis=250, memory_mb=64)


@dataclass(frozen=True)
class AppImage:
    """An image that serves HTTP on ``http_port`` and has a POSIX shell."""

    name: str
    http_port: int


SESSION = uuid.uuid4().hex[:6]
"""Starts every ID this process makes, so a check can tell this run's objects from anyone else's."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{SESSION}{uuid.uuid4().hex[:12]}"


@dataclass
class Workloads:
    """Makes specs with fresh IDs and remembers them, so the fixture can deprovision them all."""

    provider: Provider
    image: AppImage
    instance_ids: list[str] = field(default_factory=list)

    def spec(self, *, tenant_id: str | None = None, **overrides: Any) -> WorkloadSpec:
        instance_id = overrides.pop("instance_id", None) or new_id("inst")
        if instance_id not in self.instance_ids:
            self.instance_ids.append(instance_id)
        values: dict[str, Any] = {
            "instance_id": instance_id,
            "tenant_id": tenant_id or new_id("ten"),
            "name": "conformance",
            "image": self.image.name,
            "resources": SMALL,
            "ports": (PortSpec(self.image.http_port),),
            "env": {"GREETING": "hello"},
            "labels": {"team": "conformance"},
        }
        values.update(overrides)
        return WorkloadSpec(**values)

    def again(self, spec: WorkloadSpec, **changes: Any) -> WorkloadSpec:
        values = {name: getattr(spec, name) for name in spec.__struct_fields__}
        values.update(changes)
        return WorkloadSpec(**values)


def generations(status: WorkloadStatus) -> set[int]:
    return {replica.generation for replica in status.replicas}


def containers_of(items: list[InventoryItem], instance_id: str) -> list[InventoryItem]:
    return [item for item in items if item.kind == "container" and item.instance_id == instance_id]


class ProviderConformance(abc.ABC):
    """Every provider passes these; its test class supplies the abstract fixtures and hooks."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # pytest silently skips an abstract class: make a forgotten hook an error instead.
        missing = sorted(
            name
            for name in ProviderConformance.__abstractmethods__
            if getattr(getattr(cls, name, None), "__isabstractmethod__", False)
        )
        if cls.__name__.startswith("Test") and missing:
            raise TypeError(f"{cls.__name__} must implement {', '.join(missing)}")

    # -- what a provider's test class supplies ---------------------------------------------------

    @pytest.fixture
    @abc.abstractmethod
    async def provider(self) -> AsyncIterator[Provider]:
        """A working provider, closed afterwards."""

    @pytest.fixture
    @abc.abstractmethod
    async def unavailable_provider(self) -> AsyncIterator[Provider]:
        """A provider whose runtime cannot be reached."""

    @pytest.fixture
    @abc.abstractmethod
    def image(self) -> AppImage:
        """An image the runtime has, serving HTTP."""

    @pytest.fixture
    @abc.abstractmethod
    def missing_image(self) -> str:
        """An image name the runtime does not have."""

    @abc.abstractmethod
    async def crash(self, provider: Provider, instance_id: str, replica: int) -> int:
        """Make the replica's process die from outside ctrlplane; return the exit code it dies with."""

    @abc.abstractmethod
    async def remove_replica(self, provider: Provider, instance_id: str, replica: int) -> None:
        """Remove the replica's container from outside ctrlplane."""

    @abc.abstractmethod
    async def limits(self, provider: Provider, instance_id: str) -> list[Resources]:
        """The limits the runtime really enforces on each replica, by replica index."""

    @abc.abstractmethod
    async def write_log(self, provider: Provider, instance_id: str, message: str) -> None:
        """Make replica 0's application write ``message`` as a line on its stdout."""

    # -- shared fixtures -------------------------------------------------------------------------

    @pytest.fixture
    async def workloads(self, provider: Provider, image: AppImage) -> AsyncIterator[Workloads]:
        made = Workloads(provider, image)
        yield made
        for instance_id in made.instance_ids:
            await provider.deprovision(instance_id)

    # -- health ----------------------------------------------------------------------------------

    async def test_ping_reports_a_reachable_runtime(self, provider: Provider) -> None:
        health = await provider.ping()
        assert health.available, health.message

    async def test_unreachable_runtime_raises_provider_unavailable(
        self, unavailable_provider: Provider, image: AppImage
    ) -> None:
        health = await unavailable_provider.ping()
        assert not health.available and health.message
        spec = Workloads(unavailable_provider, image).spec()
        with pytest.raises(ProviderUnavailable):
            await unavailable_provider.provision(spec)
        with pytest.raises(ProviderUnavailable):
            await unavailable_provider.status(spec.instance_id)
        with pytest.raises(ProviderUnavailable):
            await unavailable_provider.inventory()

    # -- provision -------------------------------------------------------------------------------

    async def test_provision_runs_every_replica_with_an_endpoint(
        self, provider: Provider, workloads: Workloads, image: AppImage
    ) -> None:
        spec = workloads.spec(replicas=2)
        status = await provider.provision(spec)
        assert status.state == "running", status.message
        assert [(r.replica, r.generation, r.state) for r in status.replicas] == [(0, 1, "running"), (1, 1, "running")]
        assert len({r.name for r in status.replicas}) == 2
        for replica in status.replicas:
            (endpoint,) = replica.endpoints
            assert (endpoint.container_port, endpoint.protocol, endpoint.replica) == (
                image.http_port,
                "tcp",
                replica.replica,
            )
            assert endpoint.host == "127.0.0.1" and endpoint.host_port > 0
            assert endpoint.url == f"http://127.0.0.1:{endpoint.host_port}"
            assert replica.started_at is not None and replica.exit_code is None
        assert len({e.host_port for e in status.endpoints}) == 2
        assert (await provider.status(spec.instance_id)).state == "running"

    async def test_retried_provision_adopts_instead_of_duplicating(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        first = await provider.provision(spec)
        before = containers_of(await provider.inventory(), spec.instance_id)
        second = await provider.provision(spec)
        after = containers_of(await provider.inventory(), spec.instance_id)
        assert len(before) == len(after) == 2
        assert [r.name for r in second.replicas] == [r.name for r in first.replicas]
        assert [r.started_at for r in second.replicas] == [r.started_at for r in first.replicas]

    async def test_concurrent_provisions_of_one_instance_create_each_replica_once(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2, files=(SecretFile("/etc/app/token", b"t0ken"),))
        results: list[WorkloadStatus] = []

        async def provision() -> None:
            results.append(await provider.provision(spec))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(provision)
        assert [status.state for status in results] == ["running"] * 3, [s.message for s in results]
        inventory = await provider.inventory()
        assert sorted(item.replica or 0 for item in containers_of(inventory, spec.instance_id)) == [0, 1]
        assert len([i for i in inventory if i.kind == "network" and i.tenant_id == spec.tenant_id]) == 1

    async def test_retried_provision_starts_replicas_that_stopped(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        await provider.stop(spec.instance_id)
        status = await provider.provision(spec)
        assert status.state == "running", status.message

    async def test_missing_image_with_pull_policy_never_is_image_not_found(
        self, provider: Provider, workloads: Workloads, missing_image: str
    ) -> None:
        spec = workloads.spec(image=missing_image, pull_policy="Never")
        with pytest.raises(ImageNotFound) as raised:
            await provider.provision(spec)
        assert missing_image in raised.value.message
        assert containers_of(await provider.inventory(), spec.instance_id) == []

    async def test_status_of_an_unknown_instance_is_missing(self, provider: Provider) -> None:
        status = await provider.status(new_id("inst"))
        assert (status.state, status.replicas) == ("missing", ())

    async def test_actions_on_an_unknown_instance_are_workload_not_found(self, provider: Provider) -> None:
        unknown = new_id("inst")
        for action in (provider.start, provider.stop, provider.restart, provider.usage):
            with pytest.raises(WorkloadNotFound):
                await action(unknown)
        with pytest.raises(WorkloadNotFound):
            await provider.exec(unknown, ["true"])

    # -- lifecycle -------------------------------------------------------------------------------

    async def test_stop_keeps_replicas_and_reports_stopped_then_start_runs_them(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        stopped = await provider.stop(spec.instance_id)
        assert stopped.state == "stopped", stopped.message
        assert [r.state for r in stopped.replicas] == ["exited", "exited"]
        assert stopped.endpoints == []
        assert len(containers_of(await provider.inventory(), spec.instance_id)) == 2
        assert (await provider.status(spec.instance_id)).state == "stopped"
        started = await provider.start(spec.instance_id)
        assert started.state == "running", started.message
        assert len(started.endpoints) == 2

    async def test_restart_restarts_all_replicas_or_only_those_named(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        first = await provider.provision(spec)
        await anyio.sleep(0.01)
        everything = await provider.restart(spec.instance_id)
        assert everything.state == "running", everything.message
        for before, after in zip(first.replicas, everything.replicas, strict=True):
            assert after.started_at and before.started_at and after.started_at > before.started_at
        only_one = await provider.restart(spec.instance_id, replicas=(1,))
        assert only_one.state == "running"
        assert only_one.replicas[0].started_at == everything.replicas[0].started_at
        assert only_one.replicas[1].started_at != everything.replicas[1].started_at

    async def test_restart_of_a_stopped_instance_runs_it_again(self, provider: Provider, workloads: Workloads) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        await provider.stop(spec.instance_id)
        status = await provider.restart(spec.instance_id)
        assert status.state == "running", status.message

    # -- scale -----------------------------------------------------------------------------------

    async def test_scale_applies_limits_in_place_and_matches_the_replica_count(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        provisioned = await provider.provision(spec)
        assert await self.limits(provider, spec.instance_id) == [SMALL, SMALL]

        bigger = Resources(cpu_millis=500, memory_mb=96)
        down = await provider.scale(workloads.again(spec, replicas=1, resources=bigger))
        assert [(r.replica, r.state) for r in down.replicas] == [(0, "running")]
        # In place: the same container kept running, it was not replaced.
        assert down.replicas[0].name == provisioned.replicas[0].name
        assert down.replicas[0].started_at == provisioned.replicas[0].started_at
        assert await self.limits(provider, spec.instance_id) == [bigger]

        up = await provider.scale(workloads.again(spec, replicas=3, resources=bigger))
        assert up.state == "running", up.message
        assert [r.replica for r in up.replicas] == [0, 1, 2]
        assert len(up.endpoints) == 3
        assert await self.limits(provider, spec.instance_id) == [bigger, bigger, bigger]

    async def test_scale_of_a_stopped_instance_keeps_new_replicas_stopped(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        await provider.stop(spec.instance_id)
        status = await provider.scale(workloads.again(spec, replicas=2))
        assert status.state == "stopped", status.message
        assert len(status.replicas) == 2

    # -- deploy ----------------------------------------------------------------------------------

    @pytest.mark.parametrize("strategy", ["recreate", "rolling", "blue_green", "canary"])
    async def test_deploy_leaves_only_the_new_generation_running(
        self, provider: Provider, workloads: Workloads, strategy: Strategy
    ) -> None:
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        deployed = await provider.deploy(
            workloads.again(spec, generation=2, env={"GREETING": "bonjour"}, release_id="rel_2"), strategy
        )
        assert deployed.state == "running", deployed.message
        assert [(r.generation, r.replica) for r in deployed.replicas] == [(2, 0), (2, 1)]
        assert len(deployed.endpoints) == 2
        observed = await provider.status(spec.instance_id)
        assert generations(observed) == {2}
        inventory = containers_of(await provider.inventory(), spec.instance_id)
        assert sorted((item.generation, item.replica) for item in inventory) == [(2, 0), (2, 1)]

    async def test_deploy_can_change_the_replica_count(self, provider: Provider, workloads: Workloads) -> None:
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        deployed = await provider.deploy(workloads.again(spec, generation=2, replicas=1), "rolling")
        assert [(r.generation, r.replica) for r in deployed.replicas] == [(2, 0)]

    async def test_a_new_generation_runs_beside_the_old_until_remove_generation(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        both = await provider.provision(workloads.again(spec, generation=2))
        assert both.state == "running"
        assert [(r.generation, r.replica) for r in both.replicas] == [(1, 0), (2, 0)]
        await provider.remove_generation(spec.instance_id, 1)
        after = await provider.status(spec.instance_id)
        assert [(r.generation, r.state) for r in after.replicas] == [(2, "running")]
        await provider.remove_generation(spec.instance_id, 1)
        assert generations(await provider.status(spec.instance_id)) == {2}

    # -- failures seen from outside --------------------------------------------------------------

    async def test_a_crashed_replica_makes_the_instance_failed_with_its_exit_code(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        exit_code = await self.crash(provider, spec.instance_id, 0)

        async def failed() -> WorkloadStatus | None:
            status = await provider.status(spec.instance_id)
            return status if status.state == "failed" else None

        status = await eventually(failed)
        (replica,) = status.replicas
        assert (replica.state, replica.exit_code) == ("exited", exit_code)
        assert replica.finished_at is not None and replica.endpoints == ()
        assert str(exit_code) in status.message

    async def test_one_crashed_replica_of_two_makes_the_instance_partial(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        exit_code = await self.crash(provider, spec.instance_id, 1)

        async def partial() -> WorkloadStatus | None:
            status = await provider.status(spec.instance_id)
            return status if status.state == "partial" else None

        status = await eventually(partial)
        assert [(r.state, r.exit_code) for r in status.replicas] == [("running", None), ("exited", exit_code)]
        assert str(exit_code) in status.message
        restarted = await provider.restart(spec.instance_id, replicas=(1,))
        assert restarted.state == "running", restarted.message

    async def test_provision_recreates_a_replica_removed_from_outside(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        first = await provider.provision(spec)
        await self.remove_replica(provider, spec.instance_id, 1)
        assert [r.replica for r in (await provider.status(spec.instance_id)).replicas] == [0]
        healed = await provider.provision(spec)
        assert healed.state == "running", healed.message
        assert [r.replica for r in healed.replicas] == [0, 1]
        assert healed.replicas[0].started_at == first.replicas[0].started_at

    # -- deprovision and inventory ---------------------------------------------------------------

    async def test_deprovision_removes_everything_and_is_idempotent(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        await provider.stop(spec.instance_id)
        await provider.deprovision(spec.instance_id)
        assert (await provider.status(spec.instance_id)).state == "missing"
        leftovers = [
            item
            for item in await provider.inventory()
            if item.instance_id == spec.instance_id or item.tenant_id == spec.tenant_id
        ]
        assert leftovers == []
        await provider.deprovision(spec.instance_id)
        assert (await provider.status(spec.instance_id)).state == "missing"

    async def test_a_tenant_network_stays_until_its_last_instance_goes(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        tenant_id = new_id("ten")
        first, second = workloads.spec(tenant_id=tenant_id), workloads.spec(tenant_id=tenant_id)
        await provider.provision(first)
        await provider.provision(second)

        async def networks() -> list[InventoryItem]:
            return [i for i in await provider.inventory() if i.kind == "network" and i.tenant_id == tenant_id]

        assert len(await networks()) == 1
        await provider.deprovision(first.instance_id)
        assert len(await networks()) == 1
        assert (await provider.status(second.instance_id)).state == "running"
        await provider.deprovision(second.instance_id)
        assert await networks() == []

    async def test_inventory_lists_managed_objects_by_label(self, provider: Provider, workloads: Workloads) -> None:
        spec = workloads.spec(replicas=2, labels={"team": "a", "ctrlplane.instance": "someone-else"})
        await provider.provision(spec)
        items = containers_of(await provider.inventory(), spec.instance_id)
        assert sorted((i.tenant_id, i.generation, i.replica, i.state) for i in items) == [
            (spec.tenant_id, 1, 0, "running"),
            (spec.tenant_id, 1, 1, "running"),
        ]
        assert not containers_of(await provider.inventory(), "someone-else")

    async def test_observe_lists_every_instance_as_status_and_inventory_see_it(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        assert isinstance(provider, ObservingProvider)
        spec, stopped = workloads.spec(replicas=2), workloads.spec()
        await provider.provision(spec)
        await provider.provision(stopped)
        await provider.stop(stopped.instance_id)

        def summary(status: WorkloadStatus) -> tuple[Any, ...]:
            replicas = [(r.generation, r.replica, r.state) for r in status.replicas]
            return status.state, replicas, status.endpoints

        observation = await provider.observe()
        for instance_id in (spec.instance_id, stopped.instance_id):
            assert summary(observation.workloads[instance_id]) == summary(await provider.status(instance_id))
        assert "nobody" not in observation.workloads
        names = {(i.kind, i.name) for i in observation.items}
        assert {(i.kind, i.name) for i in await provider.inventory() if i.instance_id == spec.instance_id} <= names
        assert {i.instance_id for i in observation.items} >= {spec.instance_id, stopped.instance_id}
        exit_code = await self.crash(provider, spec.instance_id, 1)

        async def partial() -> WorkloadStatus | None:
            status = (await provider.observe()).workloads[spec.instance_id]
            return status if status.state == "partial" else None

        crashed = await eventually(partial)
        assert [(r.state, r.exit_code) for r in crashed.replicas] == [("running", None), ("exited", exit_code)]
        await provider.deprovision(spec.instance_id)
        assert spec.instance_id not in (await provider.observe()).workloads

    # -- exec, logs, usage -----------------------------------------------------------------------

    async def test_exec_returns_the_exit_code_and_output(self, provider: Provider, workloads: Workloads) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        echoed = await provider.exec(spec.instance_id, ["echo", "hello", "world"])
        assert (echoed.exit_code, echoed.output) == (0, "hello world\n")
        failed = await provider.exec(spec.instance_id, ["sh", "-c", "exit 3"])
        assert failed.exit_code == 3

    async def test_exec_runs_in_the_generation_and_replica_named(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        old = workloads.spec(env={"MARK": "old"})
        new = workloads.again(old, env={"MARK": "new"}, generation=2, replicas=2)
        await provider.provision(old)
        await provider.provision(new)

        async def mark(**which: int) -> str:
            result = await provider.exec(old.instance_id, ["env"], **which)
            assert result.exit_code == 0, result
            return next(line for line in result.output.splitlines() if line.startswith("MARK="))

        assert await mark() == "MARK=new"
        assert await mark(generation=1) == "MARK=old"
        assert await mark(generation=1, replica=0) == "MARK=old"
        assert await mark(generation=2, replica=1) == "MARK=new"
        with pytest.raises(WorkloadNotFound):
            await provider.exec(old.instance_id, ["true"], generation=1, replica=1)
        with pytest.raises(WorkloadNotFound):
            await provider.exec(old.instance_id, ["true"], generation=3)

    async def test_exec_without_a_running_replica_is_workload_not_found(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        await provider.stop(spec.instance_id)
        with pytest.raises(WorkloadNotFound):
            await provider.exec(spec.instance_id, ["true"])

    async def test_logs_return_written_lines_oldest_first_and_tail_keeps_the_last(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        for message in ("first line", "second line", "third line"):
            await self.write_log(provider, spec.instance_id, message)

        async def written() -> list[LogLine]:
            lines = [line async for line in provider.logs(spec.instance_id)]
            return lines if "third line" in [line.message for line in lines] else []

        lines = [line for line in await eventually(written) if line.message.endswith(" line")]
        assert [line.message for line in lines] == ["first line", "second line", "third line"]
        assert all(line.stream == "stdout" and line.replica == 0 for line in lines)
        assert [line.timestamp for line in lines] == sorted(line.timestamp for line in lines)
        tail = [line.message async for line in provider.logs(spec.instance_id, tail=1)]
        assert tail == ["third line"]
        since = [line.message async for line in provider.logs(spec.instance_id, since=lines[1].timestamp)]
        assert since[:2] == ["second line", "third line"]

    async def test_logs_follow_yields_a_line_written_after_it_began(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec()
        await provider.provision(spec)
        await self.write_log(provider, spec.instance_id, "before following")
        seen: list[str] = []
        with anyio.fail_after(WAIT_SECONDS):
            followed = provider.logs(spec.instance_id, follow=True)
            try:
                async for line in followed:
                    seen.append(line.message)
                    if line.message == "before following":
                        await self.write_log(provider, spec.instance_id, "after following began")
                    if line.message == "after following began":
                        break
            finally:
                # Closing early is part of the contract: it must release what following holds.
                assert isinstance(followed, AsyncGenerator)
                await followed.aclose()
        assert seen[-2:] == ["before following", "after following began"]

    async def test_usage_sums_the_running_replicas(self, provider: Provider, workloads: Workloads) -> None:
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        usage = await provider.usage(spec.instance_id)
        assert usage.memory_limit_bytes == 2 * SMALL.memory_mb * 1024 * 1024
        assert usage.memory_used_bytes > 0
        assert usage.cpu_percent >= 0.0
        assert usage.network_rx_bytes >= 0 and usage.network_tx_bytes >= 0
        assert usage.restarts >= 0
        await provider.stop(spec.instance_id)
        stopped = await provider.usage(spec.instance_id)
        assert (stopped.memory_limit_bytes, stopped.memory_used_bytes, stopped.cpu_percent) == (0, 0, 0.0)

    async def test_replica_usage_reports_each_running_replica_against_its_limit(
        self, provider: Provider, workloads: Workloads
    ) -> None:
        spec = workloads.spec(replicas=2)
        await provider.provision(spec)
        replicas = await provider.replica_usage(spec.instance_id)
        assert [(r.generation, r.replica, r.state) for r in replicas] == [(1, 0, "running"), (1, 1, "running")]
        for replica in replicas:
            assert replica.usage is not None
            assert replica.usage.memory_limit_bytes == SMALL.memory_mb * 1024 * 1024
            assert replica.usage.memory_used_bytes > 0
            assert replica.usage.cpu_percent >= 0.0
        await provider.stop(spec.instance_id)
        assert [r.usage for r in await provider.replica_usage(spec.instance_id)] == [None, None]
        with pytest.raises(WorkloadNotFound):
            await provider.replica_usage(workloads.spec().instance_id)
